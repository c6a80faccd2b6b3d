"""The metrics table as markdown: scaled and raw scores, methods ranked, notes below."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cite_bench.methods import role_of
from cite_bench.metrics import LEIDEN_NOTE, display_name, keys_in_order

from .tables import ranked_methods, ranking_column, summarise_over_seeds


def format_metrics_table(metrics: pd.DataFrame, params: Mapping[str, Any]) -> str:
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
