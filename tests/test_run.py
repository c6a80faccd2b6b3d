"""End-to-end: Kedro sessions as `kedro run` starts them, on the demo and on the real starter."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest

from cite_bench.methods import METHODS
from cite_bench.metrics import AGGREGATES, METRICS
from cite_bench.seeds import split_by_seed

from .conftest import FAST_TRAINING, WITHOUT_CONTROLS, kedro_cli, run_kedro
from .mlflow_helpers import check_run_layout

DEMO = {"demo": {"n_cells": 600, "n_genes": 400, "n_proteins": 20, "seed": 0}}


def _outputs(root: Path, dataset: str) -> dict[str, Path]:
    return {
        "mudata": root / f"data/03_primary/{dataset}.h5mu",
        "table": root / f"data/08_reporting/{dataset}/metrics.parquet",
        "markdown": root / f"data/08_reporting/{dataset}/metrics.md",
        **{
            model: root / f"data/07_model_output/{dataset}/{model}_embedding.parquet"
            for model in METHODS
        },
    }


def _check_metrics_table(path: Path, n_seeds: int = 1) -> pd.DataFrame:
    """The tidy table is complete and in range; returns metric x model means over seeds."""
    table = pd.read_parquet(path)
    assert set(table["method"]) == set(METHODS)
    assert len(table) == len(METHODS) * (len(METRICS) + len(AGGREGATES)) * n_seeds
    assert (table.groupby("method")["seed"].nunique() == n_seeds).all()
    wide = table.pivot_table(index="metric", columns="method", values="value", dropna=False)
    assert set(wide.index) == set(METRICS) | set(AGGREGATES)
    missing = table[table["value"].isna()]
    # Not applicable ("skipped: ..."), or failed on a degenerate control's geometry (kBET's
    # diffusion map on the one-hot cell-type embedding), said so.
    reasons = missing["note"].str.startswith(("skipped", "not computable"))
    assert reasons.all(), "a missing metric needs a reason"
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
    for model in METHODS:
        embeddings = split_by_seed(pd.read_parquet(outputs[model]))
        assert list(embeddings) == [0]
        assert list(embeddings[0].index) == list(mdata.obs_names)
        assert (project / f"data/06_models/demo/{model}/seed_0/model_class.json").is_file()
    table = _check_metrics_table(outputs["table"])
    markdown = outputs["markdown"].read_text()
    assert markdown.startswith("### Scaled scores (0 = worst control, 1 = best control)")
    header = next(line for line in markdown.splitlines() if line.startswith("| Metric |"))
    assert set(header.strip(" |").split(" | ")[1:]) == set(METHODS)
    assert "### Raw scores" in markdown
    assert markdown.count("**") >= 2 * 5
    # The run is tracked in the embedded MLflow store: one parent, one child per method.
    check_run_layout(f"sqlite:///{project / 'mlflow.db'}", pd.read_parquet(outputs["table"]))
    assert table.shape == (len(METRICS) + len(AGGREGATES), len(METHODS))
    check_controls(pd.read_parquet(outputs["table"]))
    check_graph_method(project, pd.read_parquet(outputs["table"]))
    check_external_method_with_one_command(project, outputs)


def check_graph_method(project: Path, table: pd.DataFrame) -> None:
    """WNN's graph metrics are filled, its embedding metrics n/a with the reason; its UMAP is
    drawn from its graph."""
    wnn = table[table["method"] == "wnn"].set_index("metric")
    graph_metrics = ["ari", "nmi", "graph_connectivity", "isolated_label_f1", "clisi", "ilisi"]
    assert wnn.loc[graph_metrics, "value"].notna().all()
    for key in ("asw_label", "asw_batch", "pcr_comparison"):
        assert np.isnan(wnn.loc[key, "value"])
        assert wnn.loc[key, "note"] == "skipped: the method outputs a cell graph, not an embedding"
    assert np.isfinite(wnn.loc["overall", "value"])
    umap = pd.read_parquet(project / "data/08_reporting/demo/umap/wnn.parquet")
    assert umap.shape == (600, 2) and np.isfinite(umap.to_numpy()).all()


def check_external_method_with_one_command(project: Path, outputs: dict[str, Path]) -> None:
    """An embedding in a prediction file (X, barcodes as obs_names) is scored on the finished
    run with one command, exactly as the trained method that made it."""
    import anndata as ad

    embedding = split_by_seed(pd.read_parquet(outputs["pca_rna_adt"]))[0]
    path = project / "prediction.h5ad"
    ad.AnnData(X=embedding.to_numpy(), obs=pd.DataFrame(index=embedding.index)).write_h5ad(path)
    result = kedro_cli(
        project, "run", "--pipeline", "external", "--params", f"external.copy={path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_parquet(outputs["table"]).set_index(["method", "metric"])
    copy, trained = table.loc["copy"], table.loc["pca_rna_adt"]
    assert (copy["role"] == "external").all()
    pd.testing.assert_series_equal(copy["value"], trained["value"], rtol=1e-5)
    pd.testing.assert_series_equal(copy["scaled"], trained["scaled"], rtol=1e-5)
    assert "copy" in outputs["markdown"].read_text()
    # Its own MLflow child run, with the file's checksum.
    from mlflow.tracking import MlflowClient

    from cite_bench.datasets import file_sha256

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cite-bench")
    (run,) = client.search_runs([experiment.experiment_id], "tags.model = 'copy'")
    assert run.data.tags["role"] == "external"
    assert run.data.tags["sha256"] == file_sha256(path)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["nmi"] == pytest.approx(copy.loc["nmi", "value"])


def check_controls(table: pd.DataFrame) -> None:
    """The controls bound the scaled scores: the random embedding's bio conservation near 0,
    the jittered cell-type embedding's near 1; the reference is not scored against itself."""
    scaled = table.pivot_table(index="metric", columns="method", values="scaled", dropna=False)
    assert scaled.loc["bio_conservation", "random_gaussian"] < 0.15
    # The jittered one (Open Problems' positive control): without jitter, cells of a type are
    # one point, and on the starter's 41 types Leiden on that tied graph merges some of them.
    assert scaled.loc["bio_conservation", "cell_type_embedding_jittered"] > 0.85
    reference = table[(table["method"] == "pca_rna") & table["metric"].isin(["pcr_comparison"])]
    assert reference["value"].isna().all()
    assert reference["note"].str.contains("unintegrated reference").all()


