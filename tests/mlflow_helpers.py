"""Real tracking servers for tests (MLflow on SQLite or PostgreSQL, on localhost ports) and the
checks of a run's layout in MLflow that several test modules share."""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from cite_bench.methods import METHODS
from cite_bench.metrics import AGGREGATES


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runs_of(uri: str, experiment_name: str = "cite-bench") -> tuple[MlflowClient, list, list]:
    """The client, the parent runs and the child runs of the experiment."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def check_run_layout(uri: str, table: pd.DataFrame) -> None:
    """One parent, one child per model, identical metric keys equal to the metrics table."""
    client, parents, children = runs_of(uri)
    assert len(parents) == 1
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["model"] for c in children) == sorted(METHODS)
    assert {c.data.tags["model"]: c.data.tags["role"] for c in children} == {
        name: method.role for name, method in METHODS.items()
    }
    trained = [c for c in children if METHODS[c.data.tags["model"]].role != "control"]
    keys = {frozenset(c.data.metrics) for c in trained}
    assert len(keys) == 1, "every method must log the same metric keys"
    scores = set(table["metric"])  # the selected metrics and the aggregates
    assert set(AGGREGATES) <= scores
    expected_keys = scores | {f"{key}_scaled" for key in scores}
    assert expected_keys | {"training_time_s", "final_training_loss"} <= set(next(iter(keys)))
    for child in children:
        model = child.data.tags["model"]
        assert child.info.status == "FINISHED"
        for tag in ("dataset", "n_cells", "seeds", "git_commit"):
            assert child.data.tags.get(tag), f"{model} run lacks tag {tag}"
        assert child.data.params["seeds"] == child.data.tags["seeds"]
        assert "data_processing.n_top_genes" in child.data.params
        rows = table[table["method"] == model].groupby("metric", sort=False)
        for suffix, column in (("", "value"), ("_scaled", "scaled")):
            for metric, value in rows[column].mean().items():
                logged = child.data.metrics[metric + suffix]
                assert (math.isnan(value) and math.isnan(logged)) or logged == pytest.approx(value)
        artifacts = [a.path for a in client.list_artifacts(child.info.run_id)]
        assert f"{model}_embedding.parquet" in artifacts
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"metrics.parquet", "metrics.md", "umap.png", "metrics_summary.png"} <= parent_artifacts


def _wait_until_healthy(uri: str, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{uri}/health", timeout=1).ok:
                return
        except requests.RequestException:
            time.sleep(0.5)
    pytest.fail(f"{what} did not start within 90 s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def _stopped_at_exit(process: subprocess.Popen) -> Iterator[None]:
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def serving_mlflow(backend_store_uri: str, root: Path) -> Iterator[str]:
    """`mlflow server --serve-artifacts` on a free localhost port: runs in the backend store,
    artifacts under ``root/artifacts`` (the server's disk, never the client's)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "2", "--backend-store-uri", backend_store_uri),
        *("--serve-artifacts", "--artifacts-destination", str(root / "artifacts")),
    ]
    log_path = root / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        with _stopped_at_exit(server):
            _wait_until_healthy(uri, server, log_path, "mlflow server")
            yield uri


def postgres_binaries() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them off PATH)."""
    found = shutil.which("initdb") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None
    )
    return Path(found).resolve().parent if found else None


@contextlib.contextmanager
def serving_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free localhost port with an empty database `mlflow`;
    yields its SQLAlchemy URI. As root, the server runs as the `postgres` user (it refuses
    root). Skips where PostgreSQL is not installed, except in CI (.ci/run installs it)."""
    binaries = postgres_binaries()
    if binaries is None:
        message = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="cite-bench-postgres-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    subprocess.run(
        [*as_postgres, str(binaries / "initdb"), "-D", str(data), "-U", "mlflow", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    log_path = folder / "server.log"
    command = [
        *as_postgres,
        *(str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder)),
        *("-c", "listen_addresses=127.0.0.1"),
    ]
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            with _stopped_at_exit(server):
                _create_database(port, server, log_path)
                yield f"postgresql+psycopg://mlflow@127.0.0.1:{port}/mlflow"
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _create_database(port: int, server: subprocess.Popen, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            pytest.fail(f"postgres exited: {log.read_text()[-2000:]}")
        try:
            with psycopg.connect(
                f"postgresql://mlflow@127.0.0.1:{port}/postgres", autocommit=True
            ) as connection:
                connection.execute("CREATE DATABASE mlflow")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"postgres did not start within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
