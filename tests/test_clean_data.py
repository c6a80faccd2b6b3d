"""`make clean-data` removes what runs wrote and never touches the raw inputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT

RAW = [
    "01_raw/.gitkeep",
    "01_raw/GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad",
    "01_raw/GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad.gz.part",
    "01_raw/GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad.gz.part.json",
    "01_raw/placed_by_hand/rna.h5ad",
]
GENERATED = [
    "03_primary/demo.h5mu",
    "03_primary/.demo.h5mu.tmp-killed",
    "06_models/demo/mofa/seed_0/model.hdf5",
    "07_model_output/demo/mofa_embedding.parquet",
    "08_reporting/demo/metrics.md",
]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_clean_data_keeps_raw_inputs(tmp_path: Path) -> None:
    shutil.copy(PROJECT_ROOT / "Makefile", tmp_path / "Makefile")
    data = tmp_path / "data"
    layers = ["01_raw", "03_primary", "06_models", "07_model_output", "08_reporting"]
    for name in [*RAW, *GENERATED, *(f"{layer}/.gitkeep" for layer in layers)]:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(name)
    result = subprocess.run(
        ["make", "-s", "clean-data"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for name in RAW:
        assert (data / name).read_text() == name, f"{name} was removed"
    left = sorted(str(path.relative_to(data)) for path in data.rglob("*") if path.is_file())
    assert left == sorted({*RAW, *(f"{layer}/.gitkeep" for layer in layers)})
    assert sorted(path.name for path in data.iterdir()) == layers  # layer folders stay
