"""Where tracking goes: ``conf/<env>/tracking.yml``, the environment and ``--params tracking.*``
merged into one :class:`TrackingConfig`, and the fail-fast check of a tracking server."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cite_bench.redaction import redact, redact_error

# Environment switches, above the configuration file and below `--params tracking.*`.
URI_VARIABLE = "MLFLOW_TRACKING_URI"
ENABLED_VARIABLE = "CITE_BENCH_TRACKING"


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


def runs_table_link(server: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI: MLflow 3.17's UI opens every experiment in
    the GenAI view unless the address asks for the model-training one."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store, else ``None``."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", maxsplit=1)[0]
    return None if path in ("", ":memory:") else Path(path)
