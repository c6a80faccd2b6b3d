"""scVI (scvi-tools) on the raw RNA counts alone, batch-aware: the standard unimodal
integration, which shows what the protein adds to the multimodal methods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import anndata as ad
import mudata as md
import pandas as pd
from pydantic import PositiveInt
from scipy import sparse

from ._common import batch_covariate, embedding_frame
from ._scvi import fit, fitted
from ._spec import Method, Trained, VaeHyperparameters


class ScviHyperparameters(VaeHyperparameters):
    gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb"
    # scvi-tools' early-stopping defaults, as for totalVI.
    early_stopping_patience: PositiveInt | None = 45
    early_stopping_monitor: (
        Literal["elbo_validation", "reconstruction_loss_validation", "kl_local_validation"] | None
    ) = "elbo_validation"


def train(
    mdata: md.MuData, settings: ScviHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    import scvi

    scvi.settings.seed = seed
    rna = mdata["rna"]
    batch = columns["batch"]
    adata = ad.AnnData(
        X=sparse.csr_matrix(rna.layers["counts"]),
        obs=mdata.obs[[batch]].loc[rna.obs_names].copy(),
        var=pd.DataFrame(index=rna.var_names),
    )
    scvi.model.SCVI.setup_anndata(adata, batch_key=batch_covariate(adata.obs, batch, "scVI"))
    model = scvi.model.SCVI(
        adata,
        n_latent=settings.n_latent,
        gene_likelihood=settings.gene_likelihood,
        **settings.model_kwargs,
    )
    fit(model, settings)
    return fitted(
        model, embedding_frame(model.get_latent_representation(), adata.obs_names), settings
    )


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
