"""The computations metrics share: pairing embeddings with cells, Leiden, isolated labels, cell
cycle; checked against scanpy's and scib's own functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cite_bench.scoring import (
    cell_cycle_conservation,
    embedding_anndata,
    isolated_label_f1,
    leiden_arguments,
    leiden_clusterings,
)

from .pipelines.evaluation.test_nodes import PARAMS, _cells, _embedding


def test_embedding_must_match_the_cells(columns):
    cells = _cells()
    embedding = _embedding(cells, 5).iloc[:-3]
    with pytest.raises(ValueError, match="same cells"):
        embedding_anndata(embedding, cells)
    broken = _embedding(cells, 5)
    broken.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embedding_anndata(broken, cells)


def test_cell_cycle_conservation_rewards_keeping_the_phase_signal():
    rng = np.random.default_rng(0)
    n = 600
    phases = pd.Series(rng.choice(["G1", "S", "G2M"], n))
    batches = np.repeat(["s1d1", "s1d2"], n // 2)
    codes = phases.astype("category").cat.codes.to_numpy()
    signal = np.eye(3)[codes] * 3
    unintegrated = np.hstack([signal, rng.normal(size=(n, 7))])
    kept = np.hstack([signal, rng.normal(size=(n, 7))])
    lost = rng.normal(size=(n, 10))
    assert cell_cycle_conservation(kept, unintegrated, phases, batches) > 0.9
    assert cell_cycle_conservation(lost, unintegrated, phases, batches) < 0.2
    one_phase = pd.Series(["G1"] * n)
    assert np.isnan(cell_cycle_conservation(kept, unintegrated, one_phase, batches))


def test_isolated_label_f1_matches_scib(columns):
    """With leidenalg, the one-clustering-per-resolution F1 equals scib's own."""
    import scanpy as sc
    import scib

    cells = _cells()
    cells.loc[cells["cell_type"] == "type3", "batch"] = "s1d1"
    adata = embedding_anndata(_embedding(cells, 3, seed=2), cells)
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=15)
    resolutions = [0.2, 0.5, 1.0, 1.5]
    params = {**PARAMS, "leiden_flavor": "leidenalg"}
    clusterings = leiden_clusterings(adata, resolutions, leiden_arguments(params))
    ours = isolated_label_f1(adata.obs, "cell_type", "batch", clusterings)
    theirs = scib.me.isolated_labels_f1(
        adata.copy(), "cell_type", "batch", embed=None, resolutions=resolutions, verbose=False
    )
    assert ours == pytest.approx(theirs)


def test_igraph_clusterings_are_scanpys(columns):
    """Converting the graph once gives exactly the clusters of sc.tl.leiden(flavor="igraph")."""
    import scanpy as sc

    cells = _cells(n_types=5, per_type=80)
    adata = embedding_anndata(_embedding(cells, 2, seed=4), cells)
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=15)
    arguments = leiden_arguments(PARAMS)
    ours = leiden_clusterings(adata, [0.3, 1.0, 2.5], arguments)
    for resolution, clusters in zip([0.3, 1.0, 2.5], ours, strict=True):
        sc.tl.leiden(adata, resolution=resolution, key_added="expected", **arguments)
        np.testing.assert_array_equal(clusters, adata.obs["expected"].to_numpy().astype(str))
    assert len(set(ours[2])) > len(set(ours[0]))
