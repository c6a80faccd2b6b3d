"""The demo must look like the GEO file and be a fair test of integration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from cite_bench.simulation import CELL_TYPES, simulate_cite_seq


@pytest.fixture(scope="module")
def demo():
    return simulate_cite_seq(n_cells=1500, n_genes=500, n_proteins=30, seed=0)


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
