"""Multigrate (MultiVAE) on raw RNA counts (NB loss) and CLR-transformed ADT (MSE loss)."""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from pydantic import PositiveInt, field_validator
from scipy import sparse

from ._common import batch_covariate, dense, embedding_frame, reproducible_torch
from ._scvi import fit, fitted
from ._spec import Method, Trained, VaeHyperparameters

# Multigrate's train() always monitors its validation reconstruction loss.
MONITOR = "reconstruction_loss_validation"


class MultigrateHyperparameters(VaeHyperparameters):
    early_stopping_patience: PositiveInt | None = 10  # Multigrate's default
    # Only its one monitor is accepted, so that a setting never claims what train() ignores.
    early_stopping_monitor: str | None = None

    @field_validator("early_stopping_monitor")
    @classmethod
    def _one_monitor(cls, value: str | None) -> str | None:
        if value not in (None, MONITOR):
            raise ValueError(f"Multigrate's train() always monitors {MONITOR}; leave it out")
        return value


def train(
    mdata: md.MuData, settings: MultigrateHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    import multigrate as mtg
    import scvi

    scvi.settings.seed = seed
    batch = columns["batch"]
    obs = mdata.obs[[batch]].loc[mdata["rna"].obs_names].copy()
    rna = ad.AnnData(
        X=sparse.csr_matrix(mdata["rna"].X),
        obs=obs,
        var=pd.DataFrame(index=mdata["rna"].var_names),
        layers={"counts": sparse.csr_matrix(mdata["rna"].layers["counts"])},
    )
    adt = ad.AnnData(
        X=dense(mdata["adt"][rna.obs_names].X).astype(np.float32),
        obs=obs.copy(),
        var=pd.DataFrame(index=mdata["adt"].var_names),
    )
    adata = mtg.data.organize_multimodal_anndatas(
        adatas=[[rna], [adt]], layers=[["counts"], [None]]
    )
    covariate = batch_covariate(obs, batch, "Multigrate")
    mtg.model.MultiVAE.setup_anndata(
        adata,
        categorical_covariate_keys=[covariate] if covariate else None,
        rna_indices_end=rna.n_vars,
    )
    model = mtg.model.MultiVAE(
        adata, losses=["nb", "mse"], z_dim=settings.n_latent, **settings.model_kwargs
    )
    # Multigrate's train() takes no monitor: it always watches MONITOR.
    fit(model, settings.model_copy(update={"early_stopping_monitor": None}))
    with reproducible_torch(settings.deterministic):
        model.get_model_output(batch_size=settings.batch_size)
    return fitted(model, embedding_frame(adata.obsm["X_multigrate"], adata.obs_names), settings)


METHOD = Method(
    name="multigrate",
    role="integrated",
    train=train,
    hyperparameters=MultigrateHyperparameters,
    description="Multigrate (MultiVAE) on raw RNA counts and CLR ADT, batch-aware",
    model_class="multigrate.model.MultiVAE",
    uses_gpu=True,
    lengths={"starter": {"max_epochs": 300, "batch_size": 128}, "geo": {"max_epochs": 200}},
    fast={"n_latent": 5, "max_epochs": 3},
)
