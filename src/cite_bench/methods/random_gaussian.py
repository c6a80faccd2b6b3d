"""Negative control: independent standard normal coordinates, blind to the data."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md

from ._spec import LatentHyperparameters, Method, Trained
from .controls import control_result, gaussian


def train(
    mdata: md.MuData, settings: LatentHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    latent = gaussian(mdata["rna"].n_obs, settings.n_latent, seed)
    return control_result(mdata, settings, seed, latent)


METHOD = Method(
    name="random_gaussian",
    role="control",
    train=train,
    hyperparameters=LatentHyperparameters,
    description="Negative control: standard normal coordinates, blind to the data",
    model_class="cite_bench.methods.model_artifacts.RecipeModel",
)
