"""One table of every method's scores (registered and external), its markdown and figures.

Wiring only: the nodes are ``cite_bench.reporting``'s functions. The evaluation and external
pipelines end with it (it is not registered on its own: it reads the external embeddings'
UMAPs, which only the external scoring makes).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from kedro.pipeline import Node, Pipeline

from cite_bench import artifacts
from cite_bench.artifacts import (
    CELL_METADATA,
    EXTERNAL_METRICS,
    METRICS_MARKDOWN,
    METRICS_SUMMARY_FIGURE,
    METRICS_TABLE,
    UMAP_FIGURE,
)
from cite_bench.methods import METHODS, Method
from cite_bench.reporting import format_metrics_table, tabulate_metrics
from cite_bench.reporting.figures import plot_metric_summary, plot_umaps

# Methods drawn in the UMAP figure: those under test and the baselines, not the controls.
PICTURED_ROLES = ("integrated", "baseline", "external")


def pictured(methods: Mapping[str, Method]) -> list[str]:
    return [name for name, method in methods.items() if method.role in PICTURED_ROLES]


def create_pipeline(methods: Mapping[str, Method] | None = None, **kwargs) -> Pipeline:
    """The table, markdown and figures of ``methods`` (default: every registered method)."""
    methods = METHODS if methods is None else methods
    with warnings.catch_warnings():
        # It gathers evaluation's outputs by their full names; Kedro warns about the dots
        # although its own namespacing made them.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        return Pipeline(
            [
                Node(
                    tabulate_metrics,
                    inputs={
                        "params": "params:evaluation",
                        EXTERNAL_METRICS: EXTERNAL_METRICS,
                        **{method: artifacts.metrics(method) for method in methods},
                    },
                    outputs=METRICS_TABLE,
                    name="tabulate_metrics",
                ),
                Node(
                    format_metrics_table,
                    inputs=[METRICS_TABLE, "params:evaluation"],
                    outputs=METRICS_MARKDOWN,
                    name="format_metrics_table",
                ),
                Node(
                    plot_metric_summary,
                    inputs=[METRICS_TABLE, "params:evaluation"],
                    outputs=METRICS_SUMMARY_FIGURE,
                    name="plot_metric_summary",
                ),
                Node(
                    plot_umaps,
                    inputs={
                        "cells": CELL_METADATA,
                        "columns": "params:columns",
                        "external_umaps": "external_umaps",
                        **{method: artifacts.umap(method) for method in pictured(methods)},
                    },
                    outputs=UMAP_FIGURE,
                    name="plot_umaps",
                ),
            ],
            tags=["evaluation"],
        )
