"""The demo must look like the GEO file and be a fair test of integration."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import sparse, stats

from cite_bench.simulation import (
    CELL_TYPES,
    CHUNK_CELLS,
    DEFAULT_SITES,
    _negative_binomial,
    _simulate_cells,
    simulate_cite_seq,
)

GEO_GENES, GEO_PROTEINS = 13_953, 134


@pytest.fixture(scope="module")
def demo():
    return simulate_cite_seq(n_cells=1500, n_genes=500, n_proteins=30, seed=0)


@pytest.fixture(scope="module")
def geo_sized():
    """A GEO-sized panel (13,953 genes, 134 proteins) and the peak memory of simulating it."""
    tracemalloc.start()
    try:
        adata = simulate_cite_seq(n_cells=3000, n_genes=GEO_GENES, n_proteins=GEO_PROTEINS, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return adata, peak


def test_layout_matches_the_geo_file(demo):
    assert set(demo.var["feature_types"]) == {"GEX", "ADT"}
    assert (demo.var["feature_types"] == "GEX").sum() == 500
    assert {"cell_type", "batch", "Site", "DonorNumber"} <= set(demo.obs.columns)
    counts = demo.layers["counts"]
    assert sparse.issparse(counts)
    assert (counts.data >= 0).all() and np.array_equal(counts.data, np.round(counts.data))
    batch = demo.obs["batch"].astype(str)
    assert (batch.str[:2] == demo.obs["Site"].astype(str)).all()
    assert demo.obs_names.is_unique


def test_same_seed_same_data_other_seed_other_data():
    first = simulate_cite_seq(n_cells=200, n_genes=150, n_proteins=12, seed=5)
    again = simulate_cite_seq(n_cells=200, n_genes=150, n_proteins=12, seed=5)
    other = simulate_cite_seq(n_cells=200, n_genes=150, n_proteins=12, seed=6)
    assert (first.layers["counts"] != again.layers["counts"]).nnz == 0
    assert (first.layers["counts"] != other.layers["counts"]).nnz > 0


def test_cell_types_include_rare_and_isolated_ones(demo):
    assert demo.obs["cell_type"].nunique() == len(CELL_TYPES) >= 10
    frequency = demo.obs["cell_type"].value_counts(normalize=True)
    assert (frequency < 0.02).sum() >= 2
    batches_per_type = demo.obs.groupby("cell_type", observed=True)["batch"].nunique()
    assert batches_per_type.min() == 1  # isolated labels exist


def test_donors_are_nested_in_sites(demo):
    assert demo.obs["Site"].nunique() >= 3
    donors_per_site = demo.obs.groupby("Site", observed=True)["batch"].nunique()
    assert (donors_per_site >= 2).all()


def test_rna_is_overdispersed_with_varying_library_size(demo):
    rna = demo[:, demo.var["feature_types"] == "GEX"].layers["counts"].toarray()
    library = rna.sum(axis=1)
    assert library.std() / library.mean() > 0.3
    means, variances = rna.mean(axis=0), rna.var(axis=0)
    expressed = means > 1
    assert np.median(variances[expressed] / means[expressed]) > 2  # Poisson would give 1


def test_proteins_have_background_in_every_cell(demo):
    adt = demo[:, demo.var["feature_types"] == "ADT"].layers["counts"].toarray()
    # Even proteins a cell does not express get ambient counts.
    assert (adt > 0).mean() > 0.9


def test_batch_effect_is_real(demo):
    """Within one cell type, cells of different sites differ in mean expression."""
    rna = demo[:, demo.var["feature_types"] == "GEX"]
    mono = rna[rna.obs["cell_type"] == "CD14+ Mono"]
    normalised = np.log1p(
        mono.layers["counts"].toarray() / mono.layers["counts"].sum(axis=1).A * 1e4
    )
    by_site = [normalised[(mono.obs["Site"] == s).to_numpy()].mean(axis=0) for s in ("s1", "s2")]
    assert np.abs(by_site[0] - by_site[1]).mean() > 0.1


def test_too_small_requests_are_refused():
    with pytest.raises(ValueError, match="n_cells"):
        simulate_cite_seq(n_cells=5)


def test_counts_are_compact_sparse_matrices(demo):
    counts = demo.layers["counts"]
    assert counts.format == "csr" and counts.dtype == np.float32 and counts.has_canonical_format
    assert demo.X is not counts  # a copy, so that changing X leaves the counts alone
    assert (counts != demo.X).nnz == 0


@pytest.mark.parametrize(
    ("mean", "dispersion"),
    [(0.02, 0.05), (0.3, 0.05), (0.5, 2.0), (0.95, 0.3), (1.0, 8.0), (4.0, 0.5), (40.0, 5.0)],
)
def test_rna_counts_are_negative_binomial(mean, dispersion):
    """The fast sampler (CDF inversion up to a mean of 1, gamma-Poisson above) is exact."""
    draws = _negative_binomial(
        np.full((100_000, 2), mean), np.full(2, dispersion), np.random.default_rng(7)
    ).ravel()
    distribution = stats.nbinom(dispersion, dispersion / (mean + dispersion))
    # Bins between quantiles, the upper tail included: a wrong dispersion is caught too.
    edges = np.unique(distribution.ppf([0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 0.999]))
    bins = np.searchsorted(edges, draws, side="left")  # bin i: counts in (edges[i-1], edges[i]]
    cdf = np.append(distribution.cdf(edges), 1.0)
    expected = np.diff(cdf, prepend=0.0) * draws.size
    observed = np.bincount(bins, minlength=expected.size)
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_barcodes_stay_unique_at_geo_size():
    obs = _simulate_cells(90_000, DEFAULT_SITES, np.random.default_rng(0))
    assert obs.index.is_unique
    assert obs.index.str.fullmatch(r"[ACGT]{16}-1-s\dd\d").all()


def test_geo_sized_panel_has_10x_like_depth(geo_sized):
    """More genes share the sequencing depth: ~1-3k genes and a few thousand UMIs per cell."""
    adata, _ = geo_sized
    rna = adata.layers["counts"][:, (adata.var["feature_types"] == "GEX").to_numpy()]
    assert 1_000 < np.median(np.diff(rna.indptr)) < 3_000
    assert 2_000 < np.median(rna.sum(axis=1).A) < 8_000
    assert rna.nnz / np.prod(rna.shape) < 0.25


def test_geo_sized_panel_keeps_its_biology(geo_sized):
    adata, _ = geo_sized
    assert adata.obs["cell_type"].nunique() == len(CELL_TYPES)
    adt = adata[:, adata.var["feature_types"] == "ADT"].layers["counts"]
    assert adt.nnz / np.prod(adt.shape) > 0.9  # ambient background everywhere


def test_memory_grows_with_the_counts_not_with_cells_times_genes(geo_sized):
    """Counts are drawn a block of cells at a time into sparse matrices: the peak is the
    result (X and the counts) plus a few block-sized working arrays, far below one dense
    cells x genes matrix."""
    adata, peak = geo_sized
    counts = adata.layers["counts"]
    stored = counts.data.nbytes + counts.indices.nbytes + counts.indptr.nbytes
    block = CHUNK_CELLS * adata.n_vars * 8
    assert peak < 2 * stored + 6 * block
    assert peak < 0.6 * adata.n_obs * adata.n_vars * 8
