"""Training a method once per seed, with one summary: what the modelling pipeline runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import mudata as md
import numpy as np
import pandas as pd

from cite_bench.seeds import parse_seeds, stack_seeds

from ._common import library_versions
from ._spec import Hyperparameters, Method, Trained

logger = logging.getLogger(__name__)


def run_summary(
    method: Method, mdata: md.MuData, seed: int, trained: Trained, seconds: float
) -> dict[str, Any]:
    """One training run as recorded: the common read-outs, then the method's own."""
    summary: dict[str, Any] = {
        "model": method.name,
        "n_cells": int(mdata.n_obs),
        "seed": int(seed),
        "training_time_s": round(seconds, 3),
        "device": trained.device,
        "final_training_loss": trained.final_training_loss,
        "n_epochs_trained": int(trained.n_epochs_trained),
    }
    if trained.stopped_early is not None:
        summary["stopped_early"] = bool(trained.stopped_early)
    return {**summary, **trained.details, "versions": library_versions()}


def train_once(
    method: Method,
    mdata: md.MuData,
    settings: Hyperparameters,
    seed: int,
    columns: Mapping[str, str],
) -> tuple[Trained, dict[str, Any]]:
    """One run of ``method`` with ``seed``, and its summary."""
    started = time.perf_counter()
    trained = method.train(mdata, settings, seed, columns)
    return trained, run_summary(method, mdata, seed, trained, time.perf_counter() - started)


def train_over_seeds(
    method: Method,
    mdata: md.MuData,
    settings: Hyperparameters,
    seeds: int | str | list[int],
    columns: Mapping[str, str],
    controls: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train a method once per seed, so that scores can be reported as mean and spread.

    Returns the models by ``seed_<n>``, the outputs stacked under a ``seed`` index level
    (``cite_bench.seeds.split_by_seed`` takes them apart) and one summary: means over seeds, and
    each run. A method that does not apply (a control that needs labels on unlabelled data,
    controls switched off) returns no model, an empty output and the reason.
    """
    reason = method.skip_reason(mdata.obs, columns, controls)
    if reason:
        logger.warning("Skipping %s: %s.", method.name, reason)
        summary = {"method": method.name, "role": method.role, "skipped": reason}
        return {}, stack_seeds({}), summary
    models, outputs, runs = {}, {}, []
    for seed in parse_seeds(seeds):
        logger.info("Training %s with seed %d.", method.name, seed)
        trained, summary = train_once(method, mdata, settings, seed, columns)
        models[f"seed_{seed}"] = trained.model
        outputs[seed] = trained.output
        runs.append(summary)
    summary = {"method": method.name, "role": method.role, **_summary_over_seeds(runs)}
    return models, stack_seeds(outputs), summary


def _summary_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for all seeds: per-run means at the top (what tracking logs), runs below."""
    per_run = ("training_time_s", "final_training_loss", "n_epochs_trained")
    # Per run only: a mean of "stopped early" over seeds would say little.
    run_keys = (*per_run, "stopped_early")

    def mean(key: str) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]
        return round(float(np.mean(values)), 6) if values else None

    first = runs[0]
    return {
        "n_cells": first["n_cells"],
        "seeds": [run["seed"] for run in runs],
        "device": first["device"],
        **{key: mean(key) for key in per_run},
        "runs": [{"seed": run["seed"], **{key: run.get(key) for key in run_keys}} for run in runs],
        "versions": first["versions"],
    }
