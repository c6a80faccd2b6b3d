"""The Kedro hook that lays out a ``kedro run`` as MLflow runs and logs what
:data:`cite_bench.artifacts.TRACKED` declares, through a
:class:`~cite_bench.tracking.store.TrackingStore` (see the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline

from cite_bench.artifacts import EVALUATION, Tracked, tracked
from cite_bench.methods import METHODS, resolved_settings, role_of
from cite_bench.redaction import redact_error
from cite_bench.seeds import parse_seeds
from cite_bench.tracking.config import TrackingConfig, check_reachable, resolve_config
from cite_bench.tracking.store import MlflowStore, TrackingStore
from cite_bench.tracking.values import (
    flatten,
    git_commit,
    metric_values,
    models_in,
    parts_by_method,
    scores_external,
    source_file_tags,
    training_metrics,
    training_tags,
)

logger = logging.getLogger(__name__)

INCOMPLETE_TAG = "logging_incomplete"
StoreFactory = Callable[[TrackingConfig], TrackingStore]


class MlflowTrackingHook:
    """Parent run per ``kedro run``, child run per model; see the package docstring.

    ``open_store`` makes the store of a run's configuration: MLflow by default; tests pass
    one that returns an :class:`~cite_bench.tracking.memory.InMemoryStore`."""

    def __init__(self, open_store: StoreFactory | None = None) -> None:
        self._open_store: StoreFactory = open_store or MlflowStore.open
        self._reset()

    def _reset(self) -> None:
        self._store: TrackingStore | None = None
        self._parent: str | None = None
        self._children: dict[str, str] = {}
        # Datasets this run's nodes save: logged when saved, not again when a later node loads them.
        self._produced: set[str] = set()
        # What could not be logged (store outages), by run id.
        self._failed: dict[str, list[str]] = {}

    # --- under cite_bench.runner.DaskRunner: node and dataset hooks run on the workers ------

    def worker_hooks(self) -> MlflowTrackingHook:
        """A copy for a Dask worker: the same runs, its own store client (made when the copy is
        unpickled), an empty failure list."""
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

    # --- the run ------------------------------------------------------------------------------

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
        store = self._open_store(config)
        # With --only-missing-outputs, what exists already is loaded, not saved.
        resuming = bool(run_params.get("only_missing_outputs"))
        self._produced = {
            name for name in pipeline.all_outputs() if not (resuming and catalog.exists(name))
        }
        try:
            self._start_runs(store, run_params, pipeline)
        except BaseException:
            # Runs already created must not stay RUNNING for a run that never started.
            self._finish("FAILED")
            raise
        assert self._parent is not None
        store.announce(self._parent)

    def _start_runs(
        self, store: TrackingStore, run_params: dict[str, Any], pipeline: Pipeline
    ) -> None:
        commit = git_commit(self._project_path)
        shared_tags = {
            "dataset": str(self._dataset),
            "git_commit": commit,
            "kedro_env": str(self._env),
            "kedro_session": str(run_params.get("run_id")),
        }
        pipelines = ",".join(run_params.get("pipeline_names") or ["__default__"])
        self._parent = store.create_run(
            f"{self._dataset} {pipelines}", {**shared_tags, "pipelines": pipelines}
        )
        self._store = store
        shared_params = {
            **flatten(self._params.get("columns", {}), "columns."),
            **flatten(self._params.get("data_processing", {}), "data_processing."),
            **flatten(self._params.get(EVALUATION, {}), f"{EVALUATION}."),
        }
        seeds = " ".join(str(seed) for seed in parse_seeds(self._params.get("seeds", [0])))
        shared_params["seeds"] = seeds
        shared_params["training_length"] = str(self._params.get("training_length", "demo"))
        with self._safely("parameters", self._parent):
            store.log_params(self._parent, shared_params)
        for model in [*models_in(pipeline), *self._external_methods(run_params, pipeline)]:
            # What the model trains with: its defaults, the training length and the overrides.
            hyperparameters = (
                resolved_settings(self._params, model).model_dump() if model in METHODS else {}
            )
            tags = {
                **shared_tags,
                "mlflow.parentRunId": self._parent,
                "model": model,
                "role": role_of(model),
                "seeds": seeds,
            }
            run_id = store.create_run(model, tags)
            self._children[model] = run_id
            with self._safely("parameters", run_id):
                store.log_params(run_id, {**shared_params, **flatten(hyperparameters, "model.")})

    def _external_methods(self, run_params: dict[str, Any], pipeline: Pipeline) -> list[str]:
        """Users' own methods scored in this run (``external``), each a child run of its own."""
        if not scores_external(pipeline):
            return []
        runtime = (run_params.get("runtime_params") or {}).get("external")
        return list(runtime or self._external)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any) -> None:
        # A run that did not make an artifact still records some of what it read (the
        # embedding an evaluation-only run scored, the external files); the rest was logged
        # by the run that made it.
        if dataset_name not in self._produced:
            self._log(dataset_name, data, loaded=True)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        self._log(dataset_name, data, loaded=False)

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._finish("FINISHED")

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._finish("FAILED")

    # --- logging what TRACKED declares ------------------------------------------------------

    def _log(self, dataset_name: str, data: Any, loaded: bool) -> None:
        if self._store is None:
            return
        for entry, method in tracked(dataset_name):
            if loaded and not entry.when_loaded:
                continue
            for run_id, part, run_method in self._targets(entry, method, data):
                with self._safely(entry.what.format(method=run_method), run_id):
                    self._write(entry, run_id, part, run_method)

    def _targets(self, entry: Tracked, method: str, data: Any) -> Iterator[tuple[str, Any, str]]:
        """The runs ``entry`` goes to: (run id, the data for it, the run's method or "")."""
        assert self._parent is not None
        if entry.run in ("parent", "all"):
            yield self._parent, data, ""
        if entry.run == "all":
            for model, run_id in self._children.items():
                yield run_id, data, model
        elif entry.run == "method" and method in self._children:
            yield self._children[method], data, method
        elif entry.run == "each method":
            for model, part in parts_by_method(data, entry.logged_as):
                if model in self._children:
                    yield self._children[model], part, model

    def _write(self, entry: Tracked, run_id: str, data: Any, method: str) -> None:
        store = self._store
        assert store is not None
        kind = entry.logged_as
        if kind in ("table", "figure", "text"):
            assert entry.file_name is not None, f"{entry.name} is logged as a file: name it"
            store.log_artifact(run_id, data, entry.file_name.format(method=method), kind)
        elif kind == "metrics":
            store.log_metrics(run_id, metric_values(data))
        elif kind == "training_summary":
            store.log_metrics(run_id, training_metrics(data))
            store.set_tags(run_id, training_tags(data))
        elif kind == "cell_count":
            store.set_tags(run_id, {"n_cells": str(len(data))})
        elif kind == "source_files":
            store.set_tags(run_id, source_file_tags(data))
        else:
            raise ValueError(f"{entry.name}: tracking cannot log an artifact as {kind!r}")

    # --- helpers ---------------------------------------------------------------------------

    def _finish(self, status: str) -> None:
        """End every run: FAILED when the pipeline failed or the run's logging is incomplete
        (the parent: any logging of this ``kedro run``), tagged with what is missing."""
        store = self._store
        if store is None or self._parent is None:
            return
        missing_anywhere = sorted({what for whats in self._failed.values() for what in whats})
        for run_id in [*self._children.values(), self._parent]:
            missing = missing_anywhere if run_id == self._parent else self._failed.get(run_id, [])
            final = "FAILED" if missing else status
            if missing:
                with self._safely("incomplete-logging tag", run_id):
                    store.set_tags(run_id, {INCOMPLETE_TAG: "could not log: " + ", ".join(missing)})
            with self._safely("run status", run_id):
                store.end_run(run_id, final)
        if missing_anywhere:
            logger.warning(
                "MLflow: could not log %s; the runs concerned are marked FAILED with the tag "
                "'%s'. Every artifact is still in the data catalog.",
                ", ".join(missing_anywhere),
                INCOMPLETE_TAG,
            )
        self._reset()

    @contextmanager
    def _safely(self, what: str, run_id: str) -> Iterator[None]:
        """Log, the store retrying while it is busy; on an outage, warn and go on (the artifact
        is already saved in the catalog) and remember the run as incomplete. Any other error is
        a bug in the hook and propagates."""
        try:
            yield
        except Exception as exc:
            if self._store is None or not self._store.is_outage(exc):
                raise
            self._failed.setdefault(run_id, []).append(what)
            logger.warning("MLflow: could not log %s (%s)", what, redact_error(exc))
