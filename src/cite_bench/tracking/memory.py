"""A :class:`~cite_bench.tracking.store.TrackingStore` in memory: what a run would log, to be
read back by tests (and by anyone trying the hook without MLflow)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cite_bench.artifacts import LoggedAs
    from cite_bench.tracking.config import TrackingConfig

PARENT_TAG = "mlflow.parentRunId"


@dataclass
class RecordedRun:
    """One run as logged: tags, params, metrics, artifacts by file name (with their kind)."""

    run_id: str
    name: str
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, tuple[LoggedAs, Any]] = field(default_factory=dict)
    status: str = "RUNNING"

    @property
    def parent_id(self) -> str | None:
        return self.tags.get(PARENT_TAG)


class InMemoryStore:
    """Runs kept in a dict. ``failing`` maps a method name (``"log_params"``, ``"set_tags"``,
    ...) to the error it raises, to play an outage (an ``OSError``) or a bug (anything else)."""

    def __init__(self, failing: Mapping[str, BaseException] | None = None) -> None:
        self.runs: dict[str, RecordedRun] = {}
        self.failing = dict(failing or {})
        self.announced: list[str] = []

    def opened(self, config: TrackingConfig) -> InMemoryStore:
        """This store, whatever the configuration says: ``MlflowTrackingHook(store.opened)``."""
        return self

    def _call(self, operation: str, run_id: str | None = None) -> RecordedRun | None:
        if operation in self.failing:
            raise self.failing[operation]
        if run_id is None:
            return None
        run = self.runs[run_id]
        if run.status != "RUNNING":
            raise RuntimeError(f"run {run_id} ({run.name}) has ended: {run.status}")
        return run

    def create_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        self._call("create_run")
        run_id = f"run-{len(self.runs)}"
        self.runs[run_id] = RecordedRun(run_id, run_name, dict(tags))
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        run = self._call("log_params", run_id)
        assert run is not None
        for key, value in params.items():
            if run.params.get(key, value) != value:  # as MLflow: a param is written once
                raise ValueError(f"param {key} changed from {run.params[key]!r} to {value!r}")
            run.params[key] = value

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None]) -> None:
        run = self._call("log_metrics", run_id)
        assert run is not None
        run.metrics |= {k: math.nan if v is None else float(v) for k, v in metrics.items()}

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        run = self._call("set_tags", run_id)
        assert run is not None
        run.tags |= {key: str(value) for key, value in tags.items()}

    def log_artifact(self, run_id: str, data: Any, file_name: str, logged_as: LoggedAs) -> None:
        run = self._call("log_artifact", run_id)
        assert run is not None
        run.artifacts[file_name] = (logged_as, data)

    def end_run(self, run_id: str, status: str) -> None:
        self._call("end_run")
        self.runs[run_id].status = status

    def is_outage(self, error: BaseException) -> bool:
        return isinstance(error, OSError)

    def announce(self, parent_run_id: str) -> None:
        self.announced.append(parent_run_id)

    # --- reading back ------------------------------------------------------------------------

    @property
    def parents(self) -> list[RecordedRun]:
        return [run for run in self.runs.values() if run.parent_id is None]

    def children(self, parent: RecordedRun) -> dict[str, RecordedRun]:
        """The parent's child runs by model."""
        return {
            run.tags["model"]: run for run in self.runs.values() if run.parent_id == parent.run_id
        }
