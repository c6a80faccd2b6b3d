"""Shared fixtures: small simulated data, the real starter subset, and a scratch Kedro project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import mudata as md
import pytest

if TYPE_CHECKING:
    import pandas as pd

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTER_DIR = Path(
    os.environ.get("CITE_BENCH_STARTER_DIR", PROJECT_ROOT.parent / "shared/data/bmmc_cite_starter")
)
COLUMNS = {
    "batch": "batch",
    "label": "cell_type",
    "site": "Site",
    "donor": "DonorNumber",
    "phase": "phase",
}
PROCESSING = {
    "subsample": {"n_cells": None, "seed": 0},
    "min_cells_per_batch": 5,
    "counts_layer": "counts",
    "max_adt_features": 500,
    "target_sum": 10000,
    "n_top_genes": 200,
    "clr_axis": 1,
}


@pytest.fixture(scope="session")
def columns() -> dict[str, str]:
    return dict(COLUMNS)


@pytest.fixture(scope="session")
def processing_params() -> dict:
    return {**PROCESSING, "subsample": dict(PROCESSING["subsample"])}


@pytest.fixture(scope="session")
def small_raw() -> ad.AnnData:
    """A small simulated dataset in the GEO layout (400 cells, 300 genes, 20 proteins)."""
    from cite_bench.simulation import simulate_cite_seq

    return simulate_cite_seq(n_cells=400, n_genes=300, n_proteins=20, seed=1)


@pytest.fixture(scope="session")
def small_mudata(small_raw, processing_params, columns) -> md.MuData:
    """The small dataset through the whole data_processing chain."""
    from cite_bench.pipelines.data_processing import nodes

    paired = nodes.validate_input(small_raw, columns, processing_params)
    rna = nodes.preprocess_rna(paired, processing_params, columns)
    adt = nodes.preprocess_adt(paired, processing_params)
    return nodes.assemble_mudata(rna, adt, paired)


@pytest.fixture(scope="session")
def starter_dir() -> Path:
    if not (STARTER_DIR / "rna.h5ad").is_file() or not (STARTER_DIR / "adt.h5ad").is_file():
        pytest.skip(
            f"real BMMC starter data not found in {STARTER_DIR} "
            "(set CITE_BENCH_STARTER_DIR to the folder with rna.h5ad and adt.h5ad)"
        )
    return STARTER_DIR


def copy_project(target: Path) -> Path:
    """A scratch copy of the project's code and configuration with an empty data/ folder."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("conf", "src", "pyproject.toml", ".telemetry"):
        source = PROJECT_ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("local", "__pycache__", "*.egg-info")
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy(source, target / name)
    (target / "conf" / "local").mkdir(exist_ok=True)
    (target / "data").mkdir()
    return target


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A scratch copy of the project, run from its own directory so that artifacts land in a
    temporary data/ folder."""
    monkeypatch.chdir(copy_project(tmp_path))
    return tmp_path


def kedro_cli(
    project_path: Path, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``kedro <arguments>`` in a subprocess, as a user types it, with telemetry off."""
    return subprocess.run(
        [sys.executable, "-m", "kedro", *arguments],
        check=False,
        cwd=project_path,
        # A wide console: Kedro's rich log lines are not wrapped mid-message.
        env={**os.environ, **(env or {}), "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "250"},
        capture_output=True,
        text=True,
    )


def run_kedro(project_path: Path, env: str | None = None, **run_kwargs) -> dict:
    """Run a Kedro session in ``project_path`` as ``kedro run`` would."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    runtime_params = run_kwargs.pop("runtime_params", None)
    bootstrap_project(project_path)
    with KedroSession.create(
        project_path=project_path, env=env, runtime_params=runtime_params
    ) as session:
        return session.run(**run_kwargs)


# Training short enough for tests; used with runtime_params.
# Training short enough for tests: each method's own ``fast`` settings.
FAST_TRAINING = {"training_length": "fast"}
# For end-to-end tests of the pipelines' mechanics (reruns, resumes, seeds, kills): the controls
# are scored in the tests that check them (test_default_run_on_the_demo, the starter run).
WITHOUT_CONTROLS = {"controls": {"enabled": False}}

# A small demo with short training, no controls and the fast metrics with one Leiden seed, as
# `--params` for the command line: the pipelines' mechanics under other runners and commands
# (Dask, the matrix), not the scores.
QUICK = {
    "demo": {"n_cells": 600, "n_genes": 600, "n_proteins": 20, "seed": 0},
    **FAST_TRAINING,
    **WITHOUT_CONTROLS,
}
QUICK_CLI = ",".join(
    [
        *(f"demo.{key}={value}" for key, value in QUICK["demo"].items()),
        "training_length=fast",
        "controls.enabled=false",
        "evaluation.metrics=fast",
        "evaluation.leiden_seeds=[0]",
    ]
)


@pytest.fixture(scope="session")
def starter_embedding(starter_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A PCA of the real starter RNA: 600 BMMC cells, 41 types, 2 batches."""
    import pandas as pd
    import scanpy as sc

    rna = ad.read_h5ad(starter_dir / "rna.h5ad")
    rna.X = rna.layers["counts"].copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    sc.pp.pca(rna, n_comps=20, random_state=0)
    cells = rna.obs.copy()
    cells["cell_type"] = cells["cell_type"].astype("category")
    return pd.DataFrame(rna.obsm["X_pca"], index=rna.obs_names), cells
