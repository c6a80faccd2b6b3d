"""The stages of ``kedro benchmark``, each in a fresh process, and the command's loop."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from cite_bench import artifacts
from cite_bench.methods import METHODS

from .timing import (
    EVALUATE,
    SCIB_METRICS_STAGE,
    NodeTimer,
    Row,
    StepRecorder,
    TimedRunner,
    finish_stage,
    process_peak_gb,
    run_stage,
)

logger = logging.getLogger(__name__)

GEO_GENES = 13_953
GEO_PROTEINS = 134
ENV = "geo"  # the pipelines read the simulated file as they read GEO's


# --- stages (run in child processes: module-level functions) ---------------------------------


def scratch_project(project_path: Path, folder: Path) -> Path:
    """The project's configuration and ``pyproject.toml`` in ``folder``, with an empty data
    folder: the benchmark's runs write there, never into the project's ``data/``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(project_path / "pyproject.toml", folder / "pyproject.toml")
    if not (folder / "conf").exists():
        shutil.copytree(
            project_path / "conf", folder / "conf", ignore=shutil.ignore_patterns("local")
        )
        (folder / "conf" / "local").mkdir()
        # MLflow's set-up is paid once per `kedro run`, not per stage: off here.
        (folder / "conf" / ENV / "tracking.yml").write_text("enabled: false\n")
    (folder / "data").mkdir(exist_ok=True)
    (folder / "src").mkdir(exist_ok=True)  # Kedro wants the folder; the code is the installed one
    return folder


def stage_simulate(n_cells: int, path: str, seed: int) -> list[Row]:
    from cite_bench.simulation import simulate_cite_seq

    record = StepRecorder(stage="data")
    with record("simulate"):
        adata = simulate_cite_seq(
            n_cells=n_cells, n_genes=GEO_GENES, n_proteins=GEO_PROTEINS, seed=seed
        )
    with record("write .h5ad"):
        adata.write_h5ad(path)
    return finish_stage(record)


def stage_kedro_run(
    project_path: str,
    stage: str,
    runtime_params: dict[str, Any],
    run_args: dict[str, Any],
) -> list[Row]:
    """One ``kedro run --env geo`` of some of the project's nodes (``run_args``: Kedro's
    ``pipeline_name``, ``namespaces``, ``node_names``), timed node by node. The whole stage,
    process start-up (imports) included, is the row ``whole stage``."""
    started = time.perf_counter()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    os.chdir(project_path)  # relative paths (data/, the tracking store) are the scratch copy's
    bootstrap_project(Path(project_path))
    record = StepRecorder(stage=stage)
    with KedroSession.create(
        project_path=Path(project_path), env=ENV, runtime_params=runtime_params
    ) as session:
        session.run(runner=TimedRunner(NodeTimer(record)), **run_args)
    rows = finish_stage(record)
    rows.append({**record.fields, "step": "whole stage", "wall_s": time.perf_counter() - started})
    rows[-1]["peak_rss_gb"] = process_peak_gb()
    return rows


