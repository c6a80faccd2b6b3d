"""One template pipeline, instantiated per model under the ``modelling.<model>`` namespace."""

from collections.abc import Callable

from kedro.pipeline import Node, Pipeline

from .nodes import TRAINERS, TrainingResult


def create_model_pipeline(model: str, trainer: Callable[..., TrainingResult]) -> Pipeline:
    """Train one model on the shared MuData; its outputs and parameters live in its namespace."""
    template = Pipeline(
        [
            Node(
                trainer,
                inputs=["cite_seq_mudata", "params:hyperparameters", "params:columns"],
                outputs=["trained_model", "embedding", "training_summary"],
                name="train",
            )
        ]
    )
    return Pipeline(
        template,
        namespace=f"modelling.{model}",
        inputs={"cite_seq_mudata"},
        parameters={"params:columns"},
        tags=["modelling", model],
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum(
        (create_model_pipeline(model, trainer) for model, trainer in TRAINERS.items()),
        Pipeline([]),
    )
