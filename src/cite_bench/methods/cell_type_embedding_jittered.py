"""Positive control for bio conservation: one-hot cell types plus uniform jitter of 0.01, as
Open Problems' jittered cell-type embedding (the unjittered one ties every cell of a type)."""

from __future__ import annotations

from pydantic import Field

from ._spec import Method
from .cell_type_embedding import CellTypeHyperparameters, train


class JitteredHyperparameters(CellTypeHyperparameters):
    jitter: float = Field(default=0.01, ge=0)


METHOD = Method(
    name="cell_type_embedding_jittered",
    role="control",
    train=train,
    hyperparameters=JitteredHyperparameters,
    description="Positive control for bio conservation: one-hot cell types plus uniform jitter",
    model_class="cite_bench.methods.model_artifacts.RecipeModel",
    needs_labels=True,
)
