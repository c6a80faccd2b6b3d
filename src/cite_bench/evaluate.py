"""Score embeddings (or cell graphs) with the registered metrics: the tidy table of one or more.

``score_embedding`` is what the evaluation pipeline runs for each method and seed, and what a
notebook calls on an embedding of its own: it pairs the output with the cells
(``cite_bench.outputs``), checks each selected metric's needs, lets ``ScoringData`` do the
shared work once and reads each metric from the registry (``cite_bench.metrics``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from cite_bench.metrics import (
    BATCHES,
    EMBEDDING,
    LABELS,
    LEIDEN_NOTE,
    PHASE,
    REFERENCE,
    REQUIREMENTS,
    SKIPPED,
    Metric,
    MetricNotApplicable,
    MetricNotComputable,
    select_metrics,
)
from cite_bench.outputs import MethodOutput, OutputKind
from cite_bench.scoring import Profiler, ScoringData

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ["metric", "value", "note"]


def score_embedding(
    embedding: pd.DataFrame,
    unintegrated: pd.DataFrame | None,
    cells: pd.DataFrame,
    params: Mapping[str, Any],
    columns: Mapping[str, str],
    profile: Profiler | None = None,
    is_reference: bool = False,
    output: OutputKind = "embedding",
) -> pd.DataFrame:
    """Score one embedding (or, with ``output="graph"``, one cell graph in the layout of
    ``cite_bench.knn_graph``) with the metrics ``params["metrics"]`` selects.

    ``cells``: the cell metadata (indexed by barcode, the columns that ``columns`` names);
    ``unintegrated``: the embedding reference-based metrics compare with (or ``None``);
    ``params``: the ``evaluation`` settings. Each metric whose needs the data do not meet
    (labels, two batches, a phase column, an unintegrated reference other than the method
    itself, coordinates) is reported as missing with a ``skipped: ...`` note; label-based
    metrics are scored on the cells with a label. All lie in [0, 1], higher is better.
    ``profile(step)`` wraps each step (the benchmark times them). Returns one row per metric
    (columns ``metric``, ``value``, ``note``).
    """
    adata, neighbours = MethodOutput(embedding, output).to_anndata(cells)
    reference = None if unintegrated is None else _aligned(unintegrated, adata)
    data = ScoringData(adata, columns, params, reference, profile, neighbours)
    metrics = select_metrics(params["metrics"])
    unmet = {
        metric.key: unmet_requirement(metric, data, columns, is_reference) for metric in metrics
    }
    in_background = any(metric.uses_clusters and not unmet[metric.key] for metric in metrics)
    in_background = in_background and data.labelled.start_leiden()
    # The clustering metrics last: the Leiden search runs meanwhile, on the cores that the
    # other metrics leave it (one thread for them: more would only wait for a core).
    with threadpool_limits(1) if in_background else contextlib.nullcontext():
        rows = _score_each(metrics, unmet, data)
    rows = [rows[metric.key] for metric in metrics]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def score_embeddings(
    embeddings: Mapping[str, pd.DataFrame],
    unintegrated: pd.DataFrame | None,
    cells: pd.DataFrame,
    params: Mapping[str, Any],
    columns: Mapping[str, str],
) -> pd.DataFrame:
    """``score_embedding`` of each named embedding: one tidy table with a ``method`` column."""
    tables = [
        score_embedding(frame, unintegrated, cells, params, columns).assign(method=name)
        for name, frame in embeddings.items()
    ]
    columns_out = ["method", *SCORE_COLUMNS]
    if not tables:
        return pd.DataFrame(columns=columns_out)
    return pd.concat(tables, ignore_index=True)[columns_out]


def _score_each(
    metrics: list[Metric], unmet: dict[str, str], data: ScoringData
) -> dict[str, dict[str, Any]]:
    """Each metric's value and note (see ``score_embedding``), the clustering metrics last."""
    rows = {}
    for metric in sorted(metrics, key=lambda metric: metric.uses_clusters):
        value, note = np.nan, unmet[metric.key]
        if not note:
            target = data.labelled if LABELS in metric.needs else data
            try:
                value = float(metric.compute(target))
            except MetricNotApplicable as reason:
                note = f"{SKIPPED}{reason}"
            except MetricNotComputable as reason:
                logger.warning("%s could not be computed: %s", metric.name, reason)
                note = f"not computable: {reason}"
            notes = []
            if target is not data and not note:
                notes.append(f"on the {target.n_cells} of {data.n_cells} cells with a label")
            if metric.key in target.leiden_spread:
                spread = target.leiden_spread[metric.key]
                seeds = len(target.leiden_seeds)
                notes.append(f"{LEIDEN_NOTE} {seeds} Leiden seeds (SD {spread:.3f})")
            note = note or "; ".join(notes)
            if np.isnan(value) and not note:
                note = "not computable on this embedding"
        rows[metric.key] = {"metric": metric.key, "value": value, "note": note}
    return rows


def unmet_requirement(
    metric: Metric, data: ScoringData, columns: Mapping[str, str], is_reference: bool
) -> str:
    """The ``skipped: ...`` note of a metric whose needs these data do not meet, or ``""``."""
    label, batch, phase = columns["label"], columns["batch"], columns["phase"]
    checks = {
        LABELS: (not data.has_labels.any(), f"no cell-type labels (obs column '{label}')"),
        BATCHES: (data.n_batches < 2, f"only one batch in '{batch}'"),
        PHASE: (
            phase not in data.adata.obs or not data.adata.obs[phase].notna().any(),
            f"no cell-cycle phase column '{phase}' in obs",
        ),
        REFERENCE: (
            is_reference or data.reference is None,
            "this is the unintegrated reference: it would be compared with itself"
            if is_reference
            else "no unintegrated reference embedding",
        ),
        EMBEDDING: (data.is_graph, "the method outputs a cell graph, not an embedding"),
    }
    for need in REQUIREMENTS:
        unmet, reason = checks[need]
        if need in metric.needs and unmet:
            return f"{SKIPPED}{reason}"
    return ""


def _aligned(frame: pd.DataFrame, adata: Any) -> np.ndarray:
    return frame.loc[adata.obs_names].to_numpy(dtype=np.float32)
