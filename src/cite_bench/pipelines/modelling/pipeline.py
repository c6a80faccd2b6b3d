"""One template pipeline, instantiated per method under the ``modelling.<method>`` namespace."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from kedro.pipeline import Node, Pipeline

from .nodes import train_over_seeds

if TYPE_CHECKING:
    from cite_bench.methods import Method


def create_method_pipeline(method: Method) -> Pipeline:
    """Train one method on the shared MuData, once per seed; its outputs and parameters live in
    its namespace, the seeds, column names and the controls switch are shared by all."""
    template = Pipeline(
        [
            Node(
                partial(train_over_seeds, method),
                inputs=[
                    "cite_seq_mudata",
                    "params:hyperparameters",
                    "params:seeds",
                    "params:columns",
                    "params:controls",
                ],
                outputs=["trained_model", "embedding", "training_summary"],
                name="train",
            )
        ]
    )
    return Pipeline(
        template,
        namespace=f"modelling.{method.name}",
        inputs={"cite_seq_mudata"},
        parameters={"params:seeds", "params:columns", "params:controls"},
        tags=["modelling", method.name, method.role, *(["gpu"] if method.uses_gpu else [])],
    )


def create_pipeline(**kwargs) -> Pipeline:
    # The registry imports this package's trainers: read it when the pipeline is built.
    from cite_bench.methods import METHODS

    return sum((create_method_pipeline(method) for method in METHODS.values()), Pipeline([]))
