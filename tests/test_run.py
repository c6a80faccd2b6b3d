"""End-to-end: Kedro sessions as `kedro run` starts them, on the demo and on the real starter."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest

from cite_bench.pipelines.evaluation.nodes import METRICS
from cite_bench.pipelines.modelling.nodes import TRAINERS, split_by_seed

from .conftest import FAST_TRAINING, run_kedro
from .test_tracking import check_run_layout

DEMO = {"demo": {"n_cells": 600, "n_genes": 400, "n_proteins": 20, "seed": 0}}


def _outputs(root: Path, dataset: str) -> dict[str, Path]:
    return {
        "mudata": root / f"data/03_primary/{dataset}.h5mu",
        "table": root / f"data/08_reporting/{dataset}/metrics.parquet",
        "markdown": root / f"data/08_reporting/{dataset}/metrics.md",
        **{
            model: root / f"data/07_model_output/{dataset}/{model}_embedding.parquet"
            for model in TRAINERS
        },
    }


def _check_metrics_table(path: Path, n_seeds: int = 1) -> pd.DataFrame:
    """The tidy table is complete and in range; returns metric x model means over seeds."""
    table = pd.read_parquet(path)
    assert set(table["model"]) == set(TRAINERS)
    assert len(table) == len(TRAINERS) * len(METRICS) * n_seeds
    assert (table.groupby("model")["seed"].nunique() == n_seeds).all()
    wide = table.pivot_table(index="metric", columns="model", values="value", dropna=False)
    assert set(wide.index) == set(METRICS)
    missing = table[table["value"].isna()]
    assert missing["note"].str.startswith("skipped").all(), "a missing metric needs a reason"
    # ARI is below 0 when clusters agree less than by chance (a barely trained model).
    assert (wide.loc["ari"].dropna() >= -0.5).all()
    bounded = wide.drop(index=["ari", "bio_conservation", "overall"]).fillna(0)
    assert ((bounded >= 0) & (bounded <= 1)).all().all()
    return wide


def test_default_run_on_the_demo(project):
    run_kedro(project, runtime_params={**DEMO, **FAST_TRAINING})
    outputs = _outputs(project, "demo")
    mdata = md.read_h5mu(outputs["mudata"])
    assert mdata.n_obs == 600
    assert "counts" in mdata["rna"].layers and "counts" in mdata["adt"].layers
    for model in TRAINERS:
        embeddings = split_by_seed(pd.read_parquet(outputs[model]))
        assert list(embeddings) == [0]
        assert list(embeddings[0].index) == list(mdata.obs_names)
        assert (project / f"data/06_models/demo/{model}/seed_0/model_class.json").is_file()
    table = _check_metrics_table(outputs["table"])
    markdown = outputs["markdown"].read_text()
    assert markdown.startswith("| Metric | " + " | ".join(TRAINERS) + " |")
    assert markdown.count("**") >= 2 * 5
    # The run is tracked in the embedded MLflow store: one parent, one child per model.
    check_run_layout(f"sqlite:///{project / 'mlflow.db'}", pd.read_parquet(outputs["table"]))
    assert table.shape == (len(METRICS), len(TRAINERS))


def test_pipelines_run_one_after_another(project):
    """Artifacts persist through the catalog between separate `kedro run --pipeline` calls."""
    params = {**DEMO, **FAST_TRAINING}
    run_kedro(project, pipeline_names=["data_processing"], runtime_params=params)
    assert _outputs(project, "demo")["mudata"].is_file()
    run_kedro(project, pipeline_names=["modelling"], runtime_params=params)
    assert all(_outputs(project, "demo")[model].is_file() for model in TRAINERS)
    run_kedro(project, pipeline_names=["evaluation"], runtime_params=params)
    _check_metrics_table(_outputs(project, "demo")["table"])


def test_one_model_can_be_run_by_namespace(project):
    params = {**DEMO, **FAST_TRAINING}
    run_kedro(project, pipeline_names=["data_processing"], runtime_params=params)
    run_kedro(project, namespaces=["modelling.totalvi"], runtime_params=params)
    outputs = _outputs(project, "demo")
    assert outputs["totalvi"].is_file()
    assert not outputs["mofa"].exists() and not outputs["multigrate"].exists()


def test_params_on_the_command_line_change_the_run(project):
    """`kedro run --params` reaches both parameters and the demo's catalog entry."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    command = [
        sys.executable,
        "-m",
        "kedro",
        "run",
        "--pipeline",
        "data_processing",
        "--params",
        "demo.n_cells=300,demo.n_genes=250,data_processing.n_top_genes=120",
    ]
    result = subprocess.run(
        command, check=False, cwd=project, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mdata = md.read_h5mu(project / "data/03_primary/demo.h5mu")
    assert mdata.n_obs == 300
    assert mdata["rna"].n_vars == 120


def test_three_seeds_from_the_command_line_give_mean_and_spread(project):
    """`kedro run --params "seeds=0 1 2"` trains every model three times; tables and figures
    report mean ± SD, which is non-zero for the trained models."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    fast = [
        f"modelling.{model}.hyperparameters.{key}={value}"
        for model, block in FAST_TRAINING["modelling"].items()
        for key, value in block["hyperparameters"].items()
    ]
    demo = [f"demo.{key}={value}" for key, value in DEMO["demo"].items()]
    params = ",".join(["seeds=0 1 2", "tracking.enabled=false", *demo, *fast])
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--params", params],
        check=False,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = _outputs(project, "demo")
    _check_metrics_table(outputs["table"], n_seeds=3)
    table = pd.read_parquet(outputs["table"])
    spread = table.groupby(["model", "metric"])["value"].std()
    models_dir = project / "data/06_models/demo"
    for model in ("mofa", "totalvi", "multigrate"):
        assert spread.loc[(model, "overall")] > 0, f"{model}: identical scores over seeds"
        assert list(split_by_seed(pd.read_parquet(outputs[model]))) == [0, 1, 2]
        saved = sorted(path.name for path in (models_dir / model).glob("seed_*"))
        assert saved == ["seed_0", "seed_1", "seed_2"]
    markdown = outputs["markdown"].read_text()
    assert "Mean ± standard deviation over seeds 0, 1, 2." in markdown
    assert markdown.count(" ± ") >= len(TRAINERS) * len(METRICS) - 10
    summary = json.loads(
        (project / "data/07_model_output/demo/mofa_training_summary.json").read_text()
    )
    assert summary["seeds"] == [0, 1, 2] and len(summary["runs"]) == 3


@pytest.mark.slow
def test_starter_run_reaches_published_quality(project, starter_dir):
    """The documented starter command, with its configured (adequate) training length."""
    run_kedro(
        project,
        env="starter",
        runtime_params={
            "inputs": {"rna": str(starter_dir / "rna.h5ad"), "adt": str(starter_dir / "adt.h5ad")}
        },
    )
    outputs = _outputs(project, "bmmc_cite_starter")
    mdata = md.read_h5mu(outputs["mudata"])
    assert mdata.n_obs == 600
    for model in TRAINERS:
        embedding = pd.read_parquet(outputs[model])
        assert embedding.shape[0] == 600
        assert np.isfinite(embedding.to_numpy()).all()
    wide = _check_metrics_table(outputs["table"])
    assert wide.notna().all().all()  # the starter has isolated labels
    print("\n" + outputs["markdown"].read_text())
    assert wide.loc["nmi", "totalvi"] >= 0.65
    assert wide.loc["nmi", "mofa"] >= 0.65


def test_same_seed_same_numbers(project):
    """Two runs with the same seeds give identical embeddings and metric tables."""
    params = {**DEMO, **FAST_TRAINING, "tracking": {"enabled": False}}
    outputs = _outputs(project, "demo")
    run_kedro(project, runtime_params=params)
    first = {name: pd.read_parquet(outputs[name]) for name in ("table", *TRAINERS)}
    run_kedro(project, runtime_params=params)
    for name, frame in first.items():
        pd.testing.assert_frame_equal(pd.read_parquet(outputs[name]), frame)
    summary = project / "data/07_model_output/demo/totalvi_training_summary.json"
    recorded = json.loads(summary.read_text())
    assert recorded["seeds"] == [0]
    assert recorded["versions"]["scvi-tools"] and recorded["versions"]["torch"]


def test_a_failed_model_keeps_the_others_and_resumes(project):
    """A model that fails leaves finished work in place; `--only-missing-outputs` resumes."""
    params = {**DEMO, **FAST_TRAINING, "tracking": {"enabled": False}}
    broken = copy.deepcopy(params)
    broken["modelling"]["multigrate"]["hyperparameters"]["model_kwargs"] = {"no_such_option": 1}
    with pytest.raises(TypeError, match="no_such_option"):
        run_kedro(project, runtime_params=broken)
    outputs = _outputs(project, "demo")
    assert outputs["mudata"].is_file() and outputs["mofa"].is_file()
    assert not outputs["multigrate"].exists()
    finished = outputs["mofa"].stat().st_mtime_ns
    run_kedro(project, runtime_params=params, only_missing_outputs=True)
    assert outputs["mofa"].stat().st_mtime_ns == finished  # not trained again
    _check_metrics_table(outputs["table"])


def test_a_dataset_without_labels_still_trains_and_says_what_was_skipped(project, small_raw):
    raw = small_raw.copy()
    del raw.obs["cell_type"]
    path = project / "unlabelled.h5ad"
    raw.write_h5ad(path)
    run_kedro(
        project,
        env="geo",
        runtime_params={
            **FAST_TRAINING,
            "inputs": {"geo": str(path)},
            "data_processing": {"subsample": {"n_cells": None}},
            "tracking": {"enabled": False},
        },
    )
    for model in TRAINERS:
        assert (project / f"data/07_model_output/bmmc_cite/{model}_embedding.parquet").is_file()
    table = pd.read_parquet(project / "data/08_reporting/bmmc_cite/metrics.parquet")
    label_free = table["metric"].isin(["ilisi", "pcr_comparison", "batch_correction"])
    assert table.loc[label_free, "value"].notna().all()  # label-free metrics are reported
    others = ["bio_conservation", "overall", "cell_cycle"]  # the demo has no phase either
    skipped = table[~label_free & ~table["metric"].isin(others)]
    assert skipped["value"].isna().all()
    assert skipped["note"].str.contains("no cell-type labels").all()
    assert "no cell-type labels" in (project / "data/08_reporting/bmmc_cite/metrics.md").read_text()
