"""Training shared by the scvi-tools-style models (totalVI, scVI, Multigrate): one ``fit``
with the early-stopping settings, and the training read-outs from Lightning's history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import mudata as md
import pandas as pd
from scipy import sparse

from ._common import embedding_frame, reproducible_torch
from ._spec import Trained, VaeHyperparameters

# Passed to ``train()`` where set: scvi-tools' and Multigrate's take them alike.
EARLY_STOPPING_KEYS = (
    "early_stopping",
    "early_stopping_patience",
    "early_stopping_monitor",
    "train_size",
)


def fit(model: Any, settings: VaeHyperparameters) -> None:
    """Train with the shared settings; ``train_kwargs`` has the last word."""
    early_stopping = {
        key: getattr(settings, key)
        for key in EARLY_STOPPING_KEYS
        if getattr(settings, key, None) is not None
    }
    with reproducible_torch(settings.deterministic):
        model.train(
            max_epochs=settings.max_epochs,
            accelerator=settings.accelerator,
            batch_size=settings.batch_size,
            **{**early_stopping, **settings.train_kwargs},
        )


def last_loss(history: dict[str, pd.DataFrame], key: str) -> float | None:
    """The final epoch's value of a Lightning-logged loss, if it was logged."""
    if key not in history or history[key].empty:
        return None
    return float(history[key].iloc[-1, 0])


def fitted(model: Any, output: pd.DataFrame, settings: VaeHyperparameters) -> Trained:
    """The result of a fitted model: the epochs actually trained, fewer than ``max_epochs``
    where early stopping ended training."""
    n_epochs = len(model.history["train_loss"])
    return Trained(
        model=model,
        output=output,
        device=str(next(model.module.parameters()).device),
        final_training_loss=last_loss(model.history, "train_loss"),
        n_epochs_trained=n_epochs,
        stopped_early=n_epochs < settings.max_epochs,
    )


def rna_counts(mdata: md.MuData, columns: Mapping[str, str]) -> ad.AnnData:
    """The raw RNA counts with the batch column: what scvi-tools' models set up from."""
    rna, batch = mdata["rna"], columns["batch"]
    return ad.AnnData(
        X=sparse.csr_matrix(rna.layers["counts"]),
        obs=mdata.obs[[batch]].loc[rna.obs_names].copy(),
        var=pd.DataFrame(index=rna.var_names),
    )


def fitted_latent(model: Any, adata: ad.AnnData, settings: VaeHyperparameters) -> Trained:
    """The result of a fitted scvi-tools model whose embedding is its latent representation."""
    latent = embedding_frame(model.get_latent_representation(), adata.obs_names)
    return fitted(model, latent, settings)
