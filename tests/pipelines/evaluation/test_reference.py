"""The fast evaluation agrees with scib's own code path (the reference) within 0.01."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from cite_bench.pipelines.evaluation.nodes import score_embedding
from cite_bench.pipelines.evaluation.reference import REFERENCE_KEYS, scib_reference_metrics

PARAMS = {
    "n_neighbors": 15,
    "lisi_neighbors": 90,
    "leiden_resolutions": [0.1, 2.0, 20],
    "leiden_flavor": "igraph",  # the default; scib's path clusters with leidenalg
    "seed": 0,
}
TOLERANCE = 0.01


def _compare(embedding: pd.DataFrame, cells: pd.DataFrame, columns) -> pd.DataFrame:
    fast = score_embedding(embedding, embedding, cells, PARAMS, columns).set_index("metric")
    reference = scib_reference_metrics(embedding, cells, PARAMS, columns)
    return pd.DataFrame(
        {key: (fast.loc[key, "value"], reference[key]) for key in REFERENCE_KEYS},
        index=["fast", "scib"],
    ).T


@pytest.fixture(scope="module")
def starter_embedding(starter_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A PCA of the real starter RNA: 600 BMMC cells, 41 types, 2 batches."""
    rna = ad.read_h5ad(starter_dir / "rna.h5ad")
    rna.X = rna.layers["counts"].copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    sc.pp.pca(rna, n_comps=20, random_state=0)
    cells = rna.obs.copy()
    cells["cell_type"] = cells["cell_type"].astype("category")
    return pd.DataFrame(rna.obsm["X_pca"], index=rna.obs_names), cells


def test_fast_path_matches_scib_on_real_data(starter_embedding, columns):
    embedding, cells = starter_embedding
    table = _compare(embedding, cells, columns)
    print("\n" + table.to_string())
    assert table.notna().all().all()
    assert ((table["fast"] - table["scib"]).abs() <= TOLERANCE).all(), table


def test_fast_path_matches_scib_with_isolated_labels_and_batch_effects(columns):
    rng = np.random.default_rng(3)
    n_cells = 900
    labels = rng.choice([f"type{i}" for i in range(6)], n_cells)
    batches = rng.choice(["s1d1", "s1d2", "s2d1"], n_cells)
    batches[labels == "type5"] = "s2d1"  # an isolated label
    cells = pd.DataFrame(
        {"cell_type": pd.Categorical(labels), "batch": pd.Categorical(batches)},
        index=[f"c{i}" for i in range(n_cells)],
    )
    centres = rng.normal(0, 4, (6, 12))
    shifts = rng.normal(0, 1.5, (3, 12))
    values = (
        centres[cells["cell_type"].cat.codes]
        + shifts[cells["batch"].cat.codes]
        + rng.normal(size=(n_cells, 12))
    )
    embedding = pd.DataFrame(values, index=cells.index)
    table = _compare(embedding, cells, columns)
    assert ((table["fast"] - table["scib"]).abs() <= TOLERANCE).all(), table
    # The silhouettes are exact (up to float32 rounding in sklearn), not approximated.
    for key in ("asw_label", "asw_batch", "isolated_label_asw"):
        assert table.loc[key, "fast"] == pytest.approx(table.loc[key, "scib"], abs=1e-6)