def test_pipelines_run_one_after_another(project):
    """Artifacts persist through the catalog between separate `kedro run --pipeline` calls."""
    params = {**DEMO, **FAST_TRAINING, **WITHOUT_CONTROLS}
    run_kedro(project, pipeline_names=["data_processing"], runtime_params=params)
    assert _outputs(project, "demo")["mudata"].is_file()
    run_kedro(project, pipeline_names=["modelling"], runtime_params=params)
    assert all(_outputs(project, "demo")[model].is_file() for model in METHODS)
    run_kedro(project, pipeline_names=["evaluation"], runtime_params=params)
    _check_metrics_table(_outputs(project, "demo")["table"])


def test_one_model_can_be_run_by_namespace(project):
    params = {**DEMO, **FAST_TRAINING, **WITHOUT_CONTROLS}
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


@pytest.mark.slow
def test_starter_run_reaches_published_quality(project, starter_dir):
    """The documented starter command, with its configured (adequate) training length."""
    run_kedro(
        project,
        env="starter",
        runtime_params={
            "inputs": {
                "path": str(starter_dir / "rna.h5ad"),
                "adt_path": str(starter_dir / "adt.h5ad"),
            }
        },
    )
    outputs = _outputs(project, "bmmc_cite_starter")
    mdata = md.read_h5mu(outputs["mudata"])
    assert mdata.n_obs == 600
    for model in METHODS:
        embedding = pd.read_parquet(outputs[model])
        assert embedding.shape[0] == 600
        assert np.isfinite(embedding.to_numpy()).all()
    wide = _check_metrics_table(outputs["table"])
    table = pd.read_parquet(outputs["table"])
    print("\n" + outputs["markdown"].read_text())
    # The starter has isolated labels and a phase column: every metric applies, except the
    # reference-based ones for the reference itself.
    graph_methods = [name for name, method in METHODS.items() if method.output == "graph"]
    needs_embedding = [key for key, metric in METRICS.items() if "embedding" in metric.needs]
    controls = [name for name, method in METHODS.items() if method.role == "control"]
    embeddings = wide.drop(columns=["pca_rna", *graph_methods, *controls])
    assert embeddings.notna().all().all()
    graph_only = wide[graph_methods].drop(index=[*needs_embedding, "pcr_comparison"])
    assert graph_only.notna().all().all()
    own = table[
        (table["method"] == "pca_rna") & table["metric"].isin(["cell_cycle", "pcr_comparison"])
    ]
    assert own["value"].isna().all()
    assert own["note"].str.contains("unintegrated reference").all()
    pca_rna = table[table["method"] == "pca_rna"].set_index("metric")
    counted = [key for key, m in METRICS.items() if m.group == "bio" and key != "cell_cycle"]
    assert pca_rna.loc["bio_conservation", "value"] == pytest.approx(
        pca_rna.loc[counted, "value"].mean()
    )
    check_controls(table)
    assert wide.loc["nmi", "totalvi"] >= 0.65
    assert wide.loc["nmi", "mofa"] >= 0.65


