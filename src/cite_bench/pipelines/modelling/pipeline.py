"""One template pipeline, instantiated per method under the ``modelling.<method>`` namespace."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from cite_bench import artifacts
from cite_bench.artifacts import MUDATA
from cite_bench.methods import METHODS, Method

from .nodes import train

SHARED_PARAMETERS = {
    "params:modelling",
    "params:training_length",
    "params:seeds",
    "params:columns",
    "params:controls",
}


def create_method_pipeline(method: Method) -> Pipeline:
    """Train one method on the shared MuData, once per seed; its outputs live in its
    namespace, the parameters are shared by all."""
    node_function = update_wrapper(partial(train, method), train)
    template = Pipeline(
        [
            Node(
                node_function,
                inputs=[
                    MUDATA,
                    "params:modelling",
                    "params:training_length",
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
        namespace=artifacts.modelling_namespace(method.name),
        inputs={MUDATA},
        parameters=SHARED_PARAMETERS,
        tags=["modelling", method.name, method.role, *(["gpu"] if method.uses_gpu else [])],
    )


def create_pipeline(methods: Mapping[str, Method] = METHODS, **kwargs) -> Pipeline:
    return sum((create_method_pipeline(method) for method in methods.values()), Pipeline([]))
