"""The comparison notebook runs against a fresh `kedro run`, so it never goes stale."""

from __future__ import annotations

import re
import shutil

import nbformat
from nbclient import NotebookClient

from .conftest import FAST_TRAINING, PROJECT_ROOT, run_kedro

NOTEBOOK = PROJECT_ROOT / "notebooks" / "compare_models.ipynb"


def test_comparison_notebook_executes(project):
    run_kedro(
        project,
        runtime_params={
            "demo": {"n_cells": 400, "n_genes": 300, "n_proteins": 15, "seed": 0},
            **FAST_TRAINING,
        },
    )
    (project / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, project / "notebooks")
    notebook = nbformat.read(project / "notebooks" / NOTEBOOK.name, as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(project / "notebooks")}},
    ).execute()
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "MLflow and the catalog agree on" in printed
    agreed = re.search(r"The API and the pipeline agree on (\d+) scores", printed)
    assert agreed and int(agreed.group(1)) >= 5
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) == 2  # the rebuilt summary figure and the UMAPs
