"""Score embeddings with the registered metrics, scale them between controls, tabulate them.

Which metrics exist, their groups, requirements and names are in ``cite_bench.metrics``; which
methods exist and their roles in ``cite_bench.methods``. The metrics follow scib's definitions
(Luecken et al. 2022); the shared work (one exact kNN search, one Leiden clustering per
resolution, one pass for the silhouettes) is organised in ``cite_bench.scoring`` to scale to
the full 90,000-cell dataset.

Each method's raw scores are then read against the controls of the same dataset, as Open
Problems does: ``(value - worst control) / (best control - worst control)``, so that 0 is what
an embedding that knows nothing (or integrates nothing) gets and 1 what the labels themselves
get.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from cite_bench.methods import METHODS, SCALING_ROLES, Method, role_of
from cite_bench.metrics import (
    AGGREGATES,
    BATCHES,
    EMBEDDING,
    LABELS,
    PHASE,
    REFERENCE,
    REQUIREMENTS,
    SKIPPED,
    Metric,
    aggregate,
    display_name,
    keys_in_order,
    select_metrics,
)
from cite_bench.scoring import (
    CLUSTER_KEY,
    EMBEDDING_KEY,
    MetricNotApplicable,
    MetricNotComputable,
    Profiler,
    ScoringData,
    embedding_anndata,
    graph_anndata,
)
from cite_bench.seeds import first_seed, parse_seeds, split_by_seed

logger = logging.getLogger(__name__)

__all__ = ["CLUSTER_KEY", "EMBEDDING_KEY", "Profiler", "embedding_anndata"]  # for reference.py
TABLE_COLUMNS = ["method", "role", "seed", "metric", "value", "scaled", "note", "scaled_note"]
# Notes on values that were computed, kept in the table but not repeated under the markdown.
LEIDEN_NOTE = "mean over"


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


def score_embedding(
    embedding: pd.DataFrame,
    unintegrated: pd.DataFrame | None,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
    profile: Profiler | None = None,
    is_reference: bool = False,
    output: str = "embedding",
) -> pd.DataFrame:
    """Score one embedding (or, with ``output="graph"``, one cell graph in the layout of
    ``cite_bench.knn_graph``) with the metrics ``params["metrics"]`` selects.

    Each metric whose needs the data do not meet (labels, two batches, a phase column, an
    unintegrated reference other than the method itself) is reported as missing with a
    ``skipped: ...`` note; label-based metrics are scored on the cells with a label. All lie in
    [0, 1], higher is better. ``profile(step)`` wraps each step (the benchmark times them).
    """
    if output == "graph":
        adata, neighbours = graph_anndata(embedding, cells)
    else:
        adata, neighbours = embedding_anndata(embedding, cells), None
    reference = None if unintegrated is None else _aligned(unintegrated, adata)
    data = ScoringData(adata, columns, params, reference, profile, neighbours)
    metrics = select_metrics(params["metrics"])
    unmet = {
        metric.key: unmet_requirement(metric, data, columns, is_reference, output)
        for metric in metrics
    }
    in_background = any(metric.uses_clusters and not unmet[metric.key] for metric in metrics)
    in_background = in_background and data.labelled.start_leiden()
    # The clustering metrics last: the Leiden search runs meanwhile, on the cores that the
    # other metrics leave it (one thread for them: more would only wait for a core).
    with threadpool_limits(1) if in_background else contextlib.nullcontext():
        rows = _score_each(metrics, unmet, data)
    rows = [rows[metric.key] for metric in metrics]
    return pd.DataFrame(rows, columns=["metric", "value", "note"])


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
    metric: Metric,
    data: ScoringData,
    columns: Mapping[str, str],
    is_reference: bool,
    output: str,
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
        EMBEDDING: (output != "embedding", "the method outputs a cell graph, not an embedding"),
    }
    for need in REQUIREMENTS:
        unmet, reason = checks[need]
        if need in metric.needs and unmet:
            return f"{SKIPPED}{reason}"
    return ""


def _aligned(frame: pd.DataFrame, adata: Any) -> np.ndarray:
    return frame.loc[adata.obs_names].to_numpy(dtype=np.float32)


def tabulate_metrics(
    params: dict[str, Any],
    external_metrics: pd.DataFrame | None = None,
    **metrics_by_method: pd.DataFrame,
) -> pd.DataFrame:
    """One tidy table of every method's scores (the registered methods', and the external
    ones' with their ``method`` column): raw and scaled between controls, with the aggregates
    of both (columns ``TABLE_COLUMNS``)."""
    frames = [frame.assign(method=method) for method, frame in metrics_by_method.items()]
    if external_metrics is not None and len(external_metrics):
        frames.append(external_metrics)
    table = pd.concat(frames, ignore_index=True)
    table["role"] = table["method"].map(role_of)
    table = scale_by_controls(table, params["scaling"])
    return add_aggregates(table)[TABLE_COLUMNS]


def scale_by_controls(table: pd.DataFrame, scaling: Mapping[str, Any]) -> pd.DataFrame:
    """Each value scaled between the lowest and the highest control on this dataset (controls
    and no-integration baselines, by their mean over seeds), as Open Problems does.

    A metric on which the controls differ by less than ``min_control_range`` is uninformative
    (no scaled value, and said so); scaled values outside ``flag_outside`` are flagged.
    """
    table = table.copy()
    table["scaled"], table["scaled_note"] = np.nan, ""
    low_flag, high_flag = scaling["flag_outside"]
    controls = table[table["role"].isin(SCALING_ROLES)]
    for metric, rows in table.groupby("metric", sort=False):
        means = controls[controls["metric"] == metric].groupby("method")["value"].mean().dropna()
        if len(means) < 2:
            table.loc[rows.index, "scaled_note"] = (
                "uninformative: fewer than two controls were scored"
            )
            continue
        low, high = means.min(), means.max()
        if high - low < scaling["min_control_range"]:
            table.loc[rows.index, "scaled_note"] = (
                f"uninformative: the controls differ by {high - low:.3f} only "
                f"({means.idxmin()} {low:.3f}, {means.idxmax()} {high:.3f})"
            )
            continue
        scaled = (rows["value"] - low) / (high - low)
        table.loc[rows.index, "scaled"] = scaled
        outside = (scaled < low_flag) | (scaled > high_flag)
        table.loc[scaled[outside].index, "scaled_note"] = [
            f"flagged: scaled value {value:.2f} lies far outside [0, 1]: the controls do not "
            "bound this method"
            for value in scaled[outside]
        ]
    return table


def add_aggregates(table: pd.DataFrame) -> pd.DataFrame:
    """Bio conservation, batch correction and overall per method and seed, from the raw and
    from the scaled values (``cite_bench.metrics.aggregate``: metrics that do not apply are
    left out; uninformative ones too for the scaled aggregates)."""
    rows = []
    for (method, role, seed), scores in table.groupby(["method", "role", "seed"], sort=False):
        notes = dict(zip(scores["metric"], scores["note"].fillna(""), strict=True))
        skipped = {key: note for key, note in notes.items() if note.startswith(SKIPPED)}
        raw = aggregate(dict(zip(scores["metric"], scores["value"], strict=True)), skipped)
        uninformative = {
            key: note
            for key, note in zip(scores["metric"], scores["scaled_note"], strict=True)
            if note.startswith("uninformative")
        }
        scaled = aggregate(
            dict(zip(scores["metric"], scores["scaled"], strict=True)),
            {**skipped, **uninformative},
        )
        for key in AGGREGATES:
            rows.append(
                {
                    "method": method,
                    "role": role,
                    "seed": seed,
                    "metric": key,
                    "value": raw[key][0],
                    "scaled": scaled[key][0],
                    "note": raw[key][1],
                    "scaled_note": scaled[key][1],
                }
            )
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)


def summarise_over_seeds(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation of each method's raw and scaled scores over its
    seeds (one row per method and metric, in table order); the SD is 0 for a single seed."""

    def sd(values: pd.Series) -> float:
        return values.std(ddof=1) if values.notna().sum() > 1 else 0.0

    metrics = metrics.copy()
    if "role" not in metrics:
        metrics["role"] = metrics["method"].map(role_of)
    for column in ("scaled", "scaled_note"):
        if column not in metrics:
            metrics[column] = np.nan if column == "scaled" else ""
    summary = metrics.groupby(["method", "metric"], sort=False).agg(
        role=("role", "first"),
        mean=("value", "mean"),
        sd=("value", sd),
        scaled_mean=("scaled", "mean"),
        scaled_sd=("scaled", sd),
        n_seeds=("seed", "nunique"),
        note=("note", "first"),
        scaled_note=("scaled_note", "first"),
    )
    summary.loc[summary["mean"].isna(), "sd"] = np.nan
    summary.loc[summary["scaled_mean"].isna(), "scaled_sd"] = np.nan
    return summary.reset_index()