def stage_scib_path(
    project_path: str, runtime_params: dict[str, Any], models: list[str], leiden_flavor: str
) -> list[Row]:
    """scib's own code path on the embeddings the pipeline wrote, model by model."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from cite_bench.reference import scib_reference_metrics
    from cite_bench.seeds import first_seed

    os.chdir(project_path)
    bootstrap_project(Path(project_path))
    with KedroSession.create(
        project_path=Path(project_path), env=ENV, runtime_params=runtime_params
    ) as session:
        context = session.load_context()
        catalog, params = context.catalog, context.params
    evaluation = {**params["evaluation"], "leiden_flavor": leiden_flavor}
    cells = catalog.load(artifacts.CELL_METADATA)
    record = StepRecorder(stage=f"scib's path, {leiden_flavor}")
    for model in models:
        embedding = first_seed(catalog.load(artifacts.embedding(model)))
        with record(model):
            scib_reference_metrics(embedding, cells, evaluation, params["columns"])
    return finish_stage(record)


def training_rows(
    project_path: Path, runtime_params: dict[str, Any], model: str, unit: str
) -> list[Row]:
    """Time per epoch (MOFA: per iteration) from the training summary the run saved."""
    from kedro.framework.session import KedroSession

    with KedroSession.create(
        project_path=project_path, env=ENV, runtime_params=runtime_params
    ) as session:
        summary = session.load_context().catalog.load(artifacts.training_summary(model))
    n_epochs = int(summary.get("n_epochs_trained") or 0)
    if not n_epochs:
        return []
    return [
        {
            "stage": f"train {model}",
            "step": f"train, per {unit}",
            "wall_s": summary["training_time_s"] / n_epochs,
            "peak_rss_gb": float("nan"),
            "note": f"{n_epochs} {unit}s on {summary.get('device', '?')}",
        }
    ]


def _training_length(model: str, epochs: int) -> tuple[dict, str | None]:
    """The runtime parameters that cut a model's training to ``epochs`` epochs (MOFA:
    iterations), and the unit; nothing for models trained in one pass."""
    settings = METHODS[model].hyperparameters.model_fields
    for key, unit in (("max_epochs", "epoch"), ("n_iterations", "iteration")):
        if key in settings:
            return {"modelling": {model: {"hyperparameters": {key: epochs}}}}, unit
    return {}, None


def _merged(*blocks: dict[str, Any]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.merge(*blocks))


def run_benchmark(
    project_path: Path,
    sizes: list[int],
    models: list[str],
    epochs: int,
    reference_up_to: int,
    seed: int = 0,
    workdir: Path | None = None,
    after_each_size: Callable[[pd.DataFrame], None] | None = None,
    runtime_params: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Every stage at every size; one row per size, stage and step. ``runtime_params`` go to
    every stage's run (as ``kedro run --params``).

    ``after_each_size`` gets the results so far once each size is done, so that a long
    benchmark that fails or is stopped at a large size keeps what the smaller sizes measured.
    """
    from cite_bench.methods import unintegrated_reference
    from cite_bench.reference import REFERENCE_KEYS

    rows: list[Row] = []
    integrated = [model for model in models if METHODS[model].role == "integrated"]
    trained = list(dict.fromkeys([*models, unintegrated_reference()] if integrated else models))
    with contextlib.ExitStack() as stack:
        scratch = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for n_cells in sizes:
            folder = scratch_project(project_path, scratch / f"{n_cells}")
            raw = folder / "data" / "raw.h5ad"
            base = _merged(
                {
                    "inputs": {"path": str(raw)},
                    "data_processing": {"subsample": {"n_cells": None}},
                    "seeds": [seed],
                },
                runtime_params or {},
            )
            stages: list[tuple[Callable[..., list[Row]], tuple[Any, ...]]] = [
                (stage_simulate, (n_cells, str(raw), seed)),
                (
                    stage_kedro_run,
                    (str(folder), "preprocessing", base, {"pipeline_name": "data_processing"}),
                ),
            ]
            units = {}
            for model in trained:
                length, units[model] = _training_length(model, epochs)
                params = _merged(base, length)
                run_args = {
                    "pipeline_name": "modelling",
                    "namespaces": [artifacts.modelling_namespace(model)],
                }
                stages.append((stage_kedro_run, (str(folder), f"train {model}", params, run_args)))
            if integrated:
                nodes = [
                    f"{artifacts.evaluation_namespace(model)}.compute_metrics"
                    for model in integrated
                ]
                run_args = {"pipeline_name": "evaluation", "node_names": nodes}
                stages.append((stage_kedro_run, (str(folder), EVALUATE, base, run_args)))
                if n_cells <= reference_up_to:
                    same = _merged(
                        base,
                        {
                            "evaluation": {
                                "metrics": list(REFERENCE_KEYS),
                                "leiden_seeds": [seed],
                                "leiden_flavor": "igraph",
                            }
                        },
                    )
                    stages.append(
                        (stage_kedro_run, (str(folder), SCIB_METRICS_STAGE, same, run_args))
                    )
                    for flavor in ("igraph", "leidenalg"):
                        stages.append((stage_scib_path, (str(folder), base, integrated, flavor)))
            for function, args in stages:
                logger.info(
                    "benchmark: %s cells, %s %s", f"{n_cells:,}", function.__name__, args[1]
                )
                for row in run_stage(function, *args):
                    rows.append({"n_cells": n_cells, "note": "", **row})
            for model in trained:
                if units[model]:
                    params = _merged(base, _training_length(model, epochs)[0])
                    for row in training_rows(folder, params, model, units[model]):
                        rows.append({"n_cells": n_cells, **row})
            raw.unlink(missing_ok=True)  # the largest file; nothing reads it again
            if after_each_size is not None:
                after_each_size(_results_frame(rows))
    return _results_frame(rows)


def _results_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["n_cells", "stage", "step", "wall_s", "peak_rss_gb", "note"])
