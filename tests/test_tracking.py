"""MLflow tracking: configuration, fail-fast checks, and the run layout of real Kedro runs."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cite_bench.tracking import (
    INCOMPLETE_TAG,
    MlflowTrackingHook,
    TrackingConfig,
    TrackingUnavailableError,
    check_reachable,
    flatten,
    metric_values,
    resolve_config,
    with_retries,
)

from .conftest import run_kedro
from .mlflow_helpers import free_port, runs_of, serving_mlflow

DEMO = {"demo": {"n_cells": 300, "n_genes": 300, "n_proteins": 15, "seed": 0}}
CONF = {"enabled": True, "tracking_uri": "sqlite:///mlflow.db", "artifact_location": "mlartifacts"}


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
    one = pd.DataFrame(
        {"seed": 0, "metric": ["nmi", "ari"], "value": [0.5, 0.4], "scaled": [0.2, 0.9]}
    ).assign(note="", scaled_note="")
    assert metric_values(one) == {"nmi": 0.5, "ari": 0.4, "nmi_scaled": 0.2, "ari_scaled": 0.9}
    two = pd.concat([one, one.assign(seed=1, value=[0.7, 0.4], scaled=[0.4, 0.9])])
    values = metric_values(two)
    assert values["nmi"] == pytest.approx(0.6) and values["ari"] == pytest.approx(0.4)
    assert values["nmi_sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert values["ari_sd"] == 0
    assert values["nmi_scaled"] == pytest.approx(0.3)
    assert values["nmi_scaled_sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))


def test_flatten_nested_parameters():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}, "p.") == {
        "p.a.b": "1",
        "p.a.c.d": "None",
        "p.e": "[1, 2]",
    }


def test_unreachable_server_is_named():
    uri = f"http://127.0.0.1:{free_port()}"
    config = TrackingConfig(True, uri, "cite-bench", None, 2.0)
    with pytest.raises(TrackingUnavailableError, match=uri.replace(".", r"\.")):
        check_reachable(config)


def test_unreachable_server_stops_the_run_before_any_work(project, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
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
    with serving_mlflow(f"sqlite:///{root / 'server.db'}", root) as uri:
        yield uri


def test_store_location_is_the_project_root(tmp_path):
    config = resolve_config({"tracking_uri": "sqlite:///sub/store.db"}, None, tmp_path, {})
    assert Path(config.tracking_uri.removeprefix("sqlite:///")) == tmp_path / "sub/store.db"


# --- reliability: servers, credentials, bugs, outages, concurrent starts ----------------------

SECRET = "s3cr3t-pw"


def test_a_tracking_server_decides_where_artifacts_go(tmp_path):
    server = resolve_config(
        {**CONF, "tracking_uri": "https://mlflow.example.org"}, None, tmp_path, {}
    )
    assert server.artifact_location is None  # not a folder on this machine
    embedded = resolve_config(CONF, None, tmp_path, environ={})
    assert embedded.artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_credentials_of_an_unreachable_server_are_not_printed():
    uri = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailableError) as failure:
        check_reachable(TrackingConfig(True, uri, "cite-bench", None, 2.0))
    message = str(failure.value)
    assert "http://***@127.0.0.1" in message and SECRET not in message
    assert failure.value.__suppress_context__  # the HTTP error, which quotes the URL, is not shown


@pytest.fixture
def project_logging(project: Path) -> Path:
    """Kedro configures logging (replacing the root logger's handlers) when a process first
    bootstraps a project: do it before the test, so that caplog sees the run's records."""
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    return project


def test_a_server_run_prints_no_credentials_and_leaves_artifacts_to_the_server(
    project_logging, mlflow_server, monkeypatch, caplog, capfd
):
    project = project_logging
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.replace("://", f"://alice:{SECRET}@"))
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    with caplog.at_level(logging.INFO, logger="cite_bench"):
        run_kedro(project, pipeline_names=["data_processing"], runtime_params=DEMO)
    printed = caplog.text + "".join(capfd.readouterr())
    assert "MLflow: run" in caplog.text and "http://***@127.0.0.1" in caplog.text
    assert SECRET not in printed
    client, parents, _ = runs_of(mlflow_server)
    experiment = client.get_experiment_by_name("cite-bench")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert [parent.info.status for parent in parents] == ["FINISHED"]