def ranked_methods(summary: pd.DataFrame, rank_by: str) -> list[str]:
    """Methods under test (integrated, baselines, external) by their overall score, best first,
    then the controls, likewise. Raw scores rank where scaled ones are missing (no controls)."""
    column = ranking_column(summary, rank_by)
    overall = summary[summary["metric"] == "overall"].set_index("method")
    order = list(dict.fromkeys(summary["method"]))
    score = overall[column].reindex(order).fillna(-np.inf)
    is_control = [role_of(method) == "control" for method in order]
    return sorted(order, key=lambda m: (is_control[order.index(m)], -score[m], order.index(m)))


@dataclass(frozen=True)
class MatrixSummary:
    """Several datasets' tables summarised alike: each dataset's mean ± SD over seeds, one
    score column for all of them (scaled only where every dataset has scaled scores), and
    the methods ranked by their mean overall score across datasets, controls last."""

    summaries: dict[str, pd.DataFrame]
    column: str
    order: list[str]

    @property
    def spread(self) -> str:
        return "scaled_sd" if self.column == "scaled_mean" else "sd"


def summarise_matrix(combined: pd.DataFrame, rank_by: str) -> MatrixSummary:
    """The summary the matrix's table and figure share (``combined`` has a dataset column)."""
    summaries = {
        str(dataset): summarise_over_seeds(table)
        for dataset, table in combined.groupby("dataset", sort=False)
    }
    scaled = all(
        ranking_column(summary, rank_by) == "scaled_mean" for summary in summaries.values()
    )
    column = "scaled_mean" if scaled else "mean"
    overall = pd.concat(
        [summary[summary["metric"] == "overall"].set_index("method")[column]
         for summary in summaries.values()],
        axis=1,
    ).mean(axis=1).fillna(-np.inf)  # fmt: skip
    order = sorted(overall.index, key=lambda m: (role_of(m) == "control", -overall[m]))
    return MatrixSummary(summaries, column, [str(method) for method in order])


