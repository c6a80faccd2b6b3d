"""Catalog data and run parameters turned into what a run logs: params, metrics and tags."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cite_bench.artifacts import EVALUATION, EXTERNAL_METRICS, MODELLING

if TYPE_CHECKING:
    import pandas as pd
    from kedro.pipeline import Pipeline

TRAINING_METRICS = ("training_time_s", "final_training_loss", "n_epochs_trained")


def summarise_over_seeds(metrics: pd.DataFrame) -> pd.DataFrame:
    """The reporting code's summary over seeds: tracking's one import of it."""
    from cite_bench.reporting import summarise_over_seeds as summarise

    return summarise(metrics)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as MLflow params: ``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def models_in(pipeline: Pipeline) -> list[str]:
    """Models whose modelling or evaluation nodes are part of this run, in pipeline order."""
    models: dict[str, None] = {}
    for node in pipeline.nodes:
        parts = (node.namespace or "").split(".")
        if len(parts) == 2 and parts[0] in (MODELLING, EVALUATION):
            models[parts[1]] = None
    return list(models)


def scores_external(pipeline: Pipeline) -> bool:
    """Whether this run scores users' own embeddings (``external``)."""
    return EXTERNAL_METRICS in pipeline.all_outputs()


def metric_values(metrics: pd.DataFrame) -> dict[str, float]:
    """A method's rows of the metrics table as MLflow metrics: the mean over seeds under the
    metric's key, the scaled mean under ``<key>_scaled``, and the standard deviations under
    ``<key>_sd`` and ``<key>_scaled_sd`` when there are several seeds."""
    summary = summarise_over_seeds(metrics.assign(method=""))
    values = dict(zip(summary["metric"], summary["mean"], strict=True))
    values |= dict(zip(summary["metric"] + "_scaled", summary["scaled_mean"], strict=True))
    if (summary["n_seeds"] > 1).any():
        values |= dict(zip(summary["metric"] + "_sd", summary["sd"], strict=True))
        values |= dict(zip(summary["metric"] + "_scaled_sd", summary["scaled_sd"], strict=True))
    return values


def parts_by_method(data: Any, logged_as: str) -> Iterator[tuple[str, Any]]:
    """Each method's part of an artifact logged to "each method": a metrics table's rows by
    its ``method`` column, external embeddings by their method's name."""
    if logged_as == "metrics":
        for method, rows in data.groupby("method", sort=False):
            yield str(method), rows
    elif logged_as == "source_files":
        yield from data.items()
    else:
        raise ValueError(f"No per-method parts of an artifact logged as {logged_as!r}.")


def training_metrics(summary: Mapping[str, Any]) -> dict[str, float | None]:
    return {key: summary.get(key) for key in TRAINING_METRICS}


def training_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    """Where and with what a model was trained: device, cells, package versions. A method that
    was skipped trained nowhere: it leaves the tags it has (the cell count) as they are."""
    tags = {key: str(summary[key]) for key in ("device", "n_cells") if key in summary}
    for package, version in (summary.get("versions") or {}).items():
        tags[f"version.{package}"] = str(version)
    return tags


def source_file_tags(item: Any) -> dict[str, str]:
    """An external embedding's file and checksum: what was scored, exactly."""
    return {"sha256": item.sha256, "source_file": item.path}


def git_commit(project_path: Path) -> str:
    """The checked-out commit, marked ``-dirty`` when the work tree has changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if status else commit
