"""MLflow tracking through a Kedro hook, so that nodes stay free of tracking code.

Each ``kedro run`` is one parent run; each model it touches is a child run tagged with model,
dataset, number of cells, seeds and git commit, carrying the model's hyperparameters and the
preprocessing parameters as params and the evaluation metrics under the same keys for every
model (the mean over seeds, and ``<metric>_sd`` with several seeds), so that selecting the
child runs and pressing Compare in the MLflow UI gives the reference table.

A project hook rather than kedro-mlflow: kedro-mlflow logs one flat run per ``kedro run``,
while a benchmark needs one comparable run per model.

What is logged of which artifact, into which run, is declared once in
:data:`cite_bench.artifacts.TRACKED`; the hook (:mod:`.hook`) reads the declarations and writes
through a small store interface (:mod:`.store`): MLflow in a run, an in-memory store in tests
(:mod:`.memory`). Where the runs go is :mod:`.config`.

Tracking never costs an artifact: everything is logged after the catalog has saved it, and an
outage of the tracking store (unreachable, overloaded, SQLite busy: retried first) is reported
as a warning while the run goes on; the runs whose logging failed end as FAILED with a
``logging_incomplete`` tag, never as FINISHED. Any other error in the hook is a bug and stops
the run. An unreachable tracking server stops the run before any work starts. Tracking URIs are
printed with their credentials masked.
"""

from cite_bench.tracking.config import (
    ENABLED_VARIABLE,
    URI_VARIABLE,
    TrackingConfig,
    TrackingUnavailableError,
    check_reachable,
    is_server,
    resolve_config,
    runs_table_link,
)
from cite_bench.tracking.hook import INCOMPLETE_TAG, MlflowTrackingHook
from cite_bench.tracking.memory import InMemoryStore, RecordedRun
from cite_bench.tracking.store import (
    MlflowStore,
    TrackingStore,
    is_outage,
    open_experiment,
    with_retries,
)
from cite_bench.tracking.values import flatten, git_commit, metric_values, models_in

__all__ = [
    "ENABLED_VARIABLE",
    "INCOMPLETE_TAG",
    "URI_VARIABLE",
    "InMemoryStore",
    "MlflowStore",
    "MlflowTrackingHook",
    "RecordedRun",
    "TrackingConfig",
    "TrackingStore",
    "TrackingUnavailableError",
    "check_reachable",
    "flatten",
    "git_commit",
    "is_outage",
    "is_server",
    "metric_values",
    "models_in",
    "open_experiment",
    "resolve_config",
    "runs_table_link",
    "with_retries",
]