def ranking_column(summary: pd.DataFrame, rank_by: str) -> str:
    column = "scaled_mean" if rank_by == "scaled" else "mean"
    if column == "scaled_mean" and summary["scaled_mean"].isna().all():
        return "mean"  # no controls were scored: nothing to scale against
    return column


def format_metrics_table(metrics: pd.DataFrame, params: dict[str, Any]) -> str:
    """Markdown tables in the layout of the reference (one row per metric, one column per
    method, methods ranked by the overall score, controls last): the scaled scores and the raw
    ones, the best method's value per metric in bold (controls are not candidates), mean ± SD
    where methods ran with several seeds, and notes below."""
    summary = summarise_over_seeds(metrics)
    rank_by = params["rank_by"]
    methods = ranked_methods(summary, rank_by)
    with_sd = bool((summary["n_seeds"] > 1).any())
    scaled_available = not summary["scaled_mean"].isna().all()
    sections = []
    tables = [("Raw scores", "mean", "sd")]
    if scaled_available:
        scaled = ("Scaled scores (0 = worst control, 1 = best control)", "scaled_mean", "scaled_sd")
        tables = [scaled, *tables] if rank_by == "scaled" else [*tables, scaled]
    for title, mean, spread in tables:
        sections.append(f"### {title}\n\n" + _markdown_table(summary, methods, mean, spread))
    roles = ", ".join(f"{method}: {role_of(method)}" for method in methods)
    ranking = "scaled" if ranking_column(summary, rank_by) == "scaled_mean" else "raw"
    lines = [f"Methods ranked by the overall {ranking} score; roles: {roles}."]
    if with_sd:
        seeds = ", ".join(str(seed) for seed in sorted(metrics["seed"].unique()))
        lines.append(f"Mean ± standard deviation over seeds {seeds}.")
    lines += _notes(summary)
    return "\n\n".join(sections) + "\n" + "\n".join(lines) + "\n"


