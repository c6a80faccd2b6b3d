"""The one-pass silhouette metrics against scib 1.1.7, the reference implementation."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cite_bench.metrics import silhouette_metrics

TOLERANCE = 1e-6


def _scib_metrics(embedding: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> dict:
    """The three scores as the evaluation computed them with scib, and scib's isolated labels."""
    import scib
    from scib.metrics.isolated_labels import get_isolated_labels

    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels), "batch": pd.Categorical(batches)},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm["X_emb"] = embedding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecations inside scib, "no isolated labels"
        isolated = get_isolated_labels(adata, "cell_type", "batch", None, verbose=False)
        scores = {
            "asw_label": scib.me.silhouette(adata, "cell_type", "X_emb"),
            "asw_batch": scib.me.silhouette_batch(
                adata, "batch", "cell_type", "X_emb", verbose=False
            ),
            "isolated_label_asw": scib.me.isolated_labels_asw(
                adata, "cell_type", "batch", "X_emb", verbose=False
            ),
        }
    return {"isolated": isolated, **{key: float(value) for key, value in scores.items()}}


def _assert_matches_scib(
    embedding: np.ndarray, labels: np.ndarray, batches: np.ndarray
) -> tuple[dict, list]:
    """Our scores, for scib's isolated labels, equal scib's; returns them and those labels."""
    expected = _scib_metrics(embedding, labels, batches)
    isolated = expected.pop("isolated")
    # Tiles smaller than the data, so that the reduction across tiles is checked against scib too.
    ours = silhouette_metrics(embedding, labels, batches, isolated, chunk_size=50)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=TOLERANCE, nan_ok=True), key
    return ours, isolated


def _synthetic(n_cells: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seven labels over four batches, with a label in a single batch ("solo"), a singleton label
    ("single") and a label whose two cells are in different batches ("pair")."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["a", "b", "c", "d", "solo"], n_cells, p=[0.4, 0.25, 0.15, 0.1, 0.1])
    labels, batches = labels.astype(object), rng.choice(["s1", "s2", "s3", "s4"], n_cells)
    batches[labels == "solo"] = "s2"
    labels[:3], batches[:3] = ["single", "pair", "pair"], ["s1", "s1", "s3"]
    centres = rng.normal(0, 2, (7, 8))[np.unique(labels, return_inverse=True)[1]]
    shifts = rng.normal(0, 0.7, (4, 8))[np.unique(batches, return_inverse=True)[1]]
    embedding = centres + shifts + rng.normal(size=(n_cells, 8))
    return embedding, labels, batches


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_scib_on_synthetic_edge_cases(dtype):
    embedding, labels, batches = _synthetic()
    scores, isolated = _assert_matches_scib(embedding.astype(dtype), labels, batches)
    assert sorted(isolated) == ["single", "solo"]
    assert all(np.isfinite(value) for value in scores.values())


def test_matches_scib_on_real_starter_data(starter_dir):
    import scanpy as sc

    rna = ad.read_h5ad(starter_dir / "rna.h5ad")
    rna.X = rna.layers["counts"].copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    sc.pp.pca(rna, n_comps=20, random_state=0)
    labels = rna.obs["cell_type"].astype(str).to_numpy()
    batches = rna.obs["batch"].astype(str).to_numpy()
    scores, isolated = _assert_matches_scib(rna.obsm["X_pca"], labels, batches)
    assert isolated and all(np.isfinite(value) for value in scores.values())


def test_labels_in_every_batch_have_no_isolated_score():
    embedding, labels, _ = _synthetic(seed=1)
    keep = ~np.isin(labels, ["single", "pair", "solo"])
    embedding, labels = embedding[keep], labels[keep]
    batches = np.tile(["s1", "s2"], labels.size // 2 + 1)[: labels.size]
    scores, isolated = _assert_matches_scib(embedding, labels, batches)
    assert isolated == [] and np.isnan(scores["isolated_label_asw"])
    assert np.isfinite(scores["asw_label"]) and np.isfinite(scores["asw_batch"])


def test_tiles_and_threads_do_not_change_the_scores():
    embedding, labels, batches = _synthetic(n_cells=301, seed=2)
    isolated = ["solo", "single"]
    whole = silhouette_metrics(embedding, labels, batches, isolated, chunk_size=301, n_threads=1)
    for chunk_size, n_threads in [(1, 1), (7, 2), (64, 3), (300, 2)]:
        tiled = silhouette_metrics(
            embedding, labels, batches, isolated, chunk_size=chunk_size, n_threads=n_threads
        )
        assert tiled == pytest.approx(whole, rel=1e-12, abs=1e-12)


def test_cell_order_does_not_change_the_scores():
    embedding, labels, batches = _synthetic(seed=3)
    shuffle = np.random.default_rng(0).permutation(labels.size)
    isolated = ["solo"]
    before = silhouette_metrics(embedding, labels, batches, isolated)
    after = silhouette_metrics(embedding[shuffle], labels[shuffle], batches[shuffle], isolated)
    assert after == pytest.approx(before, rel=1e-12, abs=1e-12)


def test_hand_computed_example():
    """Two labels on a line, {0, 1} and {10, 11}, each with one cell in batch x and one in y."""
    embedding = np.array([[0.0], [1.0], [10.0], [11.0]])
    labels = np.array(["A", "A", "B", "B"])
    batches = np.array(["x", "y", "x", "y"])
    scores = silhouette_metrics(embedding, labels, batches, isolated=["B"])
    # cell 0: a = 1, b = (10 + 11) / 2; cell 1: a = 1, b = (9 + 10) / 2; B mirrors A.
    silhouettes = [(10.5 - 1) / 10.5, (9.5 - 1) / 9.5]
    assert scores["asw_label"] == pytest.approx((np.mean(silhouettes) + 1) / 2, abs=1e-12)
    assert scores["isolated_label_asw"] == pytest.approx(scores["asw_label"], abs=1e-12)
    # Every cell of each label is in its own batch: scib skips such labels, so nothing is left.
    assert np.isnan(scores["asw_batch"])


def test_without_batches_or_isolated_labels():
    embedding, labels, batches = _synthetic(seed=4)
    scores = silhouette_metrics(embedding, labels, None, [])
    assert set(scores) == {"asw_label", "isolated_label_asw"}
    assert np.isnan(scores["isolated_label_asw"])
    with_batches = silhouette_metrics(embedding, labels, batches, [])
    assert scores["asw_label"] == pytest.approx(with_batches["asw_label"], rel=1e-12)


def test_a_single_label_gives_nan_where_scib_raises():
    embedding = np.random.default_rng(0).normal(size=(20, 3))
    scores = silhouette_metrics(embedding, np.repeat("a", 20), np.tile(["x", "y"], 10), ["a"])
    assert np.isnan(scores["asw_label"]) and np.isnan(scores["isolated_label_asw"])
    assert 0 <= scores["asw_batch"] <= 1
