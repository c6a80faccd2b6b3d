"""Per-method scoring (one namespace per method, as in modelling), then one table for all."""

import warnings
from functools import partial

from kedro.pipeline import Node, Pipeline

from cite_bench.methods import METHODS, Method, methods_with_role, unintegrated_reference

from .figures import compute_umap, compute_umaps, plot_metric_summary, plot_umaps
from .nodes import (
    check_external_embeddings,
    compute_metrics,
    format_metrics_table,
    score_external_embeddings,
    tabulate_metrics,
)

# Methods drawn in the UMAP figure: those under test and the baselines, not the controls.
PICTURED = methods_with_role("integrated", "baseline", "external")


def create_scoring_pipeline(method: Method) -> Pipeline:
    nodes = [
        Node(
            partial(compute_metrics, method),
            inputs=[
                "embedding",
                "unintegrated",
                "cell_metadata",
                "params:evaluation",
                "params:columns",
                "params:seeds",
                "params:controls",
            ],
            outputs="metrics",
            name="compute_metrics",
        )
    ]
    if method.name in PICTURED:
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
        namespace=f"evaluation.{method.name}",
        inputs={
            "embedding": f"modelling.{method.name}.embedding",
            # Reference-based metrics (PCR comparison, cell cycle) compare with it.
            "unintegrated": f"modelling.{unintegrated_reference()}.embedding",
            "cell_metadata": "cell_metadata",
        },
        parameters={"params:evaluation", "params:columns", "params:seeds", "params:controls"},
        tags=["evaluation", method.name, method.role],
    )


def create_pipeline(**kwargs) -> Pipeline:
    # Scoring reads modelling's namespaced outputs and the table gathers evaluation's by their
    # full names; Kedro warns about dots in names although its own namespacing made them.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        scoring = sum(
            (create_scoring_pipeline(method) for method in METHODS.values()), Pipeline([])
        )
        return scoring + create_external_pipeline()


def create_external_pipeline() -> Pipeline:
    """Score users' own embeddings (``external``) beside the registered methods and rebuild the
    tables and figures: ``kedro run --pipeline external`` on a finished run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        reference = f"modelling.{unintegrated_reference()}.embedding"
        external = Pipeline(
            [
                Node(
                    check_external_embeddings,
                    inputs=["external_embeddings", "cell_metadata"],
                    outputs="checked_external_embeddings",
                    name="check_external_embeddings",
                ),
                Node(
                    score_external_embeddings,
                    inputs=[
                        "checked_external_embeddings",
                        reference,
                        "cell_metadata",
                        "params:evaluation",
                        "params:columns",
                    ],
                    outputs="external_metrics",
                    name="score_external_embeddings",
                ),
                Node(
                    compute_umaps,
                    inputs=["checked_external_embeddings", "params:evaluation"],
                    outputs="external_umaps",
                    name="compute_external_umaps",
                ),
            ],
            tags=["evaluation", "external"],
        )
        return external + _summary_pipeline()


def _summary_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                tabulate_metrics,
                inputs={
                    "params": "params:evaluation",
                    "external_metrics": "external_metrics",
                    **{method: f"evaluation.{method}.metrics" for method in METHODS},
                },
                outputs="metrics_table",
                name="tabulate_metrics",
            ),
            Node(
                format_metrics_table,
                inputs=["metrics_table", "params:evaluation"],
                outputs="metrics_markdown",
                name="format_metrics_table",
            ),
            Node(
                plot_metric_summary,
                inputs=["metrics_table", "params:evaluation"],
                outputs="metrics_summary_figure",
                name="plot_metric_summary",
            ),
            Node(
                plot_umaps,
                inputs={
                    "cells": "cell_metadata",
                    "columns": "params:columns",
                    "external_umaps": "external_umaps",
                    **{method: f"evaluation.{method}.umap" for method in PICTURED},
                },
                outputs="umap_figure",
                name="plot_umaps",
            ),
        ],
        tags=["evaluation"],
    )
