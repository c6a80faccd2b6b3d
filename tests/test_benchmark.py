"""The benchmark command: the pipelines run through Kedro, every node is measured, and the
report names the machine and the targets."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cite_bench.benchmark import (
    EVALUATE,
    SCIB_METRICS_STAGE,
    format_report,
    machine_description,
    summarise,
)


@pytest.mark.slow
def test_benchmark_times_the_pipelines_nodes(project):
    output = project / "data/08_reporting/benchmark"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kedro",
            "benchmark",
            "--sizes",
            "400",
            "--models",
            "pca_rna,mofa",
            "--epochs",
            "2",
            "--reference-up-to",
            "400",
            "--output",
            str(output),
        ],
        check=False,
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = pd.read_parquet(output / "benchmark.parquet")
    stages = set(results["stage"])
    assert {
        "data",
        "preprocessing",
        "train pca_rna",
        "train mofa",
        EVALUATE,
        SCIB_METRICS_STAGE,
        "scib's path, igraph",
        "scib's path, leidenalg",
    } <= stages
    steps = set(results["step"])
    # The pipelines' own nodes, by their Kedro names, and the scoring steps within them.
    assert {"validate_input", "preprocess_rna", "modelling.mofa.train"} <= steps
    assert "evaluation.mofa.compute_metrics" in steps
    scoring = {f"evaluation.mofa.compute_metrics: {step}" for step in ("knn", "leiden", "kbet")}
    assert scoring | {"whole stage"} <= steps
    assert "train, per iteration" in steps
    timed = results.dropna(subset=["wall_s"])
    assert (timed["wall_s"] >= 0).all()
    peaks = results.dropna(subset=["peak_rss_gb"])
    assert (peaks["peak_rss_gb"] > 0.05).all()  # a Python process with numpy is larger
    report = (output / "benchmark.md").read_text()
    assert "Machine: cpu:" in report and "torch device:" in report
    assert "| 400 |" in report  # the summary row
    assert "speed-up, like for like" in report
    # Nothing of the benchmark's runs lands in the project's own data or tracking store.
    assert not (project / "data/03_primary").exists()
    assert not (project / "mlflow.db").exists()


def test_summary_reads_the_targets_off_the_stages():
    rows = [
        ("preprocessing", "process peak", np.nan, 3.5),
        ("train pca_rna", "process peak", np.nan, 1.5),
        ("train pca_rna_adt", "process peak", np.nan, 2.5),
        (EVALUATE, "evaluation.mofa.compute_metrics", 20.0, 2.0),
        (EVALUATE, "evaluation.mofa.compute_metrics: kbet", 5.0, np.nan),
        (EVALUATE, "evaluation.totalvi.compute_metrics", 30.0, 2.0),
        (EVALUATE, "whole stage", 70.0, 2.2),
        (EVALUATE, "process peak", np.nan, 2.2),
        (SCIB_METRICS_STAGE, "evaluation.mofa.compute_metrics", 4.0, 1.0),
        (SCIB_METRICS_STAGE, "evaluation.totalvi.compute_metrics", 6.0, 1.0),
        ("scib's path, igraph", "mofa", 20.0, 1.0),
        ("scib's path, igraph", "totalvi", 30.0, 1.0),
        ("scib's path, igraph", "process peak", np.nan, 1.0),
        ("scib's path, leidenalg", "mofa", 200.0, 1.0),
        ("scib's path, leidenalg", "totalvi", 300.0, 1.0),
    ]
    results = pd.DataFrame(rows, columns=["stage", "step", "wall_s", "peak_rss_gb"]).assign(
        n_cells=100, note=""
    )
    summary = summarise(results).iloc[0]
    assert summary["embeddings"] == 2
    assert summary["evaluation, whole stage (s)"] == 70.0
    assert summary["evaluation, metric nodes (s)"] == 50.0  # the nodes, not their steps
    assert summary["preprocessing peak (GB)"] == 3.5
    assert summary["PCA baselines peak (GB)"] == 2.5
    assert summary["ours, scib's metrics, 1 seed (s)"] == 10.0
    assert summary["speed-up, like for like"] == 5.0
    assert summary["speed-up, vs scib as shipped"] == 50.0
    report = format_report(results, machine_description(), "kedro benchmark")
    assert "| evaluate | evaluation.mofa.compute_metrics: kbet | 5.0 |" in report
