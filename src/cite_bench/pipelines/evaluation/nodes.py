"""Evaluation nodes: score each method's output for each seed, and its UMAP.

The work is the library's: scoring in ``cite_bench.evaluate`` (metrics in
``cite_bench.metrics``, shared work in ``cite_bench.scoring``), the UMAP in
``cite_bench.reporting.figures``; the table of all methods is the reporting pipeline's. These
nodes only split a method's stacked seeds and say why a method that was skipped has no scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cite_bench.evaluate import score_embedding
from cite_bench.methods import Method
from cite_bench.metrics import SKIPPED, select_metrics
from cite_bench.reporting.figures import compute_umap
from cite_bench.seeds import first_seed, parse_seeds, split_by_seed

__all__ = ["compute_metrics", "compute_umap"]


def compute_metrics(
    method: Method,
    embedding: pd.DataFrame,
    unintegrated: pd.DataFrame,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
    seeds: int | str | list[int],
    controls: dict[str, Any],
) -> pd.DataFrame:
    """Score a method's embedding for each seed it was trained with (``score_embedding``); one
    row per seed and metric. The unintegrated reference is the baseline's first seed. A method
    that was skipped gets every metric as not applicable, with the reason."""
    metrics = select_metrics(params["metrics"])
    reason = method.skip_reason(cells, columns, controls)
    if reason:
        rows = [
            {"seed": seed, "metric": metric.key, "value": np.nan, "note": f"{SKIPPED}{reason}"}
            for seed in parse_seeds(seeds)
            for metric in metrics
        ]
        return pd.DataFrame(rows)
    reference = first_seed(unintegrated)
    tables = [
        score_embedding(
            frame,
            reference,
            cells,
            params,
            columns,
            is_reference=method.unintegrated_reference,
            output=method.output,
        ).assign(seed=seed)
        for seed, frame in split_by_seed(embedding).items()
    ]
    return pd.concat(tables, ignore_index=True)[["seed", "metric", "value", "note"]]
