"""The Dask runner: same results and tracking as the sequential runner, resources, failures,
a shared tracking server on PostgreSQL, and a worker killed mid-training."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from kedro.pipeline import Node

from cite_bench.artifacts import METRICS_TABLE
from cite_bench.methods import METHODS
from cite_bench.parameters import Cluster
from cite_bench.runner import DaskRunner, _check_resources, cluster_settings, resources_for
from cite_bench.tracking import MlflowTrackingHook, runs_table_link

from .conftest import QUICK, QUICK_CLI, copy_project, kedro_cli, run_kedro
from .mlflow_helpers import check_run_layout, runs_of, serving_mlflow, serving_postgres

RUNNER = "cite_bench.runner.DaskRunner"


def _node(*tags: str) -> Node:
    return Node(len, "x", "y", name="n", tags=list(tags))


# --- settings and resources --------------------------------------------------------------


def test_runner_params_override_the_cluster_parameters(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    configured = {"scheduler": None, "n_workers": 2, "memory_limit": "4GiB"}
    settings = cluster_settings(configured, {"n_workers": 3, "scheduler": None})
    assert (settings.n_workers, settings.memory_limit, settings.scheduler) == (3, "4GiB", None)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    import dask.config

    dask.config.refresh()
    assert cluster_settings(configured, {}).scheduler == "tcp://10.0.0.1:8786"
    assert cluster_settings(configured, {"scheduler": "tcp://h:1"}).scheduler == "tcp://h:1"
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    dask.config.refresh()
    with pytest.raises(ValueError, match="n_workers"):
        cluster_settings({"n_workers": 0}, {})
    with pytest.raises(ValueError, match="no_such_setting"):
        cluster_settings({"no_such_setting": 1}, {})


def test_training_asks_for_a_gpu_and_the_rest_for_what_default_says():
    settings = Cluster(resources={"gpu": {"GPU": 1}, "modelling": {"MEMORY": 8e9}})
    assert resources_for(_node("modelling", "totalvi", "gpu"), settings) == {
        "GPU": 1,
        "MEMORY": 8e9,
    }
    assert resources_for(_node("modelling", "mofa"), settings) == {"MEMORY": 8e9}
    assert resources_for(_node("evaluation"), settings) is None
    with_default = Cluster(resources={"gpu": {"GPU": 1}, "default": {"CPU": 1}})
    assert resources_for(_node("evaluation"), with_default) == {"CPU": 1}


def test_gpu_capable_training_carries_the_gpu_tag():
    from cite_bench.methods import METHODS
    from cite_bench.pipelines.modelling.pipeline import create_pipeline

    tagged = {node.name for node in create_pipeline().nodes if "gpu" in node.tags}
    declared = {f"modelling.{name}.train" for name, method in METHODS.items() if method.uses_gpu}
    assert tagged == declared
    assert {"modelling.totalvi.train", "modelling.multigrate.train"} <= tagged
    assert "modelling.mofa.train" not in tagged and "modelling.pca_rna.train" not in tagged


def test_a_resource_no_worker_offers_is_refused_before_any_work():
    from kedro.pipeline import Pipeline

    class FakeClient:
        def scheduler_info(self, n_workers: int = -1) -> dict:
            return {"workers": {"tcp://a": {"resources": {"CPU": 1}}}}

    settings = Cluster(resources={"gpu": {"GPU": 1}})
    with pytest.raises(RuntimeError, match=r"'n' asks for worker resource GPU=1.*--resources"):
        _check_resources(FakeClient(), settings, Pipeline([_node("gpu")]))
    _check_resources(FakeClient(), Cluster(resources={"x": {"CPU": 1}}), Pipeline([_node("x")]))


# --- hooks on the workers ------------------------------------------------------------------


# The tracking hook's worker copies and reports: tests/test_tracking_hook.py (in-memory store).


def test_mudata_results_travel_between_workers(small_mudata):
    from cite_bench.runner import _picklable

    travelled = pickle.loads(pickle.dumps(_picklable({"mdata": small_mudata.copy()})))["mdata"]
    assert travelled.shape == small_mudata.shape
    assert list(travelled.mod) == list(small_mudata.mod)


# --- end to end ----------------------------------------------------------------------------


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["method", "seed", "metric"]).reset_index(drop=True)


# Dask's worker processes run with one BLAS/OpenMP thread each (distributed.nanny's
# pre-spawn-environ); the sequential run it is compared with does the same, since MOFA's
# embedding moves in the 8th digit with the thread count, and kBET amplifies that at 600 cells.
# totalVI's embedding differed by up to 4e-7 between two processes with the same seed and one
# thread each (float32 sums in another order); everything else was identical.
FLOAT32_ROUNDING = 1e-5
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def test_dask_run_matches_the_sequential_run_survives_a_killed_worker_and_logs_to_a_server(
    tmp_path,
):
    """The same demo run twice: sequential with the embedded SQLite store, and on a LocalCluster
    of two worker processes logging at once to `mlflow server --serve-artifacts` on PostgreSQL,
    where the worker training totalVI is killed (SIGKILL) mid-training. The scheduler reruns its
    tasks on the restarted worker; the same seeds give the same embeddings and metrics table;
    MLflow holds the same child runs with the same params and metrics, none lost or doubled,
    all FINISHED; every artifact is under the server's artifact root and none in the client's
    checkout."""
    from distributed import Client, LocalCluster

    sequential = copy_project(tmp_path / "sequential")
    on_dask = copy_project(tmp_path / "on_dask")
    run = kedro_cli(sequential, "run", "--params", QUICK_CLI, env=ONE_BLAS_THREAD)
    assert run.returncode == 0, run.stderr[-3000:]
    table = "data/08_reporting/demo/metrics.parquet"
    with (
        serving_postgres() as database,
        serving_mlflow(database, tmp_path / "server") as server,
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        command = [
            *(sys.executable, "-m", "kedro", "run", "--runner", RUNNER),
            *("--runner-params", f"scheduler={cluster.scheduler_address}"),
            *("--params", QUICK_CLI),
        ]
        log_path = tmp_path / "dask_run.log"
        with log_path.open("w") as output:
            distributed = subprocess.Popen(
                command,
                cwd=on_dask,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "KEDRO_DISABLE_TELEMETRY": "true",
                    "COLUMNS": "250",
                    "MLFLOW_TRACKING_URI": server,
                },
            )
            killed = _kill_the_worker_training(client, "modelling.totalvi.train", distributed)
            assert distributed.wait(timeout=900) == 0, log_path.read_text()[-3000:]
        assert killed, "no worker was seen training totalVI"
        tracking, server_parents, server_children = runs_of(server)
        check_run_layout(server, pd.read_parquet(on_dask / table))
        experiment = tracking.get_experiment(server_parents[0].info.experiment_id)
    _, local_parents, local_children = runs_of(f"sqlite:///{sequential / 'mlflow.db'}")

    for model in METHODS:
        embedding = f"data/07_model_output/demo/{model}_embedding.parquet"
        pd.testing.assert_frame_equal(
            pd.read_parquet(on_dask / embedding),
            pd.read_parquet(sequential / embedding),
            rtol=0,
            atol=FLOAT32_ROUNDING,
        )
    pd.testing.assert_frame_equal(
        _comparable(pd.read_parquet(on_dask / table)),
        _comparable(pd.read_parquet(sequential / table)),
        rtol=0,
        atol=FLOAT32_ROUNDING,
    )
    summary = json.loads(
        (on_dask / "data/07_model_output/demo/totalvi_training_summary.json").read_text()
    )
    assert summary["seeds"] == [0]
    assert summary["versions"]["scvi-tools"] and summary["versions"]["torch"]
    log = log_path.read_text()
    assert "Completed node: modelling.totalvi.train" in log
    workers = set(re.findall(r"Completed node: \S+ \(on (tcp://[\d.:]+)\)", log))
    assert len(workers) >= 2, "worker processes side by side ran the nodes"

    assert len(server_parents) == len(local_parents) == 1
    assert server_parents[0].info.status == "FINISHED"
    by_model = {run.data.tags["model"]: run for run in local_children}
    assert sorted(run.data.tags["model"] for run in server_children) == sorted(by_model)
    for run in server_children:
        local = by_model[run.data.tags["model"]]
        assert run.data.params == local.data.params
        assert run.data.metrics.keys() == local.data.metrics.keys()
        for key, value in run.data.metrics.items():
            if key != "training_time_s":
                expected = local.data.metrics[key]
                assert value == pytest.approx(expected, abs=FLOAT32_ROUNDING, nan_ok=True), key

    stored = {path.name for path in (tmp_path / "server" / "artifacts").rglob("*.*")}
    expected = {"metrics.md", "metrics.parquet", "umap.png", "metrics_summary.png"}
    expected |= {f"{run.data.tags['model']}_embedding.parquet" for run in server_children}
    assert expected <= stored
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    leftovers = {"mlruns", "mlartifacts", "mlflow.db"} & {path.name for path in on_dask.iterdir()}
    assert not leftovers, f"tracking wrote {leftovers} into the client's checkout"


def test_the_experiment_opens_on_its_runs_table_in_a_browser(tmp_path, caplog):
    """The README's steps in headless Chromium against a tracking server: the link a run prints
    opens the runs table (not MLflow 3's GenAI overview), the parent run expands to its child
    runs, `nmi` can be shown as a column, and Compare opens on the ticked child runs."""
    sync_playwright = _browser_or_skip()
    with serving_mlflow(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server") as server:
        with caplog.at_level(logging.INFO, logger="cite_bench.tracking"):
            _track_a_scored_run(tmp_path, server)
        client, parents, _ = runs_of(server)
        experiment = client.get_experiment(parents[0].info.experiment_id)
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        link = runs_table_link(server, experiment.experiment_id)
        assert f"the runs table: {link}" in caplog.text
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            # Wide enough for the runs table and MLflow's assistant panel beside it.
            page = browser.new_page(viewport={"width": 2400, "height": 1000})
            page.goto(link)
            parent = page.locator("[role=row]", has_text=parents[0].info.run_name)
            parent.wait_for(timeout=60_000)
            assert page.get_by_text("Token usage").count() == 0  # not the GenAI overview
            parent.get_by_role("button").first.click()
            for model in ("totalvi", "mofa", "multigrate"):
                page.get_by_text(model, exact=True).wait_for(timeout=20_000)
            page.get_by_role("button", name="Columns", exact=True).click()
            page.get_by_placeholder("Search").last.fill("nmi")
            page.get_by_text("nmi", exact=True).first.click()
            page.keyboard.press("Escape")
            header = page.get_by_role("columnheader", name="nmi").first
            header.wait_for(timeout=20_000)
            box = header.bounding_box()
            assert box is not None and box["x"] + box["width"] <= 2400  # on screen
            totalvi_nmi = f"{NMI[list(METHODS).index('totalvi')]:g}"
            page.get_by_text(totalvi_nmi, exact=True).first.wait_for(timeout=20_000)
            page.screenshot(path=tmp_path / "runs_table.png")
            for model in ("totalvi", "mofa", "multigrate"):
                row = page.locator("[role=row]", has=page.get_by_text(model, exact=True))
                row.first.get_by_role("checkbox").click()
            page.get_by_role("button", name="Compare").click()
            page.get_by_text("Comparing 3 Runs").wait_for(timeout=30_000)
            page.get_by_text("Metrics", exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=tmp_path / "compare.png")
            browser.close()


NMI = [round(0.5 + index / 100, 2) for index in range(len(METHODS))]


def _track_a_scored_run(project: Path, tracking_uri: str) -> None:
    """A run's tracking, as the hook does it, for a finished table of scores (no training)."""
    from types import SimpleNamespace

    from cite_bench.pipelines.modelling.pipeline import create_pipeline

    hook = MlflowTrackingHook()
    hook.after_context_created(
        SimpleNamespace(
            project_path=project,
            params={},
            config_loader={
                "tracking": {"tracking_uri": tracking_uri},
                "globals": {"dataset": "demo"},
            },
            env="base",
        )
    )
    hook.before_pipeline_run(
        run_params={"run_id": "browser", "pipeline_names": ["__default__"]},
        pipeline=create_pipeline(),
        catalog=None,
    )
    rows = [
        {"method": name, "role": method.role, "seed": 0, "metric": metric, "value": value,
         "scaled": value, "note": "", "scaled_note": ""}
        for (name, method), nmi in zip(METHODS.items(), NMI, strict=False)
        for metric, value in (("nmi", nmi), ("overall", nmi - 0.1))
    ]  # fmt: skip
    hook.after_dataset_saved(METRICS_TABLE, pd.DataFrame(rows))
    hook.after_pipeline_run()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]


