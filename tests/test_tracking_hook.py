"""What tracking logs, read back from an in-memory store after small in-memory pipeline runs:
params, metrics, artifacts, tags and the parent/child layout, outages and bugs, Dask copies."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from cite_bench import artifacts
from cite_bench.methods import METHODS
from cite_bench.tracking import (
    INCOMPLETE_TAG,
    InMemoryStore,
    MlflowStore,
    MlflowTrackingHook,
    TrackingConfig,
)

# Namespaced names have dots, as in the project (Kedro warns about them).
pytestmark = pytest.mark.filterwarnings("ignore:One or more dataset names contain")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mofa", "totalvi")
N_CELLS = 40
PARAMS = {
    "columns": {"batch": "batch", "label": "cell_type"},
    "data_processing": {"n_top_genes": 200, "subsample": {"n_cells": None}},
    "evaluation": {"metrics": "fast"},
    "seeds": [0, 1],
    "modelling": {
        "mofa": {"hyperparameters": {"n_factors": 5}},
        "totalvi": {"hyperparameters": {"max_epochs": 3, "n_latent": 4}},
    },
}
# Per model and seed: nmi and ari, raw and scaled.
SCORES = {
    "mofa": {0: (0.5, 0.2, 0.4, 0.9), 1: (0.7, 0.4, 0.4, 0.9)},
    "totalvi": {0: (0.6, 0.3, 0.1, 0.5), 1: (0.8, 0.5, 0.3, 0.7)},
}


def _embedding(model: str) -> pd.DataFrame:
    rng = np.random.default_rng(len(model))
    return pd.DataFrame(rng.normal(size=(N_CELLS, 3)), index=[f"c{i}" for i in range(N_CELLS)])


def _cells(raw: pd.DataFrame) -> pd.DataFrame:
    return raw[["batch"]]


def _train(model: str):
    def train(cells: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        summary = {
            "training_time_s": 1.5,
            "final_training_loss": 0.25,
            "n_epochs_trained": 3,
            "device": "cpu",
            "n_cells": len(cells),
            "versions": {"torch": "2.0"},
        }
        return _embedding(model), summary

    return train


def _score(model: str):
    def score(embedding: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
        rows = [
            {"method": model, "seed": seed, "metric": metric, "value": value, "scaled": scaled}
            for seed, (nmi, nmi_scaled, ari, ari_scaled) in SCORES[model].items()
            for metric, value, scaled in (("nmi", nmi, nmi_scaled), ("ari", ari, ari_scaled))
        ]
        return pd.DataFrame(rows).assign(note="", scaled_note="")

    return score


def _tabulate(*tables: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(tables, ignore_index=True)


def _modelling(models=MODELS) -> Pipeline:
    processing = Node(_cells, artifacts.RAW_INPUT, artifacts.CELL_METADATA, name="cells")
    training = [
        Node(
            _train(model),
            artifacts.CELL_METADATA,
            [artifacts.embedding(model), artifacts.training_summary(model)],
            name="train",
            namespace=artifacts.modelling_namespace(model),
        )
        for model in models
    ]
    return Pipeline([processing, *training])


def _evaluation(models=MODELS) -> Pipeline:
    scoring = [
        Node(
            _score(model),
            [artifacts.embedding(model), artifacts.CELL_METADATA],
            artifacts.metrics(model),
            name="score",
            namespace=artifacts.evaluation_namespace(model),
        )
        for model in models
    ]
    reports = [
        Node(_tabulate, [artifacts.metrics(m) for m in models], artifacts.METRICS_TABLE),
        Node(lambda table: table.to_string(), artifacts.METRICS_TABLE, artifacts.METRICS_MARKDOWN),
        Node(lambda table: Figure(), artifacts.METRICS_TABLE, artifacts.METRICS_SUMMARY_FIGURE),
        Node(lambda cells: Figure(), artifacts.CELL_METADATA, artifacts.UMAP_FIGURE),
    ]
    return Pipeline([*scoring, *reports])


def _raw() -> pd.DataFrame:
    return pd.DataFrame(
        {"batch": ["a", "b"] * (N_CELLS // 2)}, index=[f"c{i}" for i in range(N_CELLS)]
    )


def _hook(tmp_path: Path, store: InMemoryStore, external: dict | None = None) -> MlflowTrackingHook:
    hook = MlflowTrackingHook(store.opened)
    globals_ = {"dataset": "demo", "external": external or {}}
    hook.after_context_created(
        SimpleNamespace(
            project_path=tmp_path,
            params=PARAMS,
            config_loader={"tracking": {}, "globals": globals_},
            env="base",
        )
    )
    return hook


def _run(hook, pipeline: Pipeline, catalog: DataCatalog, **run_params) -> None:
    """A ``kedro run`` as the session runs it: the pipeline hooks around the runner's run."""
    hook_manager = _create_hook_manager()
    hook_manager.register(hook)
    run_params = {"run_id": "session-1", "pipeline_names": None, **run_params}
    hook.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
    try:
        SequentialRunner().run(pipeline, catalog, hook_manager=hook_manager, run_id="session-1")
    except Exception:
        hook.on_pipeline_error()
        raise
    hook.after_pipeline_run()


