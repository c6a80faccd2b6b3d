"""MLflow tracking: configuration, fail-fast checks, and the run layout of real Kedro runs."""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from cite_bench.pipelines.evaluation.nodes import METRICS
from cite_bench.pipelines.modelling.nodes import TRAINERS
from cite_bench.tracking import (
    TrackingConfig,
    TrackingUnavailableError,
    check_reachable,
    flatten,
    metric_values,
    resolve_config,
)

from .conftest import FAST_TRAINING, run_kedro

DEMO = {"demo": {"n_cells": 300, "n_genes": 300, "n_proteins": 15, "seed": 0}}
CONF = {"enabled": True, "tracking_uri": "sqlite:///mlflow.db", "artifact_location": "mlartifacts"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _runs(uri: str) -> tuple[object, list]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cite-bench")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def check_run_layout(uri: str, table: pd.DataFrame) -> None:
    """One parent, one child per model, identical metric keys equal to the metrics table."""
    client, parents, children = _runs(uri)
    assert len(parents) == 1
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["model"] for c in children) == sorted(TRAINERS)
    keys = {frozenset(c.data.metrics) for c in children}
    assert len(keys) == 1, "every model must log the same metric keys"
    assert set(METRICS) | {"training_time_s", "final_training_loss"} <= set(next(iter(keys)))
    for child in children:
        model = child.data.tags["model"]
        assert child.info.status == "FINISHED"
        for tag in ("dataset", "n_cells", "seeds", "git_commit"):
            assert child.data.tags.get(tag), f"{model} run lacks tag {tag}"
        assert child.data.params["seeds"] == child.data.tags["seeds"]
        assert "data_processing.n_top_genes" in child.data.params
        expected = table[table["model"] == model].groupby("metric", sort=False)["value"].mean()
        for metric, value in expected.items():
            logged = child.data.metrics[metric]
            assert (math.isnan(value) and math.isnan(logged)) or logged == pytest.approx(value)
        artifacts = [a.path for a in client.list_artifacts(child.info.run_id)]
        assert f"{model}_embedding.parquet" in artifacts
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"metrics.parquet", "metrics.md", "umap.png", "metrics_summary.png"} <= parent_artifacts


def test_config_precedence_and_embedded_store(tmp_path):
    config = resolve_config(CONF, None, tmp_path, environ={})
    assert config.enabled
    assert config.tracking_uri == f"sqlite:///{tmp_path.as_posix()}/mlflow.db"
    assert config.artifact_location == (tmp_path / "mlartifacts").as_uri()
    from_env = resolve_config(
        CONF,
        None,
        tmp_path,
        environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "CITE_BENCH_TRACKING": "off"},
    )
    assert from_env.tracking_uri == "http://127.0.0.1:9" and not from_env.enabled
    from_params = resolve_config(
        CONF, {"tracking": {"enabled": True}}, tmp_path, environ={"CITE_BENCH_TRACKING": "false"}
    )
    assert from_params.enabled


def test_metrics_are_logged_as_mean_and_spread_over_seeds():
    one = pd.DataFrame({"seed": 0, "metric": ["nmi", "ari"], "value": [0.5, 0.4], "note": ""})
    assert metric_values(one) == {"nmi": 0.5, "ari": 0.4}
    two = pd.concat([one, one.assign(seed=1, value=[0.7, 0.4])])
    values = metric_values(two)
    assert values["nmi"] == pytest.approx(0.6) and values["ari"] == pytest.approx(0.4)
    assert values["nmi_sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert values["ari_sd"] == 0


def test_flatten_nested_parameters():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}, "p.") == {
        "p.a.b": "1",
        "p.a.c.d": "None",
        "p.e": "[1, 2]",
    }


def test_unreachable_server_is_named():
    uri = f"http://127.0.0.1:{_free_port()}"
    config = TrackingConfig(True, uri, "cite-bench", None, 2.0)
    with pytest.raises(TrackingUnavailableError, match=uri.replace(".", r"\.")):
        check_reachable(config)


def test_unreachable_server_stops_the_run_before_any_work(project, monkeypatch):
    uri = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingUnavailableError, match=uri.replace(".", r"\.")):
        run_kedro(project, runtime_params=DEMO)
    written = [p for p in (project / "data").rglob("*") if p.is_file()]
    assert written == []


def test_tracking_can_be_switched_off(project):
    params = {**DEMO, "tracking": {"enabled": False}}
    run_kedro(project, pipeline_names=["data_processing"], runtime_params=params)
    assert (project / "data/03_primary/demo.h5mu").is_file()
    assert not (project / "mlflow.db").exists()


def test_tracking_failures_lose_no_artifact(project, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ConnectionError("tracking store went away")

    monkeypatch.setattr(MlflowClient, "set_tag", broken)
    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    with caplog.at_level(logging.WARNING, logger="cite_bench.tracking"):
        run_kedro(project, pipeline_names=["data_processing"], runtime_params=DEMO)
    assert (project / "data/03_primary/demo.h5mu").is_file()
    assert (project / "data/03_primary/demo_cells.parquet").is_file()
    assert "tracking store went away" in caplog.text
    assert "still in the data catalog" in caplog.text


@pytest.fixture
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend, torn down afterwards."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within 90 s")
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_remote_server_by_configuration(project, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run_kedro(project, runtime_params={**DEMO, **FAST_TRAINING})
    table = pd.read_parquet(project / "data/08_reporting/demo/metrics.parquet")
    assert not (project / "mlflow.db").exists()  # nothing went to the embedded store
    check_run_layout(mlflow_server, table)


def test_store_location_is_the_project_root(tmp_path):
    config = resolve_config({"tracking_uri": "sqlite:///sub/store.db"}, None, tmp_path, {})
    assert Path(config.tracking_uri.removeprefix("sqlite:///")) == tmp_path / "sub/store.db"
