"""Negative control: the unintegrated embedding with its cells shuffled, so that the geometry is
realistic but no cell sits where its type or batch would put it."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md
import numpy as np

from ._pca import unintegrated_latent
from ._spec import LatentHyperparameters, Method, Trained
from .controls import control_result, shuffled_within


def train(
    mdata: md.MuData, settings: LatentHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    latent = unintegrated_latent(mdata, settings.n_latent, seed)
    groups = np.zeros(latent.shape[0], dtype=int)
    return control_result(mdata, settings, seed, shuffled_within(latent, groups, seed))


METHOD = Method(
    name="shuffled_cells",
    role="control",
    train=train,
    hyperparameters=LatentHyperparameters,
    description="Negative control: the unintegrated embedding with its cells shuffled",
    model_class="cite_bench.methods.model_artifacts.RecipeModel",
)