@pytest.fixture
def store() -> InMemoryStore:
    return InMemoryStore()


def test_a_full_run_logs_params_metrics_artifacts_and_tags_per_model(tmp_path, store):
    catalog = DataCatalog({artifacts.RAW_INPUT: MemoryDataset(_raw())})
    _run(_hook(tmp_path, store), _modelling() + _evaluation(), catalog)

    [parent] = store.parents
    children = store.children(parent)
    assert sorted(children) == sorted(MODELS)
    assert parent.name == "demo __default__"
    assert parent.tags["dataset"] == "demo" and parent.tags["kedro_session"] == "session-1"
    assert parent.tags["n_cells"] == str(N_CELLS) and parent.tags["git_commit"]
    assert parent.params["seeds"] == "0 1"
    assert parent.params["columns.label"] == "cell_type"
    assert parent.params["data_processing.subsample.n_cells"] == "None"
    assert parent.params["evaluation.metrics"] == "fast"
    assert set(parent.artifacts) == {
        "metrics.parquet",
        "metrics.md",
        "umap.png",
        "metrics_summary.png",
    }
    kind, table = parent.artifacts["metrics.parquet"]
    assert kind == "table" and len(table) == 2 * 2 * len(MODELS)
    assert parent.artifacts["metrics.md"][0] == "text"
    assert parent.artifacts["umap.png"][0] == parent.artifacts["metrics_summary.png"][0] == "figure"
    assert not parent.metrics
    assert store.announced == [parent.run_id]

    for model, run in children.items():
        assert run.name == model
        assert run.tags["model"] == model and run.tags["role"] == METHODS[model].role
        assert run.tags["seeds"] == "0 1" and run.tags["n_cells"] == str(N_CELLS)
        assert run.tags["device"] == "cpu" and run.tags["version.torch"] == "2.0"
        assert run.params["seeds"] == "0 1"
        hyperparameters = PARAMS["modelling"][model]["hyperparameters"]
        assert {k: run.params[f"model.{k}"] for k in hyperparameters} == {
            k: str(v) for k, v in hyperparameters.items()
        }
        # What it trained with, not only what was overridden: the defaults too.
        assert run.params["model.accelerator"] == "auto"
        assert run.params["training_length"] == "demo"
        [(seed0, seed1)] = [tuple(SCORES[model].values())]
        expected = {
            "nmi": (seed0[0] + seed1[0]) / 2,
            "nmi_scaled": (seed0[1] + seed1[1]) / 2,
            "ari": (seed0[2] + seed1[2]) / 2,
            "nmi_sd": np.std([seed0[0], seed1[0]], ddof=1),
            "ari_scaled_sd": np.std([seed0[3], seed1[3]], ddof=1),
            "training_time_s": 1.5,
            "final_training_loss": 0.25,
            "n_epochs_trained": 3,
        }
        assert {key: run.metrics[key] for key in expected} == pytest.approx(expected)
        assert set(run.artifacts) == {f"{model}_embedding.parquet"}
        pd.testing.assert_frame_equal(
            run.artifacts[f"{model}_embedding.parquet"][1], _embedding(model)
        )
    assert {run.status for run in store.runs.values()} == {"FINISHED"}
    assert not any(INCOMPLETE_TAG in run.tags for run in store.runs.values())


def test_an_evaluation_only_run_records_the_embeddings_it_scored(tmp_path, store):
    """Embeddings and cells made by an earlier run are loaded, not saved: still logged."""
    made = {artifacts.embedding(model): MemoryDataset(_embedding(model)) for model in MODELS}
    cells = MemoryDataset(_raw()[["batch"]])
    catalog = DataCatalog({**made, artifacts.CELL_METADATA: cells})
    _run(_hook(tmp_path, store), _evaluation(), catalog, pipeline_names=["evaluation"])

    [parent] = store.parents
    assert parent.name == "demo evaluation" and parent.tags["pipelines"] == "evaluation"
    for model, run in store.children(parent).items():
        assert set(run.artifacts) == {f"{model}_embedding.parquet"}
        assert run.tags["n_cells"] == str(N_CELLS)
        assert "nmi" in run.metrics and "training_time_s" not in run.metrics


