"""MLflow tracking through a Kedro hook, so that nodes stay free of tracking code.

Each ``kedro run`` is one parent run; each model it touches is a child run tagged with model,
dataset, number of cells, seeds and git commit, carrying the model's hyperparameters and the
preprocessing parameters as params and the evaluation metrics under the same keys for every
model (the mean over seeds, and ``<metric>_sd`` with several seeds), so that selecting the
child runs and pressing Compare in the MLflow UI gives the reference table.

A project hook rather than kedro-mlflow: kedro-mlflow logs one flat run per ``kedro run``,
while a benchmark needs one comparable run per model.

Tracking never costs an artifact: everything is logged after the catalog has saved it, and an
outage of the tracking store (unreachable, overloaded, SQLite busy: retried first) is reported
as a warning while the run goes on; the runs whose logging failed end as FAILED with a
``logging_incomplete`` tag, never as FINISHED. Any other error in the hook is a bug and stops
the run. An unreachable tracking server stops the run before any work starts. Tracking URIs are
printed with their credentials masked.
"""

from __future__ import annotations

import logging
import math
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline

from cite_bench.locks import holding
from cite_bench.methods import role_of
from cite_bench.redaction import redact, redact_error
from cite_bench.seeds import parse_seeds

logger = logging.getLogger(__name__)

MODELLING = "modelling"
EXTERNAL_NODE = "score_external_embeddings"
EVALUATION = "evaluation"
# Environment switches, above the configuration file and below `--params tracking.*`.
FIGURES = {"umap_figure": "umap.png", "metrics_summary_figure": "metrics_summary.png"}
URI_VARIABLE = "MLFLOW_TRACKING_URI"
ENABLED_VARIABLE = "CITE_BENCH_TRACKING"
# MLflow error codes of an unavailable store (not of a bad request); the first three are also
# worth retrying at once (SQLite's "database is locked" arrives as TEMPORARILY_UNAVAILABLE).
RETRY_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})
OUTAGE_CODES = RETRY_CODES | {"INTERNAL_ERROR", "DEADLINE_EXCEEDED", "IO_ERROR"}
RETRIES = 6
INCOMPLETE_TAG = "logging_incomplete"
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, token usage); marked
# as model training, the benchmark's experiment opens on its runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached; raised before any node runs."""


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool
    tracking_uri: str
    experiment_name: str
    artifact_location: str | None
    connect_timeout_s: float


def resolve_config(
    conf: Mapping[str, Any],
    runtime_params: Mapping[str, Any] | None,
    project_path: Path,
    environ: Mapping[str, str] = os.environ,
) -> TrackingConfig:
    """Merge ``conf/<env>/tracking.yml``, the environment and ``--params tracking.*``.

    A relative ``sqlite:///`` store and the artifact folder are anchored at the project root,
    so a run logs to the same embedded store wherever it is started from. With a tracking
    server (``http(s)://``) the server decides where artifacts go: a folder on this machine
    would be meaningless to it and to everyone else reading the runs.
    """
    settings = dict(conf)
    if URI_VARIABLE in environ:
        settings["tracking_uri"] = environ[URI_VARIABLE]
    if ENABLED_VARIABLE in environ:
        settings["enabled"] = environ[ENABLED_VARIABLE].strip().lower() not in {
            "0",
            "false",
            "no",
            "off",
        }
    settings.update(dict((runtime_params or {}).get("tracking") or {}))

    uri = str(settings.get("tracking_uri", "sqlite:///mlflow.db"))
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(project_path / uri.removeprefix('sqlite:///')).as_posix()}"
    artifact_location = settings.get("artifact_location")
    if is_server(uri):
        artifact_location = None
    elif artifact_location and "://" not in str(artifact_location):
        artifact_location = (project_path / str(artifact_location)).resolve().as_uri()
    return TrackingConfig(
        enabled=bool(settings.get("enabled", True)),
        tracking_uri=uri,
        experiment_name=str(settings.get("experiment_name", "cite-bench")),
        artifact_location=artifact_location,
        connect_timeout_s=float(settings.get("connect_timeout_s", 10)),
    )


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_reachable(config: TrackingConfig) -> None:
    """Fail fast, naming the URI (credentials masked), when a tracking server does not answer."""
    if not is_server(config.tracking_uri):
        return
    import requests

    url = config.tracking_uri.rstrip("/") + "/health"
    try:
        response = requests.get(url, timeout=config.connect_timeout_s)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise TrackingUnavailableError(
            f"MLflow tracking server {redact(config.tracking_uri)} is unreachable "
            f"({redact_error(exc)}). Start it, point MLFLOW_TRACKING_URI elsewhere, or run "
            "without tracking (`--params tracking.enabled=false` or CITE_BENCH_TRACKING=false)."
        ) from None


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says the tracking store is unavailable (network, server, disk, a busy
    SQLite file), as opposed to a bug in what is logged, which must not be swallowed."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in OUTAGE_CODES
    # requests' errors are OSErrors too.
    return isinstance(error, OSError | sqlalchemy.exc.OperationalError)


