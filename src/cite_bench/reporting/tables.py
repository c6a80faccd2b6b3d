"""The metrics table: raw scores scaled between controls, aggregates, summaries and ranking.

Each method's raw scores are read against the controls of the same dataset, as Open Problems
does: ``(value - worst control) / (best control - worst control)``, so that 0 is what an
embedding that knows nothing (or integrates nothing) gets and 1 what the labels themselves get.
The markdown (``reporting.markdown``), the figures (``reporting.figures``), tracking and the
benchmark matrix all read these summaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cite_bench.methods import SCALING_ROLES, role_of
from cite_bench.metrics import AGGREGATES, SKIPPED, aggregate

TABLE_COLUMNS = ["method", "role", "seed", "metric", "value", "scaled", "note", "scaled_note"]


def tabulate_metrics(
    params: Mapping[str, Any],
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
