"""totalVI (scvi-tools) on raw RNA counts and raw, dense protein counts, batch-aware."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md
import numpy as np
import pandas as pd

from ._common import batch_covariate, dense
from ._scvi import fit, fitted_latent, rna_counts
from ._spec import Method, ScviToolsHyperparameters, Trained


class TotalviHyperparameters(ScviToolsHyperparameters):
    """totalVI's settings: the shared scvi-tools ones."""


def train(
    mdata: md.MuData, settings: TotalviHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    import scvi

    scvi.settings.seed = seed
    rna, adt = mdata["rna"], mdata["adt"]
    adata = rna_counts(mdata, columns)
    # totalVI's protein prior needs dense protein counts.
    adata.obsm["protein_expression"] = pd.DataFrame(
        dense(adt[rna.obs_names].layers["counts"]).astype(np.float32),
        index=rna.obs_names,
        columns=adt.var_names,
    )
    scvi.model.TOTALVI.setup_anndata(
        adata,
        protein_expression_obsm_key="protein_expression",
        batch_key=batch_covariate(adata.obs, columns["batch"], "totalVI"),
    )
    model = scvi.model.TOTALVI(adata, n_latent=settings.n_latent, **settings.model_kwargs)
    fit(model, settings)
    return fitted_latent(model, adata, settings)


METHOD = Method(
    name="totalvi",
    role="integrated",
    train=train,
    hyperparameters=TotalviHyperparameters,
    description="totalVI (scvi-tools) on raw RNA and protein counts, batch-aware",
    model_class="scvi.model.TOTALVI",
    uses_gpu=True,
    lengths={"starter": {"max_epochs": 400, "batch_size": 128}, "geo": {"max_epochs": 200}},
    fast={"n_latent": 5, "max_epochs": 3},
)