def _markdown_table(summary: pd.DataFrame, methods: Sequence[str], mean: str, spread: str) -> str:
    wide = summary.pivot(index="metric", columns="method", values=mean)
    spreads = summary.pivot(index="metric", columns="method", values=spread)
    order = keys_in_order(wide.index)
    wide, spreads = wide.loc[order, methods], spreads.loc[order, methods]
    with_sd = bool((summary["n_seeds"] > 1).any())
    candidates = [method for method in methods if role_of(method) != "control"]
    lines = ["| Metric | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for key, row in wide.iterrows():
        best = row[candidates].max()
        cells = []
        for method, value in row.items():
            if np.isnan(value):
                cells.append("n/a")
                continue
            text = f"{value:.3f}" + (f" ± {spreads.at[key, method]:.3f}" if with_sd else "")
            is_best = method in candidates and np.isclose(value, best)
            cells.append(f"**{text}**" if is_best else text)
        lines.append(f"| {display_name(key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _notes(summary: pd.DataFrame) -> list[str]:
    """One line per distinct reason a value is missing or flagged, naming the methods; the
    spread over Leiden seeds is said once (each value's is in the table's note)."""
    lines, leiden = [], set()
    for column in ("note", "scaled_note"):
        parts = summary[column].fillna("").str.split("; ")
        leiden |= set(
            summary.loc[parts.map(lambda p: any(x.startswith(LEIDEN_NOTE) for x in p)), "metric"]
        )
        shown = parts.map(lambda p: "; ".join(x for x in p if not x.startswith(LEIDEN_NOTE)))
        notes = summary.assign(shown=shown)
        notes = notes[notes["shown"] != ""]
        grouped = notes.groupby(["metric", "shown"], sort=False)["method"].apply(list)
        for (metric, note), methods in grouped.items():
            label = display_name(metric) + (" (scaled)" if column == "scaled_note" else "")
            everyone = set(methods) == set(summary["method"])
            who = "" if everyone else f" [{', '.join(methods)}]"
            lines.append(f"- {label}: {note}{who}")
    if leiden:
        names = ", ".join(display_name(key) for key in keys_in_order(leiden))
        lines.append(
            f"- {names}: means over Leiden seeds (evaluation.leiden_seeds); the standard "
            "deviation of each is in the note column of metrics.parquet"
        )
    return lines


# --- users' own methods: embeddings from files ------------------------------------------------


class ExternalEmbeddingError(ValueError):
    """An external method's embedding cannot be scored; the message names the file."""


def check_external_embeddings(
    external: Mapping[str, Any], cells: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """Check each external method's embedding against the dataset's cells before any scoring:
    every cell present (extra cells are named and dropped), numbers only, finite, at least two
    non-constant dimensions, a name of its own. Returns the embeddings in the cells' order."""
    checked = {}
    for name, item in external.items():
        where = f"external method '{name}' ({item.path})"
        frame = item.frame
        if name in METHODS or name in {"params", "external_metrics"}:
            raise ExternalEmbeddingError(f"{where}: '{name}' is taken; choose another name.")
        if frame.shape[1] == 0:
            raise ExternalEmbeddingError(f"{where}: the embedding has no dimension.")
        text = [column for column, dtype in frame.dtypes.items() if dtype.kind not in "biuf"]
        if text:
            raise ExternalEmbeddingError(f"{where}: non-numeric columns {text[:5]}.")
        duplicated = frame.index[frame.index.duplicated()]
        if duplicated.size:
            raise ExternalEmbeddingError(
                f"{where}: {duplicated.size} duplicate barcodes, e.g. {list(duplicated[:3])}."
            )
        missing = cells.index.difference(frame.index)
        if missing.size:
            raise ExternalEmbeddingError(
                f"{where}: {missing.size} of the dataset's {len(cells)} cells are missing, e.g. "
                f"{list(missing[:3])} (barcodes are the index of a table, obs_names of an .h5ad)."
            )
        extra = frame.index.difference(cells.index)
        if extra.size:
            logger.warning(
                "%s: dropping %d cells that are not in the dataset, e.g. %s.",
                where,
                extra.size,
                list(extra[:3]),
            )
        values = frame.loc[cells.index].to_numpy(dtype=np.float64)
        not_finite = int(values.size - np.isfinite(values).sum())
        if not_finite:
            raise ExternalEmbeddingError(f"{where}: {not_finite} NaN or infinite values.")
        varying = int((values.std(axis=0) > 0).sum())
        if varying < 2:
            raise ExternalEmbeddingError(
                f"{where}: {varying} non-constant dimension(s); an embedding needs at least two."
            )
        checked[name] = frame.loc[cells.index]
    return checked


def score_external_embeddings(
    embeddings: Mapping[str, pd.DataFrame],
    unintegrated: pd.DataFrame,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
) -> pd.DataFrame:
    """Score each external embedding exactly as a trained method's (``score_embedding``)."""
    reference = first_seed(unintegrated)
    tables = [
        score_embedding(frame, reference, cells, params, columns).assign(method=name, seed=0)
        for name, frame in embeddings.items()
    ]
    columns_out = ["method", "seed", "metric", "value", "note"]
    return (
        pd.concat(tables, ignore_index=True)[columns_out]
        if tables
        else pd.DataFrame(columns=columns_out)
    )