def test_a_failed_model_keeps_the_others_and_resumes(project):
    """A model that fails leaves finished work in place; `--only-missing-outputs` resumes."""
    params = {**DEMO, **FAST_TRAINING, **WITHOUT_CONTROLS, "tracking": {"enabled": False}}
    broken = copy.deepcopy(params)
    broken["modelling"] = {
        "multigrate": {"hyperparameters": {"model_kwargs": {"no_such_option": 1}}}
    }
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
            "inputs": {"path": str(path)},
            "data_processing": {"subsample": {"n_cells": None}},
            "tracking": {"enabled": False},
        },
    )
    for model in METHODS:
        assert (project / f"data/07_model_output/bmmc_cite/{model}_embedding.parquet").is_file()
    table = pd.read_parquet(project / "data/08_reporting/bmmc_cite/metrics.parquet")
    # Controls that need labels are skipped, with the reason.
    needs_labels = [name for name, method in METHODS.items() if method.needs_labels]
    skipped_controls = table[table["method"].isin(needs_labels)]
    assert skipped_controls["value"].isna().all()
    metric_rows = skipped_controls[skipped_controls["metric"].isin(METRICS)]
    assert metric_rows["note"].str.contains("needs cell-type labels").all()
    table = table[~table["method"].isin(needs_labels)]
    table = table[~((table["method"] == "pca_rna") & (table["metric"] == "pcr_comparison"))]
    table = table[~((table["method"] == "wnn") & (table["metric"] == "pcr_comparison"))]
    label_free = table["metric"].isin(["ilisi", "pcr_comparison", "batch_correction"])
    assert table.loc[label_free, "value"].notna().all()  # label-free metrics are reported
    others = ["bio_conservation", "overall", "cell_cycle"]  # the demo has no phase either
    skipped = table[~label_free & ~table["metric"].isin(others)]
    assert skipped["value"].isna().all()
    # The graph method's embedding metrics give that reason first.
    graph_only = skipped["note"].str.contains("outputs a cell graph")
    assert (skipped["method"][graph_only] == "wnn").all()
    assert skipped.loc[~graph_only, "note"].str.contains("no cell-type labels").all()
    assert "no cell-type labels" in (project / "data/08_reporting/bmmc_cite/metrics.md").read_text()


# --- users' own data: every input format, built from the real starter subset -----------------


def _tenx_h5(folder: Path, starter_dir: Path) -> tuple[str, dict]:
    from .builders import cell_ranger_counts, starter_pair, write_cell_ranger_h5

    path = write_cell_ranger_h5(
        cell_ranger_counts(*starter_pair(starter_dir, "s1d1")), folder / "filtered.h5"
    )
    return "tenx", {"path": str(path)}


def _tenx_folder(folder: Path, starter_dir: Path) -> tuple[str, dict]:
    from .builders import cell_ranger_counts, starter_pair, write_cell_ranger_folder

    path = write_cell_ranger_folder(
        cell_ranger_counts(*starter_pair(starter_dir, "s1d2")), folder / "filtered"
    )
    return "tenx", {"path": str(path)}


def _h5mu(folder: Path, starter_dir: Path) -> tuple[str, dict]:
    from .builders import starter_pair, write_h5mu

    return "h5mu", {"path": str(write_h5mu(*starter_pair(starter_dir), folder / "data.h5mu"))}


def _h5ad_single_sample(folder: Path, starter_dir: Path) -> tuple[str, dict]:
    """One sample, counts in X (no counts layer), 10x feature types, labels, no batch."""
    from .builders import cell_ranger_counts, starter_pair

    rna, adt = starter_pair(starter_dir, "s1d2")
    adata = cell_ranger_counts(rna, adt)
    adata.obs["cell_type"] = rna.obs["cell_type"].to_numpy()
    adata.write_h5ad(folder / "sample.h5ad")
    return "h5ad", {"path": str(folder / "sample.h5ad")}


# (format, how to write it -> (dataset name, inputs), cells, batches, has labels)
INPUT_FORMATS = [
    ("10x .h5, one sample", _tenx_h5, 311, {"all"}, False),
    ("10x matrix folder, one sample", _tenx_folder, 289, {"all"}, False),
    (".h5mu with rna and prot", _h5mu, 600, {"s1d1", "s1d2"}, True),
    (".h5ad, counts in X, no batch", _h5ad_single_sample, 289, {"all"}, True),
]


