"""Per-model scoring (one namespace per model, as in modelling), then one table for all."""

import warnings

from kedro.pipeline import Node, Pipeline

from cite_bench.pipelines.modelling.nodes import TRAINERS

from .figures import compute_umap, plot_metric_summary, plot_umaps
from .nodes import collect_metrics, compute_metrics, format_metrics_table

UNINTEGRATED = "pca_rna"


def create_scoring_pipeline(model: str) -> Pipeline:
    template = Pipeline(
        [
            Node(
                compute_metrics,
                inputs=[
                    "embedding",
                    "unintegrated",
                    "cell_metadata",
                    "params:evaluation",
                    "params:columns",
                ],
                outputs="metrics",
                name="compute_metrics",
            ),
            Node(
                compute_umap,
                inputs=["embedding", "params:evaluation"],
                outputs="umap",
                name="compute_umap",
            ),
        ]
    )
    return Pipeline(
        template,
        namespace=f"evaluation.{model}",
        inputs={
            "embedding": f"modelling.{model}.embedding",
            # The PCR comparison measures batch variance against the unintegrated baseline.
            "unintegrated": f"modelling.{UNINTEGRATED}.embedding",
            "cell_metadata": "cell_metadata",
        },
        parameters={"params:evaluation", "params:columns"},
        tags=["evaluation", model],
    )


def create_pipeline(**kwargs) -> Pipeline:
    # Scoring reads modelling's namespaced outputs and the table gathers evaluation's by their
    # full names; Kedro warns about dots in names although its own namespacing made them.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        scoring = sum((create_scoring_pipeline(model) for model in TRAINERS), Pipeline([]))
        return scoring + _summary_pipeline()


def _summary_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                collect_metrics,
                inputs={model: f"evaluation.{model}.metrics" for model in TRAINERS},
                outputs="metrics_table",
                name="collect_metrics",
            ),
            Node(
                format_metrics_table,
                inputs="metrics_table",
                outputs="metrics_markdown",
                name="format_metrics_table",
            ),
            Node(
                plot_metric_summary,
                inputs="metrics_table",
                outputs="metrics_summary_figure",
                name="plot_metric_summary",
            ),
            Node(
                plot_umaps,
                inputs={
                    "cells": "cell_metadata",
                    "columns": "params:columns",
                    **{model: f"evaluation.{model}.umap" for model in TRAINERS},
                },
                outputs="umap_figure",
                name="plot_umaps",
            ),
        ],
        tags=["evaluation"],
    )
