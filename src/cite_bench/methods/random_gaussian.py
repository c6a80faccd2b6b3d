"""Negative control: independent standard normal coordinates, blind to the data."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md
import numpy as np

from ._controls import control_result
from ._spec import LatentHyperparameters, Method, Trained


def train(
    mdata: md.MuData, settings: LatentHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((mdata["rna"].n_obs, settings.n_latent))
    return control_result(mdata, settings, seed, latent)


METHOD = Method(
    name="random_gaussian",
    role="control",
    train=train,
    hyperparameters=LatentHyperparameters,
    description="Negative control: standard normal coordinates, blind to the data",
    model_class="cite_bench.methods.model_artifacts.RecipeModel",
)