def _statuses(project: Path) -> list[tuple[str, dict]]:
    _, parents, children = runs_of(f"sqlite:///{project / 'mlflow.db'}")
    return [(run.info.status, run.data.tags) for run in [*parents, *children]]


def test_a_bug_in_the_tracking_hook_stops_the_run(project, monkeypatch):
    def bug(*args, **kwargs):
        raise TypeError("a bug in what the hook logs")

    monkeypatch.setattr(MlflowClient, "set_tag", bug)
    with pytest.raises(TypeError, match="a bug in what the hook logs"):
        run_kedro(project, pipeline_names=["data_processing"], runtime_params=DEMO)
    monkeypatch.undo()
    assert (project / "data/03_primary/demo_cells.parquet").is_file()  # saved before logging
    assert [status for status, _ in _statuses(project)] == ["FAILED"]


def test_a_run_whose_logging_failed_is_not_marked_finished(project, monkeypatch):
    def outage(*args, **kwargs):
        raise ConnectionError("tracking store went away")

    monkeypatch.setattr(MlflowClient, "log_batch", outage)
    run_kedro(project, pipeline_names=["data_processing"], runtime_params=DEMO)
    monkeypatch.undo()
    assert (project / "data/03_primary/demo.h5mu").is_file()
    [(status, tags)] = _statuses(project)
    assert status == "FAILED"
    assert tags[INCOMPLETE_TAG] == "could not log: parameters"


def test_a_busy_store_is_retried_and_a_bad_request_is_not(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    waits: list[float] = []
    monkeypatch.setattr("cite_bench.tracking.store.time.sleep", waits.append)
    answers = iter(
        [
            MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE),
            MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE),
            "logged",
        ]
    )

    def busy_twice() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert with_retries(busy_twice, "metrics") == "logged"
    assert len(waits) == 2 and waits[1] > waits[0]

    def bad_request() -> None:
        raise MlflowException("param value changed", error_code=INVALID_PARAMETER_VALUE)

    with pytest.raises(MlflowException, match="param value changed"):
        with_retries(bad_request, "parameters")
    assert len(waits) == 2


def _start_a_tracked_run(project: str, barrier, results) -> None:
    """One `kedro run`'s tracking start and end, as the hook does them (a spawned process)."""
    try:
        hook = MlflowTrackingHook()
        context = SimpleNamespace(
            project_path=project,
            params={},
            config_loader={"tracking": CONF, "globals": {"dataset": "demo"}},
            env="base",
        )
        hook.after_context_created(context)
        from kedro.pipeline import Pipeline

        barrier.wait()
        hook.before_pipeline_run(
            run_params={"run_id": str(os.getpid()), "pipeline_names": ["data_processing"]},
            pipeline=Pipeline([]),
            catalog=None,
        )
        hook.after_pipeline_run()
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {str(exc)[:300]}")


def test_runs_starting_at_once_on_a_fresh_store_all_succeed(tmp_path):
    """Seen before the fix: runs creating a new mlflow.db at the same moment failed with
    "duplicate column name" from MLflow's schema set-up, or on creating the experiment."""
    context = multiprocessing.get_context("spawn")
    n_runs = 4
    barrier, results = context.Barrier(n_runs), context.Queue()
    workers = [
        context.Process(target=_start_a_tracked_run, args=(str(tmp_path), barrier, results))
        for _ in range(n_runs)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(60)
    assert outcomes == ["ok"] * n_runs
    client, parents, _ = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_experiments()) == 2  # "Default" and cite-bench, once
    assert sorted(run.info.status for run in parents) == ["FINISHED"] * n_runs