def test_only_what_the_run_touches_gets_a_child_run(tmp_path, store):
    catalog = DataCatalog({artifacts.RAW_INPUT: MemoryDataset(_raw())})
    _run(_hook(tmp_path, store), _modelling(models=("mofa",)), catalog)
    [parent] = store.parents
    [child] = store.children(parent).values()
    assert child.tags["model"] == "mofa" and set(child.artifacts) == {"mofa_embedding.parquet"}
    assert not parent.artifacts and not child.metrics.keys() & {"nmi", "nmi_scaled"}


def test_users_own_embeddings_get_a_child_run_with_their_file_and_checksum(tmp_path, store):
    files = {"mine": SimpleNamespace(path="/data/mine.parquet", sha256="abc123")}
    external = Pipeline(
        [
            Node(
                lambda found: pd.DataFrame(),
                artifacts.EXTERNAL_EMBEDDINGS,
                artifacts.EXTERNAL_METRICS,
            )
        ]
    )
    catalog = DataCatalog({artifacts.EXTERNAL_EMBEDDINGS: MemoryDataset(files, copy_mode="assign")})
    _run(_hook(tmp_path, store, external={"mine": "mine.parquet"}), external, catalog)
    [parent] = store.parents
    [mine] = store.children(parent).values()
    assert mine.tags["model"] == "mine" and mine.tags["role"] == "external"
    assert mine.tags["source_file"] == "/data/mine.parquet" and mine.tags["sha256"] == "abc123"
    assert mine.status == "FINISHED"


def test_an_outage_loses_no_artifact_and_marks_the_runs_incomplete(tmp_path, caplog):
    store = InMemoryStore(failing={"log_artifact": ConnectionError("tracking store went away")})
    catalog = DataCatalog({artifacts.RAW_INPUT: MemoryDataset(_raw())})
    with caplog.at_level(logging.WARNING, logger="cite_bench.tracking"):
        _run(_hook(tmp_path, store), _modelling() + _evaluation(), catalog)
    assert catalog.load(artifacts.METRICS_MARKDOWN)  # the run went on
    [parent] = store.parents
    children = store.children(parent)
    for model, run in children.items():
        assert run.status == "FAILED"
        assert run.tags[INCOMPLETE_TAG] == f"could not log: {model} embedding"
        assert "nmi" in run.metrics  # what did not need the artifact store is there
    assert parent.status == "FAILED"
    assert parent.tags[INCOMPLETE_TAG] == "could not log: " + ", ".join(
        sorted(
            [
                *(f"{model} embedding" for model in MODELS),
                "metrics table",
                "metrics markdown",
                artifacts.METRICS_SUMMARY_FIGURE,
                artifacts.UMAP_FIGURE,
            ]
        )
    )
    assert "tracking store went away" in caplog.text and "still in the data catalog" in caplog.text


def test_a_bug_in_what_is_logged_stops_the_run_and_fails_its_runs(tmp_path):
    store = InMemoryStore(failing={"set_tags": TypeError("a bug in what the hook logs")})
    catalog = DataCatalog({artifacts.RAW_INPUT: MemoryDataset(_raw())})
    with pytest.raises(TypeError, match="a bug in what the hook logs"):
        _run(_hook(tmp_path, store), _modelling() + _evaluation(), catalog)
    assert catalog.exists(artifacts.CELL_METADATA)  # saved before logging
    assert not catalog.exists(artifacts.METRICS_TABLE)
    assert {run.status for run in store.runs.values()} == {"FAILED"}


def test_tracking_switched_off_opens_no_store(tmp_path):
    def no_store(config: TrackingConfig) -> InMemoryStore:
        raise AssertionError("tracking is off: no store may be opened")

    hook = MlflowTrackingHook(no_store)
    hook.after_context_created(
        SimpleNamespace(
            project_path=tmp_path, params=PARAMS, config_loader={"globals": {}}, env="base"
        )
    )
    catalog = DataCatalog({artifacts.RAW_INPUT: MemoryDataset(_raw())})
    _run(hook, _modelling(), catalog, runtime_params={"tracking": {"enabled": False}})
    assert catalog.exists(artifacts.embedding("mofa"))


