"""What the controls share: nothing is trained, so their settings are what is kept."""

from __future__ import annotations

from typing import Any

import mudata as md
import numpy as np
import pandas as pd

from ._common import embedding_frame
from ._spec import Hyperparameters, Trained
from .model_artifacts import RecipeModel


def control_result(
    mdata: md.MuData, settings: Hyperparameters, seed: int, latent: np.ndarray
) -> Trained:
    recipe: dict[str, Any] = {**settings.model_dump(), "seed": seed}
    return Trained(
        model=RecipeModel(recipe), output=embedding_frame(latent, mdata["rna"].obs_names)
    )


def shuffled_within(latent: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """The rows of ``latent`` permuted among the cells of each group."""
    rng = np.random.default_rng(seed)
    shuffled = latent.copy()
    for group in pd.unique(groups):
        cells = np.flatnonzero(groups == group)
        shuffled[cells] = latent[rng.permutation(cells)]
    return shuffled
