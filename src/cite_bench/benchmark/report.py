"""The benchmark's report: the machine, the summary per size and the markdown."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .timing import EVALUATE, SCIB_METRICS_STAGE, Row

# --- the command ----------------------------------------------------------------------------


def machine_description() -> dict[str, str]:
    """CPU, cores available to this process, memory and accelerators (torch, JAX)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024**2:.0f} GiB"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": str(cores),
        "memory": memory,
        "torch device": _torch_device(),
        "jax device": _jax_device(),
        "python": platform.python_version(),
    }


def _torch_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def _jax_device() -> str:
    try:
        import jax

        device = jax.devices()[0]
    except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
        return f"unavailable ({type(exc).__name__})"
    return f"{device.platform} ({device.device_kind})"


def _stage_total(group: pd.DataFrame, stage: str, step: str = "whole stage") -> float:
    values = group.loc[(group["stage"] == stage) & (group["step"] == step), "wall_s"]
    return float(values.sum()) if len(values) else float("nan")


def _node_total(group: pd.DataFrame, stage: str) -> float:
    """The summed wall time of a stage's ``compute_metrics`` nodes (the metrics alone,
    without process start-up)."""
    nodes = group[(group["stage"] == stage) & group["step"].str.endswith(".compute_metrics")]
    return float(nodes["wall_s"].sum()) if len(nodes) else float("nan")


def _peak(group: pd.DataFrame, stage: str) -> float:
    values = group.loc[(group["stage"] == stage) & (group["step"] == "process peak"), "peak_rss_gb"]
    return float(values.max()) if len(values) else float("nan")


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per size, what the targets are about: the evaluation of the integrated embeddings
    (whole stage, warm-up included, and the nodes alone), the peak memory of preprocessing
    and of the PCA baselines, and the speed-ups over scib's path: like for like (the same
    metrics, one Leiden seed, igraph's Leiden on both sides) and against scib as shipped
    (leidenalg)."""
    summary = []
    for n_cells, group in results.groupby("n_cells"):
        evaluated = group[
            (group["stage"] == EVALUATE) & group["step"].str.endswith("compute_metrics")
        ]
        ours_same = _node_total(group, SCIB_METRICS_STAGE)
        row: Row = {
            "n_cells": n_cells,
            "embeddings": len(evaluated),
            "evaluation, whole stage (s)": _stage_total(group, EVALUATE),
            "evaluation, metric nodes (s)": _node_total(group, EVALUATE),
            "evaluation peak (GB)": _peak(group, EVALUATE),
            "preprocessing peak (GB)": _peak(group, "preprocessing"),
            "PCA baselines peak (GB)": max(
                _peak(group, "train pca_rna"), _peak(group, "train pca_rna_adt")
            ),
        }
        for flavor, label in (("igraph", "like for like"), ("leidenalg", "vs scib as shipped")):
            scib = group.loc[
                (group["stage"] == f"scib's path, {flavor}") & (group["step"] != "process peak"),
                "wall_s",
            ].sum()
            if scib:
                row[f"scib's path, {flavor} (s)"] = scib
                row[f"speed-up, {label}"] = scib / ours_same if ours_same else float("nan")
        if np.isfinite(ours_same):
            row["ours, scib's metrics, 1 seed (s)"] = ours_same
        summary.append(row)
    return pd.DataFrame(summary)


def format_report(results: pd.DataFrame, machine: dict[str, str], command: str) -> str:
    """Markdown: the machine, the evaluation summary, then every step at every size."""
    lines = [
        "# Benchmark",
        "",
        f"`{command}`",
        "",
        "Machine: " + "; ".join(f"{key}: {value}" for key, value in machine.items()) + ".",
        "",
        "## Targets: evaluation of the integrated models' embeddings, peak memory, speed-ups",
        "",
        _markdown(summarise(results)),
        "",
        "## Every stage: wall time (s) / peak resident memory (GB)",
        "",
    ]
    cells = {
        (row.stage, row.step, row.n_cells): ("-" if pd.isna(row.wall_s) else f"{row.wall_s:.1f}")
        + ("" if pd.isna(row.peak_rss_gb) else f" / {row.peak_rss_gb:.2f}")
        for row in results.itertuples()
    }
    sizes = list(dict.fromkeys(results["n_cells"]))
    steps = list(dict.fromkeys(zip(results["stage"], results["step"], strict=True)))
    wide = pd.DataFrame(
        [[stage, step, *(cells.get((stage, step, n), "") for n in sizes)] for stage, step in steps],
        columns=["stage", "step", *(f"{n:,} cells" for n in sizes)],
    )
    lines.append(_markdown(wide))
    notes = results.loc[results["note"] != "", ["n_cells", "stage", "step", "note"]]
    if len(notes):
        lines += ["", _markdown(notes)]
    return "\n".join(lines) + "\n"


def _markdown(frame: pd.DataFrame) -> str:
    """A markdown table; numbers with one decimal."""

    def text(value: Any) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(text(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *body])
