"""The computations metrics share: pairing embeddings with cells, Leiden, isolated labels, cell
cycle; checked against scanpy's and scib's own functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cite_bench.leiden import leiden_clusterer
from cite_bench.metrics import cell_cycle_conservation, isolated_label_f1
from cite_bench.scoring import ScoringData, embedding_anndata
from tests.builders import SCORING_PARAMS as PARAMS
from tests.builders import clustered_embedding as _embedding
from tests.builders import labelled_cells as _cells


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
    with leiden_clusterer(adata, params) as cluster:
        clusterings = cluster([(PARAMS["seed"], resolution) for resolution in resolutions])
    ours = isolated_label_f1(adata.obs, "cell_type", "batch", clusterings)
    theirs = scib.me.isolated_labels_f1(
        adata.copy(), "cell_type", "batch", embed=None, resolutions=resolutions, verbose=False
    )
    assert ours == pytest.approx(theirs)


def test_igraph_clusterings_match_scanpys_in_any_process(columns):
    """Leiden on the graph with each edge once optimises scanpy's objective: per (seed,
    resolution), clusters as good as sc.tl.leiden(flavor="igraph")'s by modularity, the same
    partition where the resolution recovers the cell types; and the same clusters in this
    process and over a pool of two, in any order."""
    import igraph
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score

    cells = _cells(n_types=5, per_type=80)
    adata = embedding_anndata(_embedding(cells, 2, seed=4), cells)
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=15)
    tasks = [(0, 0.3), (0, 1.0), (0, 2.5), (7, 1.0)]
    with leiden_clusterer(adata, PARAMS, processes=1) as cluster:
        ours = cluster(tasks)
    with leiden_clusterer(adata, PARAMS, processes=2) as cluster:
        pooled = cluster(tasks[::-1])[::-1]
    connectivities = adata.obsp["connectivities"]
    sources, targets = connectivities.nonzero()
    graph = igraph.Graph(n=adata.n_obs, edges=list(zip(sources, targets, strict=True)))
    graph.es["weight"] = np.asarray(connectivities[sources, targets]).ravel()
    for (seed, resolution), clusters, from_pool in zip(tasks, ours, pooled, strict=True):
        np.testing.assert_array_equal(from_pool, clusters)
        sc.tl.leiden(
            adata,
            resolution=resolution,
            key_added="scanpy",
            random_state=seed,
            flavor="igraph",
            n_iterations=2,
            directed=False,
        )
        theirs = adata.obs["scanpy"].to_numpy().astype(int)
        quality = [
            graph.modularity(membership, weights="weight", resolution=resolution)
            for membership in (clusters, theirs)
        ]
        assert quality[0] == pytest.approx(quality[1], abs=0.02)  # 0.003 apart at 2.5 here
        if resolution <= 1.0:  # the five cell types: the same partition
            assert adjusted_rand_score(theirs, clusters) > 0.95
        # Above, the split of over-clustered types is a near-tie that either may break its way
        # (ARI 0.87 here, as for two seeds of scanpy's): only the modularity is compared.
    assert len(set(ours[2])) > len(set(ours[0]))


def test_other_leiden_seeds_search_a_window_around_the_first_seeds_best(columns):
    """With leiden_seed_window: 1 the first seed clusters at every resolution and the others at
    its best one and that one's neighbours; each seed keeps its own best by NMI.
    Isolated-label F1 reads the full sweeps only."""
    cells = _cells(n_types=6, per_type=60)
    adata = embedding_anndata(_embedding(cells, 1.5, seed=5), cells)
    params = {**PARAMS, "leiden_seeds": [0, 1, 2], "leiden_seed_window": 1}
    data = ScoringData(adata, columns, params)
    by_seed = data.clusterings_by_seed
    n_resolutions = len(data.resolutions)
    first_best = next(
        i for i, c in enumerate(by_seed[0]) if np.array_equal(c, data.optimal_clusterings[0])
    )
    window = range(max(0, first_best - 1), min(n_resolutions, first_best + 2))
    assert len(by_seed[0]) == n_resolutions
    assert len(by_seed[1]) == len(by_seed[2]) == len(window) < n_resolutions
    assert list(data.full_sweeps) == [0]
    everywhere = ScoringData(adata.copy(), columns, {**params, "leiden_seed_window": None})
    assert all(len(c) == n_resolutions for c in everywhere.clusterings_by_seed.values())
    assert list(everywhere.full_sweeps) == [0, 1, 2]
    for seed in (1, 2):  # the window's clusterings are those of the full sweep there
        for offset, clusters in enumerate(by_seed[seed]):
            full = everywhere.clusterings_by_seed[seed][window.start + offset]
            np.testing.assert_array_equal(clusters, full)
    # Same first sweep; each seed's best is among its own clusterings.
    for seed, best in data.optimal_clusterings.items():
        assert any(np.array_equal(best, c) for c in by_seed[seed])
    np.testing.assert_array_equal(data.optimal_clusterings[0], everywhere.optimal_clusterings[0])
