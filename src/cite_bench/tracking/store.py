"""Where runs are written: the :class:`TrackingStore` interface the hook logs through, and
:class:`MlflowStore`, MLflow behind it with the retries, the outage rules and the masking of
credentials that a shared store needs. (:class:`~cite_bench.tracking.memory.InMemoryStore` is
the other store, for tests.)"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cite_bench.locks import holding
from cite_bench.redaction import redact, redact_error
from cite_bench.tracking.config import (
    TrackingConfig,
    TrackingUnavailableError,
    is_server,
    runs_table_link,
    sqlite_path,
)

if TYPE_CHECKING:
    import pandas as pd

    from cite_bench.artifacts import LoggedAs

logger = logging.getLogger(__name__)

# MLflow error codes of an unavailable store (not of a bad request); the first three are also
# worth retrying at once (SQLite's "database is locked" arrives as TEMPORARILY_UNAVAILABLE).
RETRY_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})
OUTAGE_CODES = RETRY_CODES | {"INTERNAL_ERROR", "DEADLINE_EXCEEDED", "IO_ERROR"}
RETRIES = 6
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, token usage); marked
# as model training, the benchmark's experiment opens on its runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
PARAM_LENGTH = 6000  # MLflow's limit on a param's value


class TrackingStore(Protocol):
    """What the tracking hook needs of a store of runs: runs in one experiment, each with
    params, metrics, tags and file artifacts, ended with a status.

    Every method may raise; :meth:`is_outage` tells an unavailable store (the hook warns and
    marks the run incomplete) from a bug in what is logged (the hook lets it stop the run)."""

    def create_run(self, run_name: str, tags: Mapping[str, str]) -> str: ...

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None: ...

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None]) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def log_artifact(self, run_id: str, data: Any, file_name: str, logged_as: LoggedAs) -> None:
        """A table (parquet), a figure or a text as a file ``file_name`` of the run."""

    def end_run(self, run_id: str, status: str) -> None: ...

    def is_outage(self, error: BaseException) -> bool: ...

    def announce(self, parent_run_id: str) -> None:
        """Say where the runs can be looked at."""


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

    database = sqlite_path(config.tracking_uri)
    if database is None:
        return with_retries(get_or_create, "opening the experiment")
    with holding(database.with_name(database.name + ".lock"), timeout_s=300):
        return with_retries(get_or_create, "opening the experiment")


class MlflowStore:
    """An MLflow experiment as a :class:`TrackingStore`: each call retried while the store is
    busy; picklable (a Dask worker makes its own client from the URI)."""

    def __init__(self, config: TrackingConfig, experiment_id: str, client: Any = None) -> None:
        self.config = config
        self.experiment_id = experiment_id
        self._client = client if client is not None else _client(config.tracking_uri)

    @classmethod
    def open(cls, config: TrackingConfig) -> MlflowStore:
        """The store of ``config``, its experiment created if needed."""
        # Do not let a server that goes away later stall the run for minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(config.connect_timeout_s)))
        if redact(config.tracking_uri) != config.tracking_uri:
            # MLflow prints "View run at <tracking URI>/..." when a run ends, credentials and all.
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        client, experiment_id = open_experiment(config)
        return cls(config, experiment_id, client)

    def __getstate__(self) -> dict[str, Any]:
        # An MLflow client holds connections: a worker makes its own from the URI.
        return {**self.__dict__, "_client": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = _client(self.config.tracking_uri)

    @property
    def tracking_uri(self) -> str:
        return self.config.tracking_uri

    def create_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        run = with_retries(
            lambda: self._client.create_run(self.experiment_id, run_name=run_name, tags=tags),
            f"creating the run '{run_name}'",
        )
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        batch = [Param(key, value[:PARAM_LENGTH]) for key, value in params.items()]
        with_retries(lambda: self._client.log_batch(run_id, params=batch), "parameters")

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None]) -> None:
        import pandas as pd
        from mlflow.entities import Metric

        stamp = pd.Timestamp.now().value // 1_000_000
        batch = [
            Metric(key, math.nan if value is None else float(value), stamp, 0)
            for key, value in metrics.items()
        ]
        with_retries(lambda: self._client.log_batch(run_id, metrics=batch), "metrics")

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            with_retries(lambda k=key, v=value: self._client.set_tag(run_id, k, v), f"tag {key}")

    def log_artifact(self, run_id: str, data: Any, file_name: str, logged_as: LoggedAs) -> None:
        if logged_as == "figure":
            action = lambda: self._client.log_figure(run_id, data, file_name)  # noqa: E731
        elif logged_as == "text":
            action = lambda: self._client.log_text(run_id, data, file_name)  # noqa: E731
        elif logged_as == "table":
            action = lambda: self._log_frame(run_id, data, file_name)  # noqa: E731
        else:
            raise ValueError(f"MlflowStore cannot log {logged_as!r} as a file ({file_name}).")
        with_retries(action, file_name)

    def _log_frame(self, run_id: str, frame: pd.DataFrame, name: str) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / name
            frame.to_parquet(path)
            self._client.log_artifact(run_id, str(path))

    def end_run(self, run_id: str, status: str) -> None:
        with_retries(lambda: self._client.set_terminated(run_id, status), "run status")

    def is_outage(self, error: BaseException) -> bool:
        return is_outage(error)

    def announce(self, parent_run_id: str) -> None:
        uri = self.config.tracking_uri
        logger.info(
            "MLflow: run %s in experiment '%s' at %s",
            parent_run_id,
            self.config.experiment_name,
            redact(uri),
        )
        server = redact(uri) if is_server(uri) else None
        logger.info(
            "MLflow: the runs table: %s%s",
            runs_table_link(server or "http://127.0.0.1:5000", self.experiment_id),
            "" if server else f" (after `mlflow ui --backend-store-uri {uri}`)",
        )


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)