@pytest.mark.parametrize(
    ("case", "write", "n_cells", "batches", "labelled"),
    INPUT_FORMATS,
    ids=[c[0] for c in INPUT_FORMATS],
)
def test_data_processing_reads_every_input_format(
    project, tmp_path_factory, starter_dir, case, write, n_cells, batches, labelled
):
    dataset, inputs = write(tmp_path_factory.mktemp("input"), starter_dir)
    run_kedro(
        project,
        pipeline_names=["data_processing"],
        runtime_params={"dataset": dataset, "inputs": inputs, "tracking": {"enabled": False}},
    )
    mdata = md.read_h5mu(project / f"data/03_primary/{dataset}.h5mu")
    assert mdata.n_obs == n_cells
    assert mdata["adt"].n_vars == 134
    assert mdata["rna"].var["highly_variable"].all()
    assert set(mdata.obs["batch"].astype(str)) == batches
    assert ("cell_type" in mdata.obs) == labelled
    cells = pd.read_parquet(project / f"data/03_primary/{dataset}_cells.parquet")
    assert list(cells.index) == list(mdata.obs_names)


def test_several_cell_ranger_samples_from_the_command_line(project, tmp_path, starter_dir):
    """The README's command: one Cell Ranger output per sample, named on the command line."""
    from .builders import (
        cell_ranger_counts,
        starter_pair,
        write_cell_ranger_folder,
        write_cell_ranger_h5,
    )

    first = write_cell_ranger_h5(
        cell_ranger_counts(*starter_pair(starter_dir, "s1d1")), tmp_path / "s1d1.h5"
    )
    second = write_cell_ranger_folder(
        cell_ranger_counts(*starter_pair(starter_dir, "s1d2")), tmp_path / "s1d2"
    )
    params = f"inputs.samples.s1d1={first},inputs.samples.s1d2={second},tracking.enabled=false"
    result = kedro_cli(project, "run", "--pipeline", "data_processing", "--params", params)
    assert result.returncode == 0, result.stderr[-3000:]
    mdata = md.read_h5mu(project / "data/03_primary/s1d1-s1d2.h5mu")  # named after the samples
    assert mdata.n_obs == 600
    assert mdata.obs["batch"].astype(str).value_counts().to_dict() == {"s1d1": 311, "s1d2": 289}
    assert mdata.obs_names[0].endswith("-1-s1d1")  # barcodes made unique by sample
    assert set(mdata.obs["Site"].astype(str)) == {"s1"}  # derived from the sample names


def test_single_sample_cell_ranger_file_runs_end_to_end(project, tmp_path, starter_dir):
    """One 10x sample (counts in X, no batch, no labels): every model trains, without a batch
    covariate, and each metric that cannot apply is reported as such, with its reason."""
    import torch

    _, inputs = _tenx_h5(tmp_path, starter_dir)
    run_kedro(
        project,
        runtime_params={
            **FAST_TRAINING,
            "dataset": "tenx",
            "inputs": inputs,
            "tracking": {"enabled": False},
        },
    )
    outputs = _outputs(project, "tenx")
    for model in ("mofa", "totalvi", "multigrate", "pca_rna", "pca_rna_adt"):
        assert len(pd.read_parquet(outputs[model])) == 311
    table = pd.read_parquet(outputs["table"])
    assert table["value"].isna().all()  # no labels, one batch: nothing to score
    assert table["note"].str.startswith("skipped").all()
    integrated = table[table["method"].isin(["mofa", "totalvi", "multigrate"])]
    notes = integrated.set_index(["method", "metric"])["note"]
    for metric in ("ilisi", "pcr_comparison"):  # the batch metrics that need no labels
        assert (notes.xs(metric, level="metric") == "skipped: only one batch in 'batch'").all()
    assert notes.xs("ari", level="metric").str.contains("no cell-type labels").all()
    markdown = outputs["markdown"].read_text()
    assert "only one batch in 'batch'" in markdown and "no cell-type labels" in markdown
    models = project / "data/06_models/tenx"
    totalvi = torch.load(models / "totalvi/seed_0/model.pt", weights_only=False)
    assert totalvi["attr_dict"]["registry_"]["setup_args"]["batch_key"] is None
    multigrate = torch.load(models / "multigrate/seed_0/model.pt", weights_only=False)
    setup = multigrate["attr_dict"]["registry_"]["setup_args"]
    assert setup["categorical_covariate_keys"] is None
