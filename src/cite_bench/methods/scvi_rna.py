"""scVI (scvi-tools) on the raw RNA counts alone, batch-aware: the standard unimodal
integration, which shows what the protein adds to the multimodal methods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import mudata as md

from ._common import batch_covariate
from ._scvi import fit, fitted_latent, rna_counts
from ._spec import Method, ScviToolsHyperparameters, Trained


class ScviHyperparameters(ScviToolsHyperparameters):
    gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb"


def train(
    mdata: md.MuData, settings: ScviHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    import scvi

    scvi.settings.seed = seed
    adata = rna_counts(mdata, columns)
    batch_key = batch_covariate(adata.obs, columns["batch"], "scVI")
    scvi.model.SCVI.setup_anndata(adata, batch_key=batch_key)
    model = scvi.model.SCVI(
        adata,
        n_latent=settings.n_latent,
        gene_likelihood=settings.gene_likelihood,
        **settings.model_kwargs,
    )
    fit(model, settings)
    return fitted_latent(model, adata, settings)


METHOD = Method(
    name="scvi_rna",
    role="integrated",
    train=train,
    hyperparameters=ScviHyperparameters,
    description="scVI (scvi-tools) on raw RNA counts only, batch-aware: the unimodal reference",
    model_class="scvi.model.SCVI",
    uses_gpu=True,
    lengths={"starter": {"max_epochs": 400, "batch_size": 128}, "geo": {"max_epochs": 200}},
    fast={"n_latent": 5, "max_epochs": 3},
)
