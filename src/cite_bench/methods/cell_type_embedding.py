"""Positive control for bio conservation: the cell-type labels one-hot encoded, plus uniform
noise of ``jitter`` (0 for none) that breaks the ties between cells of a type."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md
from pydantic import Field

from ._spec import Hyperparameters, Method, Trained
from .controls import control_result, one_hot


class CellTypeHyperparameters(Hyperparameters):
    jitter: float = Field(default=0.0, ge=0)


def train(
    mdata: md.MuData, settings: CellTypeHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    labels = mdata.obs.loc[mdata["rna"].obs_names, columns["label"]]
    latent = one_hot(labels, settings.jitter, seed)
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