def test_a_resumed_run_logs_what_it_loads_instead_of_making(tmp_path, store):
    """``--only-missing-outputs``: an embedding that exists is loaded, and still logged."""
    catalog = DataCatalog(
        {
            artifacts.RAW_INPUT: MemoryDataset(_raw()),
            artifacts.embedding("mofa"): MemoryDataset(_embedding("mofa")),
        }
    )
    hook = _hook(tmp_path, store)
    pipeline = _modelling(models=("mofa",)) + _evaluation(models=("mofa",))
    hook.before_pipeline_run(
        run_params={"run_id": "r", "only_missing_outputs": True}, pipeline=pipeline, catalog=catalog
    )
    hook.after_dataset_loaded(artifacts.embedding("mofa"), _embedding("mofa"))
    hook.after_dataset_loaded(artifacts.METRICS_TABLE, pd.DataFrame())  # made here: not logged
    hook.after_pipeline_run()
    [parent] = store.parents
    assert set(store.children(parent)["mofa"].artifacts) == {"mofa_embedding.parquet"}
    assert not parent.artifacts


# --- the Dask runner's contract: copies travel to workers and report back --------------------


def test_the_tracking_hook_travels_to_a_worker_and_reports_back(tmp_path):
    store = InMemoryStore(failing={"log_artifact": ConnectionError("store went away")})
    hook = _hook(tmp_path, store)
    catalog = DataCatalog({artifacts.RAW_INPUT: MemoryDataset(_raw())})
    pipeline = _modelling(models=("mofa",))
    hook.before_pipeline_run(run_params={"run_id": "r"}, pipeline=pipeline, catalog=catalog)
    worker = pickle.loads(pickle.dumps(hook.worker_hooks()))
    worker.after_dataset_saved(artifacts.embedding("mofa"), _embedding("mofa"))
    report = worker.worker_report()
    assert list(report.values()) == [["mofa embedding"]]
    assert worker.worker_report() == {}  # a report is sent once
    hook.merge_worker_report(report)
    hook.after_pipeline_run()
    [parent] = store.parents
    mofa = store.children(parent)["mofa"]
    assert mofa.status == "FAILED" and mofa.tags[INCOMPLETE_TAG] == "could not log: mofa embedding"


def test_an_mlflow_store_travels_without_its_client(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = MlflowStore.open(TrackingConfig(True, uri, "cite-bench", None, 2.0))
    run_id = store.create_run("parent", {"dataset": "demo"})
    travelled = pickle.loads(pickle.dumps(store))
    travelled.set_tags(run_id, {"n_cells": "40"})
    travelled.end_run(run_id, "FINISHED")
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags["n_cells"] == "40" and run.info.status == "FINISHED"


# --- the declarations --------------------------------------------------------------------------


def test_every_tracked_artifact_is_a_catalog_entry():
    catalog = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    entries = {name.replace("{model}", artifacts.METHOD) for name in catalog}
    assert {entry.name for entry in artifacts.TRACKED} <= entries
    named = {
        artifacts.RAW_INPUT,
        artifacts.MUDATA,
        artifacts.CELL_METADATA,
        artifacts.EXTERNAL_EMBEDDINGS,
        artifacts.EXTERNAL_METRICS,
        artifacts.METRICS_TABLE,
        artifacts.METRICS_MARKDOWN,
        artifacts.METRICS_SUMMARY_FIGURE,
        artifacts.UMAP_FIGURE,
        *(
            name(artifacts.METHOD)
            for name in (
                artifacts.trained_model,
                artifacts.embedding,
                artifacts.training_summary,
                artifacts.metrics,
                artifacts.umap,
            )
        ),
    }
    assert named <= entries


def test_a_per_method_declaration_matches_its_methods_names_only():
    [embedding] = [e for e in artifacts.TRACKED if e.name == artifacts.embedding(artifacts.METHOD)]
    assert embedding.match("modelling.mofa.embedding") == "mofa"
    assert embedding.match("modelling.mofa.training_summary") is None
    assert embedding.match("evaluation.mofa.embedding") is None
    assert [e.logged_as for e, _ in artifacts.tracked(artifacts.METRICS_TABLE)] == [
        "table",
        "metrics",
    ]
    assert artifacts.tracked("paired_modalities") == []


def test_a_skipped_method_keeps_its_cell_count_tag():
    """A method that did not train (a control switched off) has no device or cell count in its
    summary: its training tags leave the run's cell count as the cell table set it."""
    from cite_bench.tracking.values import training_tags

    assert training_tags({"method": "random_gaussian", "skipped": "controls are off"}) == {}
    assert training_tags({"device": "cpu", "n_cells": 600, "versions": {"numpy": "2.0"}}) == {
        "device": "cpu",
        "n_cells": "600",
        "version.numpy": "2.0",
    }
