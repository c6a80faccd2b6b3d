"""The controls' embeddings as functions of arrays (the methods' trainers and the notebook API
both build them here), and what the control methods share: nothing is trained, so their
settings are what is kept."""

from __future__ import annotations

from typing import Any

import mudata as md
import numpy as np
import pandas as pd

from ._common import embedding_frame
from ._spec import Hyperparameters, Trained
from .model_artifacts import RecipeModel


def gaussian(n_cells: int, n_latent: int, seed: int) -> np.ndarray:
    """Independent standard normal coordinates, blind to the data."""
    return np.random.default_rng(seed).standard_normal((n_cells, n_latent))


def one_hot(labels: pd.Series, jitter: float, seed: int) -> np.ndarray:
    """The labels one-hot encoded (unlabelled cells at the origin), plus uniform noise of
    ``jitter`` (0 for none) that breaks the ties between cells of a type."""
    codes = labels.astype("category").cat.remove_unused_categories().cat.codes.to_numpy()
    latent = np.zeros((codes.size, int(codes.max()) + 1))
    labelled = codes >= 0
    latent[np.flatnonzero(labelled), codes[labelled]] = 1.0
    if jitter:
        latent += np.random.default_rng(seed).uniform(-jitter, jitter, latent.shape)
    return latent


def shuffled_within(latent: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """The rows of ``latent`` permuted among the cells of each group."""
    rng = np.random.default_rng(seed)
    shuffled = latent.copy()
    for group in pd.unique(groups):
        cells = np.flatnonzero(groups == group)
        shuffled[cells] = latent[rng.permutation(cells)]
    return shuffled


def control_result(
    mdata: md.MuData, settings: Hyperparameters, seed: int, latent: np.ndarray
) -> Trained:
    recipe: dict[str, Any] = {**settings.model_dump(), "seed": seed}
    return Trained(
        model=RecipeModel(recipe), output=embedding_frame(latent, mdata["rna"].obs_names)
    )
