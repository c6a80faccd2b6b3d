"""One template pipeline, instantiated per model under the ``modelling.<model>`` namespace."""

from collections.abc import Callable
from functools import partial

from kedro.pipeline import Node, Pipeline

from .nodes import TRAINERS, TrainingResult, train_over_seeds


def create_model_pipeline(model: str, trainer: Callable[..., TrainingResult]) -> Pipeline:
    """Train one model on the shared MuData, once per seed; its outputs and parameters live in
    its namespace, the seeds and column names are shared by all models."""
    template = Pipeline(
        [
            Node(
                partial(train_over_seeds, trainer),
                inputs=[
                    "cite_seq_mudata",
                    "params:hyperparameters",
                    "params:seeds",
                    "params:columns",
                ],
                outputs=["trained_model", "embedding", "training_summary"],
                name="train",
            )
        ]
    )
    return Pipeline(
        template,
        namespace=f"modelling.{model}",
        inputs={"cite_seq_mudata"},
        parameters={"params:seeds", "params:columns"},
        tags=["modelling", model],
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum(
        (create_model_pipeline(model, trainer) for model, trainer in TRAINERS.items()),
        Pipeline([]),
    )
