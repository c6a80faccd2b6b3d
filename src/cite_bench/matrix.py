"""The benchmark matrix in one command: datasets x methods x seeds on one Dask cluster.

Each dataset (a configuration environment: ``base`` for the demo, ``starter``, ``geo``, your
own) is one ``kedro run`` with the Dask runner, so each gets its own MLflow parent run with a
child run per method, exactly as when it is run alone. The runs are started together and share
one cluster (a LocalCluster started here, or the scheduler given); their metrics tables are then
combined into one table (dataset x method x seed x metric) with a summary figure across datasets.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cite_bench.methods import role_of
from cite_bench.reporting import summarise_matrix

logger = logging.getLogger(__name__)

RUNNER = "cite_bench.runner.DaskRunner"


@dataclass(frozen=True)
class DatasetRun:
    """One dataset of the matrix: its environment, its name, and where its run reports."""

    env: str
    dataset: str
    catalog: Any
    rank_by: str
    cluster: Mapping[str, Any]


def plan(
    project_path: Path, envs: Sequence[str], runtime_params: Mapping[str, Any]
) -> list[DatasetRun]:
    """Each environment's dataset name and catalog, checked before anything runs: two
    environments writing the same dataset's artifacts would overwrite each other."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_path)
    runs = []
    for env in envs:
        with KedroSession.create(
            project_path=project_path, env=env, runtime_params=dict(runtime_params)
        ) as session:
            context = session.load_context()
            dataset = str(context.config_loader["globals"].get("dataset", env))
            params = context.params
            runs.append(
                DatasetRun(
                    env,
                    dataset,
                    context.catalog,
                    params["evaluation"]["rank_by"],
                    params.get("cluster") or {},
                )
            )
    names = [run.dataset for run in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"Environments {list(envs)} name the same dataset {repeated} (globals.yml "
            "`dataset`): their runs would write the same files. Give each its own name."
        )
    return runs


def run_all(
    project_path: Path,
    runs: Sequence[DatasetRun],
    scheduler: str,
    params: str,
    log_folder: Path,
) -> dict[str, int]:
    """``kedro run`` for every dataset at once on the scheduler; each one's output goes to
    ``<log_folder>/<dataset>.log``. Returns each dataset's exit status."""
    log_folder.mkdir(parents=True, exist_ok=True)
    processes = {}
    for run in runs:
        command = [
            sys.executable,
            "-m",
            "kedro",
            "run",
            "--env",
            run.env,
            "--runner",
            RUNNER,
            "--runner-params",
            f"scheduler={scheduler}",
        ]
        if params:
            command += ["--params", params]
        log = (log_folder / f"{run.dataset}.log").open("w")
        logger.info("Matrix: %s (env %s) -> %s", run.dataset, run.env, log.name)
        processes[run.dataset] = (
            subprocess.Popen(
                command,
                cwd=project_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
            ),
            log,
        )
    statuses = {}
    for dataset, (process, log) in processes.items():
        statuses[dataset] = process.wait()
        log.close()
    return statuses


def combine(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The datasets' metrics tables as one, with the dataset as the first column."""
    return pd.concat(
        [table.assign(dataset=dataset) for dataset, table in tables.items()], ignore_index=True
    )[["dataset", *next(iter(tables.values())).columns]]


def scored_methods_only(combined: pd.DataFrame) -> pd.DataFrame:
    """Without the methods that were scored on no dataset (e.g. controls switched off), whose
    rows only say why they were skipped."""
    scored = combined.groupby("method")["value"].transform(lambda values: values.notna().any())
    return combined[scored]


def format_matrix_table(combined: pd.DataFrame, rank_by: str) -> str:
    """Markdown: the overall score of each method on each dataset (mean ± SD over seeds),
    methods ranked by their mean across datasets, controls last."""
    matrix = summarise_matrix(combined, rank_by)
    lines = [
        "| method | role | " + " | ".join(matrix.summaries) + " |",
        "|---|---|" + "---|" * len(matrix.summaries),
    ]
    overall = {
        dataset: summary[summary["metric"] == "overall"].set_index("method")
        for dataset, summary in matrix.summaries.items()
    }
    for method in matrix.order:
        cells = []
        for rows in overall.values():
            if method not in rows.index:
                cells.append("not run")
                continue
            row = rows.loc[method]
            text = "n/a" if np.isnan(row[matrix.column]) else f"{row[matrix.column]:.3f}"
            if row["n_seeds"] > 1 and not np.isnan(row[matrix.spread]):
                text += f" ± {row[matrix.spread]:.3f}"
            cells.append(text)
        lines.append(f"| {method} | {role_of(method)} | " + " | ".join(cells) + " |")
    kind = "scaled" if matrix.column == "scaled_mean" else "raw"
    return (
        f"### Overall score (0.6 bio + 0.4 batch; {kind}) per dataset\n\n"
        + "\n".join(lines)
        + "\n\nEach dataset's full table is in its own data/08_reporting/<dataset>/metrics.md.\n"
    )


def tail(path: Path, n_lines: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(lines[-n_lines:])