def _is_retryable(error: BaseException) -> bool:
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in RETRY_CODES
    return isinstance(error, sqlalchemy.exc.OperationalError)


def with_retries(action: Callable[[], Any], what: str, attempts: int = RETRIES) -> Any:
    """``action()``, retried with growing, jittered waits while the store is busy (SQLite
    allows one writer at a time: two runs logging at once can meet "database is locked")."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts or not _is_retryable(exc):
                raise
            delay = 0.2 * 2 ** (attempt - 1) * random.uniform(1.0, 1.5)
            logger.info("MLflow: %s: %s; retrying in %.1f s.", what, redact_error(exc), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def open_experiment(config: TrackingConfig) -> tuple[Any, str]:
    """A client and the experiment's id, creating the experiment (and a new SQLite store's
    tables) if needed; safe when several runs start at once.

    MLflow creates a new SQLite store's tables when a client first touches it, and runs that
    do so at the same moment fail ("duplicate column"); so, for a SQLite store, the first
    touch is serialised by a lock beside the file. Two runs creating the same experiment on a
    server: the second finds it created.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def get_or_create() -> tuple[Any, str]:
        client = MlflowClient(tracking_uri=config.tracking_uri)
        experiment = client.get_experiment_by_name(config.experiment_name)
        if experiment is not None:
            for key, value in EXPERIMENT_KIND.items():
                if key not in experiment.tags:  # made by an older version, or by hand
                    client.set_experiment_tag(experiment.experiment_id, key, value)
            return client, experiment.experiment_id
        try:
            return client, client.create_experiment(
                config.experiment_name,
                artifact_location=config.artifact_location,
                tags=EXPERIMENT_KIND,
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(config.experiment_name)
        if experiment is None:
            raise TrackingUnavailableError(
                f"Experiment '{config.experiment_name}' both exists and does not."
            )
        return client, experiment.experiment_id

    database = _sqlite_path(config.tracking_uri)
    if database is None:
        return with_retries(get_or_create, "opening the experiment")
    with holding(database.with_name(database.name + ".lock"), timeout_s=300):
        return with_retries(get_or_create, "opening the experiment")


def runs_table_link(server: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI: MLflow 3.17's UI opens every experiment in
    the GenAI view unless the address asks for the model-training one."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", maxsplit=1)[0]
    return None if path in ("", ":memory:") else Path(path)


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


def metric_values(metrics: pd.DataFrame) -> dict[str, float]:
    """A method's rows of the metrics table as MLflow metrics: the mean over seeds under the
    metric's key, the scaled mean under ``<key>_scaled``, and the standard deviations under
    ``<key>_sd`` and ``<key>_scaled_sd`` when there are several seeds."""
    from cite_bench.pipelines.evaluation.nodes import summarise_over_seeds

    summary = summarise_over_seeds(metrics.assign(method=""))
    values = dict(zip(summary["metric"], summary["mean"], strict=True))
    values |= dict(zip(summary["metric"] + "_scaled", summary["scaled_mean"], strict=True))
    if (summary["n_seeds"] > 1).any():
        values |= dict(zip(summary["metric"] + "_sd", summary["sd"], strict=True))
        values |= dict(zip(summary["metric"] + "_scaled_sd", summary["scaled_sd"], strict=True))
    return values


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


class MlflowTrackingHook:
    """Parent run per ``kedro run``, child run per model; see the module docstring."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._client: Any = None
        self._tracking_uri: str | None = None
        self._parent: str | None = None
        self._children: dict[str, str] = {}
        # Datasets this run's nodes save: logged when saved, not again when a later node loads them.
        self._produced: set[str] = set()
        # What could not be logged (store outages), by run id.
        self._failed: dict[str, list[str]] = {}

    # --- under cite_bench.runner.DaskRunner: node and dataset hooks run on the workers ------

    def worker_hooks(self) -> MlflowTrackingHook:
        """A copy for a Dask worker: the same runs, its own client, an empty failure list."""
        copy = MlflowTrackingHook.__new__(MlflowTrackingHook)
        copy.__dict__.update(self.__dict__)
        copy._children = dict(self._children)
        copy._failed = {}
        return copy

    def worker_report(self) -> dict[str, list[str]]:
        """What the copy could not log, by run id; cleared for the copy's next node."""
        report, self._failed = self._failed, {}
        return report

    def merge_worker_report(self, report: Mapping[str, list[str]]) -> None:
        for run_id, whats in report.items():
            self._failed.setdefault(run_id, []).extend(whats)

    def __getstate__(self) -> dict[str, Any]:
        # An MLflow client holds connections: a worker makes its own from the URI.
        return {**self.__dict__, "_client": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._tracking_uri is not None and self._parent is not None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self._tracking_uri)

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = Path(context.project_path)
        self._params = context.params
        try:
            self._conf = context.config_loader["tracking"]
        except KeyError:
            self._conf = {}
        try:
            globals_ = context.config_loader["globals"]
        except KeyError:
            globals_ = {}
        self._dataset = globals_.get("dataset", "unknown")
        self._external = dict(globals_.get("external") or {})
        self._env = context.env

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any
    ) -> None:
        self._reset()
        config = resolve_config(self._conf, run_params.get("runtime_params"), self._project_path)
        if not config.enabled:
            logger.info("MLflow tracking is off for this run.")
            return
        check_reachable(config)
        # Do not let a server that goes away later stall the run for minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(config.connect_timeout_s)))
        if redact(config.tracking_uri) != config.tracking_uri:
            # MLflow prints "View run at <tracking URI>/..." when a run ends, credentials and all.
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        client, experiment_id = open_experiment(config)
        self._tracking_uri = config.tracking_uri
        # With --only-missing-outputs, what exists already is loaded, not saved.
        resuming = bool(run_params.get("only_missing_outputs"))
        self._produced = {
            name for name in pipeline.all_outputs() if not (resuming and catalog.exists(name))
        }
        try:
            self._start_runs(client, experiment_id, run_params, pipeline)
        except BaseException:
            # Runs already created must not stay RUNNING for a run that never started.
            self._finish("FAILED")
            raise
        logger.info(
            "MLflow: run %s in experiment '%s' at %s",
            self._parent,
            config.experiment_name,
            redact(config.tracking_uri),
        )
        server = redact(config.tracking_uri) if is_server(config.tracking_uri) else None
        logger.info(
            "MLflow: the runs table: %s%s",
            runs_table_link(server or "http://127.0.0.1:5000", experiment_id),
            "" if server else f" (after `mlflow ui --backend-store-uri {config.tracking_uri}`)",
        )

    def _start_runs(
        self, client: Any, experiment_id: str, run_params: dict[str, Any], pipeline: Pipeline
    ) -> None:
        commit = git_commit(self._project_path)
        shared_tags = {
            "dataset": str(self._dataset),
            "git_commit": commit,
            "kedro_env": str(self._env),
            "kedro_session": str(run_params.get("run_id")),
        }
        pipelines = ",".join(run_params.get("pipeline_names") or ["__default__"])
        parent = with_retries(
            lambda: client.create_run(
                experiment_id,
                run_name=f"{self._dataset} {pipelines}",
                tags={**shared_tags, "pipelines": pipelines},
            ),
            "creating the parent run",
        )
        self._client, self._parent = client, parent.info.run_id
        shared_params = {
            **flatten(self._params.get("columns", {}), "columns."),
            **flatten(self._params.get("data_processing", {}), "data_processing."),
            **flatten(self._params.get(EVALUATION, {}), "evaluation."),
        }
        seeds = " ".join(str(seed) for seed in parse_seeds(self._params.get("seeds", [0])))
        shared_params["seeds"] = seeds
        self._log_params(self._parent, shared_params)
        for model in [*models_in(pipeline), *self._external_methods(run_params, pipeline)]:
            hyperparameters = (
                self._params.get(MODELLING, {}).get(model, {}).get("hyperparameters", {})
            )
            tags = {
                **shared_tags,
                "mlflow.parentRunId": self._parent,
                "model": model,
                "role": role_of(model),
                "seeds": seeds,
            }
            child = with_retries(
                lambda name=model, tags=tags: client.create_run(
                    experiment_id, run_name=name, tags=tags
                ),
                f"creating the {model} run",
            )
            self._children[model] = child.info.run_id
            self._log_params(
                child.info.run_id, {**shared_params, **flatten(hyperparameters, "model.")}
            )

    def _external_methods(self, run_params: dict[str, Any], pipeline: Pipeline) -> list[str]:
        """Users' own methods scored in this run (``external``), each a child run of its own."""
        if EXTERNAL_NODE not in {node.name for node in pipeline.nodes}:
            return []
        runtime = (run_params.get("runtime_params") or {}).get("external")
        return list(runtime or self._external)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any) -> None:
        if dataset_name == "external_embeddings":
            # What was scored, exactly: the file and its checksum.
            for name, item in data.items():
                if self._client is not None and name in self._children:
                    run_id = self._children[name]
                    self._safely(
                        f"{name} file",
                        lambda r=run_id, i=item: (
                            self._client.set_tag(r, "sha256", i.sha256),
                            self._client.set_tag(r, "source_file", i.path),
                        ),
                        run_id,
                    )
        if dataset_name == "cell_metadata":
            self._tag_cell_count(len(data))
        elif dataset_name.endswith(".embedding") and dataset_name not in self._produced:
            # An evaluation-only run still records the embedding it scored.
            self.after_dataset_saved(dataset_name, data)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        if self._client is None:
            return
        if dataset_name == "cell_metadata":
            self._tag_cell_count(len(data))
            return
        if dataset_name == "metrics_table":
            self._safely(
                "metrics table",
                lambda: self._log_frame(self._parent, data, "metrics.parquet"),
                self._parent,
            )
            # Every method's scores, raw and scaled between controls, once all are known.
            for method, rows in data.groupby("method", sort=False):
                if method in self._children:
                    run_id = self._children[method]
                    self._safely(
                        f"{method} metrics",
                        lambda r=run_id, m=rows: self._log_metrics(r, metric_values(m)),
                        run_id,
                    )
            return
        if dataset_name in FIGURES:
            self._safely(
                dataset_name,
                lambda: self._client.log_figure(self._parent, data, FIGURES[dataset_name]),
                self._parent,
            )
            return
        if dataset_name == "metrics_markdown":
            self._safely(
                "metrics markdown",
                lambda: self._client.log_text(self._parent, data, "metrics.md"),
                self._parent,
            )
            return
        parts = dataset_name.split(".")
        if len(parts) != 3 or parts[1] not in self._children:
            return
        stage, model, output = parts
        run_id = self._children[model]
        if (stage, output) == (MODELLING, "training_summary"):
            self._safely(
                f"{model} training summary", lambda: self._log_summary(run_id, data), run_id
            )
        elif (stage, output) == (MODELLING, "embedding"):
            self._safely(
                f"{model} embedding",
                lambda: self._log_frame(run_id, data, f"{model}_embedding.parquet"),
                run_id,
            )

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._finish("FINISHED")

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._finish("FAILED")

    # --- helpers ---------------------------------------------------------------------------

    def _finish(self, status: str) -> None:
        """End every run: FAILED when the pipeline failed or the run's logging is incomplete
        (the parent: any logging of this ``kedro run``), tagged with what is missing."""
        if self._client is None:
            return
        missing_anywhere = sorted({what for whats in self._failed.values() for what in whats})
        for run_id in [*self._children.values(), self._parent]:
            missing = missing_anywhere if run_id == self._parent else self._failed.get(run_id, [])
            final = "FAILED" if missing else status
            if missing:
                self._safely(
                    "incomplete-logging tag",
                    lambda r=run_id, m=missing: self._client.set_tag(
                        r, INCOMPLETE_TAG, "could not log: " + ", ".join(m)
                    ),
                    run_id,
                )
            self._safely(
                "run status", lambda r=run_id, s=final: self._client.set_terminated(r, s), run_id
            )
        if missing_anywhere:
            logger.warning(
                "MLflow: could not log %s; the runs concerned are marked FAILED with the tag "
                "'%s'. Every artifact is still in the data catalog.",
                ", ".join(missing_anywhere),
                INCOMPLETE_TAG,
            )
        self._reset()

    def _safely(self, what: str, action: Callable[[], Any], run_id: str | None = None) -> None:
        """Log, retrying while the store is busy; on an outage, warn and go on (the artifact
        is already saved in the catalog) and remember the run as incomplete. Any other error is
        a bug in the hook and propagates."""
        try:
            with_retries(action, what)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._failed.setdefault(run_id or self._parent or "", []).append(what)
            logger.warning("MLflow: could not log %s (%s)", what, redact_error(exc))

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        batch = [Param(key, value[:6000]) for key, value in params.items()]
        self._safely("parameters", lambda: self._client.log_batch(run_id, params=batch), run_id)

    def _log_metrics(self, run_id: str, metrics: Mapping[str, float | None]) -> None:
        from mlflow.entities import Metric

        stamp = pd.Timestamp.now().value // 1_000_000
        batch = [
            Metric(key, math.nan if value is None else float(value), stamp, 0)
            for key, value in metrics.items()
        ]
        self._client.log_batch(run_id, metrics=batch)

    def _log_summary(self, run_id: str, summary: Mapping[str, Any]) -> None:
        self._log_metrics(
            run_id,
            {
                key: summary.get(key)
                for key in ("training_time_s", "final_training_loss", "n_epochs_trained")
            },
        )
        self._client.set_tag(run_id, "device", str(summary.get("device", "")))
        self._client.set_tag(run_id, "n_cells", str(summary.get("n_cells", "")))
        for package, version in (summary.get("versions") or {}).items():
            self._client.set_tag(run_id, f"version.{package}", str(version))

    def _log_frame(self, run_id: str, frame: pd.DataFrame, name: str) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / name
            frame.to_parquet(path)
            self._client.log_artifact(run_id, str(path))

    def _tag_cell_count(self, n_cells: int) -> None:
        if self._client is None:
            return
        for run_id in [self._parent, *self._children.values()]:
            self._safely(
                "cell count",
                lambda r=run_id: self._client.set_tag(r, "n_cells", str(n_cells)),
                run_id,
            )