def _browser_or_skip():
    """Playwright driving Debian's Chromium; .ci/run installs both, elsewhere the test skips."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not Path(CHROMIUM).is_file():
        message = "needs playwright (pip) and Debian's chromium at /usr/bin/chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


def test_a_failing_node_stops_the_dask_run_with_its_name_and_the_rest_resumes(project):
    """The node's own error, with its name; no MLflow run left RUNNING; what was written stays
    and `--only-missing-outputs` goes on from there."""
    broken = copy.deepcopy(QUICK)
    broken["modelling"] = {
        "multigrate": {"hyperparameters": {"model_kwargs": {"no_such_option": 1}}}
    }
    pipelines = ["data_processing", "modelling"]
    with pytest.raises(TypeError, match="no_such_option") as failure:
        run_kedro(
            project, runtime_params=broken, runner=DaskRunner(n_workers=2), pipeline_names=pipelines
        )
    assert "Kedro node 'modelling.multigrate.train' failed" in "".join(failure.value.__notes__)
    _, parents, children = runs_of(f"sqlite:///{project / 'mlflow.db'}")
    assert {run.info.status for run in [*parents, *children]} == {"FAILED"}
    mudata = project / "data/03_primary/demo.h5mu"
    written = mudata.stat().st_mtime_ns  # finished before the failure
    run_kedro(
        project,
        runtime_params=QUICK,
        runner=DaskRunner(n_workers=2),
        pipeline_names=pipelines,
        only_missing_outputs=True,
    )
    assert mudata.stat().st_mtime_ns == written  # not preprocessed again
    for model in ("mofa", "totalvi", "multigrate", "pca_rna"):
        assert (project / f"data/07_model_output/demo/{model}_embedding.parquet").is_file()


def _kill_the_worker_training(client, node_name: str, run: subprocess.Popen) -> bool:
    """Wait until the scheduler has ``node_name`` running on a worker, let it train a moment,
    SIGKILL that worker's process. (The scheduler is asked, not the worker: a worker busy in
    Python code answers only when its task is done.)"""
    pids = client.run(os.getpid)  # while the workers are idle
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and run.poll() is None:
        for address, keys in client.processing().items():
            if any(str(key).startswith(node_name) for key in keys):
                time.sleep(1)
                os.kill(pids[address], signal.SIGKILL)
                return True
        time.sleep(0.1)
    return False
