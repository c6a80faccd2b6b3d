"""Positive control for bio conservation: the cell-type labels one-hot encoded, plus uniform
noise of ``jitter`` (0 for none) that breaks the ties between cells of a type."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md
import numpy as np
from pydantic import Field

from ._controls import control_result
from ._spec import Hyperparameters, Method, Trained


class CellTypeHyperparameters(Hyperparameters):
    jitter: float = Field(default=0.0, ge=0)


def train(
    mdata: md.MuData, settings: CellTypeHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    labels = mdata.obs.loc[mdata["rna"].obs_names, columns["label"]]
    codes = labels.astype("category").cat.remove_unused_categories().cat.codes.to_numpy()
    latent = np.zeros((codes.size, int(codes.max()) + 1))
    labelled = codes >= 0  # unlabelled cells stay at the origin
    latent[np.flatnonzero(labelled), codes[labelled]] = 1.0
    if settings.jitter:
        rng = np.random.default_rng(seed)
        latent += rng.uniform(-settings.jitter, settings.jitter, latent.shape)
    return control_result(mdata, settings, seed, latent)


METHOD = Method(
    name="cell_type_embedding",
    role="control",
    train=train,
    hyperparameters=CellTypeHyperparameters,
    description="Positive control for bio conservation: the cell-type labels, one-hot encoded",
    model_class="cite_bench.methods.model_artifacts.RecipeModel",
    needs_labels=True,
)
