"""totalVI (scvi-tools) on raw RNA counts and raw, dense protein counts, batch-aware."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from pydantic import PositiveInt
from scipy import sparse

from ._common import batch_covariate, dense, embedding_frame
from ._scvi import fit, fitted
from ._spec import Method, Trained, VaeHyperparameters


class TotalviHyperparameters(VaeHyperparameters):
    # scvi-tools' defaults, which runs used before they were listed here.
    early_stopping_patience: PositiveInt | None = 45
    early_stopping_monitor: (
        Literal["elbo_validation", "reconstruction_loss_validation", "kl_local_validation"] | None
    ) = "elbo_validation"


def train(
    mdata: md.MuData, settings: TotalviHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    import scvi

    scvi.settings.seed = seed
    rna, adt = mdata["rna"], mdata["adt"]
    batch = columns["batch"]
    adata = ad.AnnData(
        X=sparse.csr_matrix(rna.layers["counts"]),
        obs=mdata.obs[[batch]].loc[rna.obs_names].copy(),
        var=pd.DataFrame(index=rna.var_names),
    )
    # totalVI's protein prior needs dense protein counts.
    adata.obsm["protein_expression"] = pd.DataFrame(
        dense(adt[rna.obs_names].layers["counts"]).astype(np.float32),
        index=rna.obs_names,
        columns=adt.var_names,
    )
    scvi.model.TOTALVI.setup_anndata(
        adata,
        protein_expression_obsm_key="protein_expression",
        batch_key=batch_covariate(adata.obs, batch, "totalVI"),
    )
    model = scvi.model.TOTALVI(adata, n_latent=settings.n_latent, **settings.model_kwargs)
    fit(model, settings)
    return fitted(
        model, embedding_frame(model.get_latent_representation(), adata.obs_names), settings
    )


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
