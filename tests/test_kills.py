"""Real kills (SIGKILL, not exceptions): of `kedro run` while a model trains, and of
`kedro benchmark` between sizes. Nothing finished is lost or redone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from cite_bench.locks import RunLockedError, run_lock_path

from .conftest import FAST_TRAINING, run_kedro

DEMO = {"demo": {"n_cells": 250, "n_genes": 250, "n_proteins": 12, "seed": 0}}
PARAMS = {**DEMO, **FAST_TRAINING, "tracking": {"enabled": False}}
TRAINING = re.compile(r"Training (\S+) with seed \d+")
# Models that train long enough (seconds) to be killed while they do.
SLOW = {"mofa", "totalvi", "multigrate"}


def _command_line_params(params: dict, prefix: str = "") -> list[str]:
    """``--params`` items for a nested dictionary (Kedro splits the option at commas)."""
    items = []
    for key, value in params.items():
        if isinstance(value, dict):
            items += _command_line_params(value, f"{prefix}{key}.")
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            items.append(f"{prefix}{key}={text}")
    return items


class _Output:
    """Collects a process's output lines as they come."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _kedro(project: Path, *arguments: str) -> subprocess.Popen:
    # Wide lines: the log is matched line by line.
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "500"}
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "kedro", *arguments],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill reaches its workers too
    )


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL, as the OOM killer or `kill -9` would: no handler, no cleanup."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def _artifacts(project: Path, model: str) -> list[Path]:
    output = project / "data/07_model_output/demo"
    models = project / "data/06_models/demo" / model
    return [
        output / f"{model}_training_summary.json",
        output / f"{model}_embedding.parquet",
        *sorted(path for path in models.rglob("*") if path.is_file()),
    ]


def _models() -> list[str]:
    from cite_bench.pipelines.modelling.pipeline import create_pipeline

    outputs = create_pipeline().all_outputs()
    return sorted(name.split(".")[1] for name in outputs if name.endswith(".training_summary"))


@pytest.mark.slow
def test_sigkill_during_training_then_only_missing_outputs(project):
    run_kedro(project, pipeline_names=["data_processing"], runtime_params=PARAMS)
    mudata = project / "data/03_primary/demo.h5mu"
    before = mudata.stat().st_mtime_ns
    params = ",".join(_command_line_params(PARAMS))
    first = _kedro(project, "run", "--pipeline", "modelling", "--params", params)
    output = _Output(first)
    summaries = project / "data/07_model_output/demo"
    refused = False
    deadline = time.monotonic() + 300
    try:
        while True:
            assert first.poll() is None, "the run ended before it could be killed:\n" + output.text
            assert time.monotonic() < deadline, output.text
            training = TRAINING.findall(output.text)
            if training and not refused:
                # Meanwhile, a run with other parameters would replace its input under it.
                other = {**PARAMS, "demo": {**DEMO["demo"], "n_cells": 200}}
                with pytest.raises(RunLockedError, match=rf"pid {first.pid}\b"):
                    run_kedro(project, pipeline_names=["data_processing"], runtime_params=other)
                assert mudata.stat().st_mtime_ns == before
                refused = True
            finished = list(summaries.glob("*_training_summary.json"))
            # A slow model after a finished one is training: let it train a moment, then kill.
            if finished and len(training) > len(finished) and training[-1] in SLOW:
                time.sleep(0.2)
                break
            time.sleep(0.05)
    finally:
        _kill(first)
    assert first.returncode == -signal.SIGKILL
    finished_models = sorted(
        path.name.removesuffix("_training_summary.json")
        for path in summaries.glob("*_training_summary.json")
    )
    assert finished_models and set(finished_models) < set(_models()), finished_models
    stamps = {
        path: path.stat().st_mtime_ns
        for model in finished_models
        for path in _artifacts(project, model)
    }
    assert run_lock_path(project, "demo").exists()  # what the kill left

    second = _kedro(
        project, "run", "--pipeline", "modelling", "--only-missing-outputs", "--params", params
    )
    rerun = _Output(second)
    assert second.wait(600) == 0, rerun.text[-5000:]
    rerun._thread.join(10)
    assert "Taking over the lock" in rerun.text and f"pid {first.pid}" in rerun.text
    retrained = set(TRAINING.findall(rerun.text))
    assert not retrained & set(finished_models), retrained
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was written again"
    for model in _models():
        assert all(path.is_file() for path in _artifacts(project, model)[:2]), model
        assert any((project / "data/06_models/demo" / model).rglob("model_class.json")), model
    leftovers = [
        path
        for path in (project / "data").rglob(".*")
        if ".tmp-" in path.name or ".old-" in path.name
    ]
    assert leftovers == []
    assert not run_lock_path(project, "demo").exists()


def test_benchmark_keeps_the_sizes_it_finished_when_killed(project):
    """Results are written after each size: killed during the second size, the first's stay."""
    output = project / "data/08_reporting/benchmark"
    arguments = ["--sizes", "300 20000", "--models", "pca_rna", "--reference-up-to", "0"]
    process = _kedro(project, "benchmark", *arguments, "--output", str(output))
    log = _Output(process)
    table = output / "benchmark.parquet"
    deadline = time.monotonic() + 300
    try:
        while not table.exists():
            assert process.poll() is None, "the benchmark ended early:\n" + log.text[-3000:]
            assert time.monotonic() < deadline, log.text[-3000:]
            time.sleep(0.2)
    finally:
        _kill(process)
    assert process.returncode == -signal.SIGKILL  # killed during the 20,000-cell size
    results = pd.read_parquet(table)
    assert set(results["n_cells"]) == {300}
    assert {"data", "preprocessing", "train pca_rna"} <= set(results["stage"])
    assert "| 300 |" in (output / "benchmark.md").read_text()
