"""Per-method scoring (one namespace per method, as in modelling), the external embeddings'
scoring, then one table for all (the reporting pipeline). Wiring only."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import partial

from kedro.pipeline import Node, Pipeline

from cite_bench import artifacts
from cite_bench.artifacts import CELL_METADATA
from cite_bench.methods import METHODS, Method, unintegrated_reference
from cite_bench.pipelines.external.pipeline import create_scoring_pipeline as external_scoring
from cite_bench.pipelines.reporting import create_pipeline as create_reporting_pipeline
from cite_bench.pipelines.reporting.pipeline import PICTURED_ROLES

from .nodes import compute_metrics, compute_umap


def create_scoring_pipeline(method: Method, reference: str) -> Pipeline:
    """Score ``method``'s output, each seed, against the ``reference`` method's embedding."""
    nodes = [
        Node(
            partial(compute_metrics, method),
            inputs=[
                "embedding",
                "unintegrated",
                CELL_METADATA,
                "params:evaluation",
                "params:columns",
                "params:seeds",
                "params:controls",
            ],
            outputs="metrics",
            name="compute_metrics",
        )
    ]
    if method.role in PICTURED_ROLES:
        nodes.append(
            Node(
                compute_umap,
                inputs=["embedding", "params:evaluation"],
                outputs="umap",
                name="compute_umap",
            )
        )
    return Pipeline(
        Pipeline(nodes),
        namespace=artifacts.evaluation_namespace(method.name),
        inputs={
            "embedding": artifacts.embedding(method.name),
            # Reference-based metrics (PCR comparison, cell cycle) compare with it.
            "unintegrated": artifacts.embedding(reference),
            CELL_METADATA: CELL_METADATA,
        },
        parameters={"params:evaluation", "params:columns", "params:seeds", "params:controls"},
        tags=["evaluation", method.name, method.role],
    )


def create_pipeline(methods: Mapping[str, Method] | None = None, **kwargs) -> Pipeline:
    """Every method's scoring (default: the registered ones), the external embeddings', and
    the tables and figures of all."""
    methods = METHODS if methods is None else methods
    # Scoring reads modelling's namespaced outputs; Kedro warns about dots in names although
    # its own namespacing made them.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        reference = unintegrated_reference(methods)
        scoring = sum(
            (create_scoring_pipeline(method, reference) for method in methods.values()),
            Pipeline([]),
        )
    return scoring + external_scoring(reference) + create_reporting_pipeline(methods)
