"""kedro-viz: the static build works and shows the pipelines with collapsible model namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cite_bench.methods import METHODS


def test_kedro_viz_build(project):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "viz", "build"],
        check=False,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (project / "build" / "index.html").is_file()
    graph = json.loads((project / "build" / "api" / "main").read_text())
    pipelines = {pipeline["id"] for pipeline in graph["pipelines"]}
    assert {"__default__", "data_processing", "modelling", "evaluation"} <= pipelines
    namespaces = set(graph["modular_pipelines"])
    for model in METHODS:
        assert {f"modelling.{model}", f"evaluation.{model}"} <= namespaces
    layers = set(graph["layers"])
    assert {"raw", "primary", "models", "model_output", "reporting"} <= layers
