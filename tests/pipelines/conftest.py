"""Small inputs for in-memory pipeline runs: simulated cells, an embedding of them, and the
evaluation settings of conf/base with the fast preset and one Leiden seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

CONF = Path(__file__).resolve().parents[2] / "conf" / "base"


@pytest.fixture(scope="session")
def simulated_cells():
    """400 simulated cells (cell types, batches) and two PCAs of their RNA: an "integrated"
    one (log-normalised, 10 dimensions) and an "unintegrated" one (raw counts, 8)."""
    from cite_bench.simulation import simulate_cite_seq

    adata = simulate_cite_seq(n_cells=400, n_genes=200, n_proteins=10, seed=1)
    counts = np.asarray(adata.layers["counts"].todense(), dtype=np.float64)

    def pca(matrix: np.ndarray, n: int) -> pd.DataFrame:
        centred = matrix - matrix.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        return pd.DataFrame(u[:, :n] * s[:n], index=adata.obs_names)

    normalised = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    cells = adata.obs[["cell_type", "batch", "Site", "DonorNumber"]].copy()
    return cells, pca(normalised, 10), pca(counts, 8)


@pytest.fixture(scope="session")
def evaluation_params() -> dict:
    """conf/base's evaluation settings, made quick: the fast preset, one Leiden seed, few
    resolutions and neighbours, on the CPU in this process."""
    params = yaml.safe_load((CONF / "parameters_evaluation.yml").read_text())["evaluation"]
    return {
        **params,
        "metrics": "fast",
        "leiden_seeds": [0],
        "leiden_resolutions": [0.1, 2.0, 5],
        "leiden_processes": 1,
        "lisi_neighbors": 30,
        "device": "cpu",
    }
