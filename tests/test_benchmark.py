"""The benchmark command: every stage is measured, and the report names the machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from cite_bench.benchmark import format_report, machine_description, summarise


def test_benchmark_command_measures_every_stage(project):
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
        "evaluate mofa (fast)",
        "evaluate mofa (scib)",
    } <= stages
    steps = set(results["step"])
    assert {"simulate", "validate_input", "preprocess_rna", "train, per iteration"} <= steps
    assert {"knn", "leiden", "silhouettes", "kbet", "total"} <= steps
    timed = results.dropna(subset=["wall_s"])
    assert (timed["wall_s"] >= 0).all()
    assert (results["peak_rss_gb"] > 0.05).all()  # a Python process with numpy is larger
    report = (output / "benchmark.md").read_text()
    assert "Machine: cpu:" in report and "torch device:" in report
    assert "| 400 |" in report  # the evaluation summary row
    assert "speed-up" in report


def test_summary_compares_like_with_like():
    rows = [
        ("evaluate a (fast)", "knn", 1.0),
        ("evaluate a (fast)", "leiden", 2.0),
        ("evaluate a (fast)", "kbet", 5.0),  # scib's path has no kBET: not compared
        ("evaluate a (fast)", "total", 8.0),
        ("evaluate a (scib)", "total", 30.0),
    ]
    results = pd.DataFrame(rows, columns=["stage", "step", "wall_s"]).assign(
        n_cells=100, peak_rss_gb=1.0, note=""
    )
    summary = summarise(results).iloc[0]
    assert summary["fast, all metrics (s)"] == 8.0
    assert summary["fast, scib's metrics (s)"] == 3.0
    assert summary["speed-up"] == 10.0
    report = format_report(results, machine_description(), "kedro benchmark")
    assert "| evaluate a (fast) | kbet | 5.0 / 1.00 |" in report
