"""Contracts of the data_processing nodes, on small simulated data and the real starter."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata.abc import CSRDataset
from scipy import sparse

from cite_bench.datasets import CiteSeqInputDataset
from cite_bench.pipelines.data_processing.nodes import (
    InputDataError,
    assemble_mudata,
    extract_cell_metadata,
    preprocess_adt,
    preprocess_rna,
    subsample_cells,
    validate_input,
)
from cite_bench.preprocessing import blocks
from cite_bench.preprocessing import counts as count_checks


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def test_validation_separates_gex_and_adt_and_keeps_counts(small_raw, columns, processing_params):
    paired = validate_input(small_raw, columns, processing_params)
    gex = (small_raw.var["feature_types"] == "GEX").to_numpy()
    assert list(paired.mod) == ["rna", "adt"]
    assert paired["rna"].n_vars == gex.sum()
    assert paired["adt"].n_vars == (~gex).sum()
    total = _dense(small_raw.layers["counts"]).sum()
    split_total = sum(_dense(paired[m].layers["counts"]).sum() for m in ("rna", "adt"))
    assert split_total == total
    assert {"cell_type", "batch", "Site", "DonorNumber"} <= set(paired.obs.columns)


def test_validation_derives_site_and_donor_from_batch(small_raw, columns, processing_params):
    raw = small_raw.copy()
    raw.obs = raw.obs.drop(columns=["Site", "DonorNumber"])
    paired = validate_input(raw, columns, processing_params)
    batch = paired.obs["batch"].astype(str)
    assert (paired.obs["Site"].astype(str) == batch.str[:2]).all()
    assert (paired.obs["DonorNumber"].astype(str) == batch.str[2:]).all()


def test_validation_refuses_data_without_feature_types(small_raw, columns, processing_params):
    raw = small_raw.copy()
    del raw.var["feature_types"]
    with pytest.raises(InputDataError, match="feature_types"):
        validate_input(raw, columns, processing_params)


def test_validation_takes_a_missing_batch_column_for_one_batch(
    small_raw, columns, processing_params
):
    paired = validate_input(small_raw, {**columns, "batch": "sample"}, processing_params)
    assert set(paired.obs["sample"]) == {"all"}
    # The data's own site column is kept: it stays the batch key of the highly variable genes.
    assert (paired.obs["Site"] == small_raw.obs["Site"].astype(str).to_numpy()).all()


def test_validation_reports_unmatched_barcodes(small_raw, columns, processing_params):
    gex = (small_raw.var["feature_types"] == "GEX").to_numpy()
    rna, adt = small_raw[:, gex].copy(), small_raw[:10, ~gex].copy()
    with pytest.raises(InputDataError, match="390 RNA and 0 ADT barcodes"):
        validate_input(md.MuData({"rna": rna, "adt": adt}), columns, processing_params)


def _subsample(n_cells: int | None, seed: int) -> dict:
    return {"subsample": {"n_cells": n_cells, "seed": seed}, "min_cells_per_batch": 2}


def test_subsample_is_reproducible_and_sized(small_mudata, columns):
    first = subsample_cells(small_mudata, _subsample(100, 3), columns)
    again = subsample_cells(small_mudata, _subsample(100, 3), columns)
    other = subsample_cells(small_mudata, _subsample(100, 4), columns)
    assert first.n_obs == 100 and first["rna"].n_obs == 100 and first["adt"].n_obs == 100
    assert list(first.obs_names) == list(again.obs_names)
    assert list(first.obs_names) != list(other.obs_names)
    everything = subsample_cells(small_mudata, _subsample(None, 0), columns)
    assert everything.n_obs == small_mudata.n_obs


def test_subsample_larger_than_data_is_an_error(small_mudata, columns):
    with pytest.raises(InputDataError, match="larger than the data"):
        subsample_cells(small_mudata, _subsample(small_mudata.n_obs + 1, 0), columns)


def test_subsample_that_empties_a_batch_is_an_error(small_mudata, columns):
    params = {**_subsample(20, 0), "min_cells_per_batch": 10}
    with pytest.raises(InputDataError, match="too small"):
        subsample_cells(small_mudata, params, columns)


def test_rna_preprocessing(small_raw, processing_params, columns):
    paired = validate_input(small_raw, columns, processing_params)
    rna = preprocess_rna(paired, processing_params, columns)
    assert rna.n_vars == processing_params["n_top_genes"]
    assert rna.var["highly_variable"].all()
    # Raw counts are kept untouched for the selected genes.
    expected = _dense(paired["rna"][:, rna.var_names].layers["counts"])
    np.testing.assert_array_equal(_dense(rna.layers["counts"]), expected)
    # normalize_total(1e4) then log1p: expm1 of each row sums to 1e4 over all genes before
    # selection, so over the selected genes it is at most 1e4 and proportional to counts.
    counts_all = _dense(paired["rna"].layers["counts"])
    scale = 1e4 / counts_all.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.expm1(_dense(rna.X)), expected * scale, rtol=1e-4, atol=1e-4)


def test_hvg_count_is_capped_at_the_number_of_genes(small_raw, processing_params, columns):
    paired = validate_input(small_raw, columns, processing_params)
    rna = preprocess_rna(paired, {**processing_params, "n_top_genes": 10_000}, columns)
    assert rna.n_vars == paired["rna"].n_vars


def test_adt_clr_centres_each_cell(small_raw, processing_params, columns):
    paired = validate_input(small_raw, columns, processing_params)
    adt = preprocess_adt(paired, processing_params)
    counts = _dense(paired["adt"].layers["counts"])
    np.testing.assert_array_equal(_dense(adt.layers["counts"]), counts)
    # muon's 'seurat' CLR with axis=1: log1p(x / exp(mean(log1p(x)))) within each cell.
    geometric = np.exp(np.log1p(counts).mean(axis=1, keepdims=True))
    np.testing.assert_allclose(_dense(adt.X), np.log1p(counts / geometric), rtol=1e-5)


def test_missing_counts_layer_is_named(small_raw, processing_params, columns):
    paired = validate_input(small_raw, columns, processing_params)
    with pytest.raises(InputDataError, match="'raw'"):
        preprocess_adt(paired, {**processing_params, "counts_layer": "raw"})


def test_assembled_mudata_round_trips(small_mudata, tmp_path):
    assert set(small_mudata.mod) == {"rna", "adt"}
    assert (small_mudata["rna"].obs_names == small_mudata["adt"].obs_names).all()
    path = tmp_path / "x.h5mu"
    small_mudata.write_h5mu(path)
    back = md.read_h5mu(path)
    assert back.shape == small_mudata.shape
    assert "counts" in back["rna"].layers and "counts" in back["adt"].layers
    cells = extract_cell_metadata(back)
    assert isinstance(cells, pd.DataFrame)
    assert list(cells.index) == list(small_mudata.obs_names)


def test_starter_files_are_processed(starter_dir, processing_params, columns):
    raw = CiteSeqInputDataset(
        filepath=str(starter_dir / "rna.h5ad"), adt_filepath=str(starter_dir / "adt.h5ad")
    ).load()
    paired = validate_input(raw, columns, processing_params)
    params = {**processing_params, "n_top_genes": 2000}
    mdata = assemble_mudata(
        preprocess_rna(paired, params, columns), preprocess_adt(paired, params), paired
    )
    assert mdata.n_obs == 600
    assert mdata["rna"].n_vars == 1000  # 2000 HVGs capped at the 1000 genes
    assert mdata["adt"].n_vars == 134
    assert set(mdata.obs["Site"].astype(str)) == {"s1"}
    assert set(mdata.obs["DonorNumber"].astype(str)) == {"d1", "d2"}
    assert isinstance(mdata.obs["cell_type"].dtype, pd.CategoricalDtype)


def test_single_sample_preprocessing_without_batch_or_site(starter_dir, processing_params, columns):
    """One sample from the starter, counts in X, no annotations: one batch, HVGs without a
    batch key to speak of, CLR as usual."""
    from tests.builders import cell_ranger_counts, starter_pair

    raw = cell_ranger_counts(*starter_pair(starter_dir, "s1d2"))
    paired = validate_input(raw, columns, processing_params)
    rna = preprocess_rna(paired, processing_params, columns)
    adt = preprocess_adt(paired, processing_params)
    mdata = assemble_mudata(rna, adt, paired)
    assert mdata.n_obs == 289
    assert rna.n_vars == processing_params["n_top_genes"]
    assert adt.n_vars == 134
    assert set(mdata.obs["batch"]) == set(mdata.obs["Site"]) == {"all"}


# --- bounded memory: only the counts are taken, nothing is densified or copied twice -----------


def test_validation_takes_only_the_counts(small_raw, columns, processing_params):
    raw = small_raw.copy()
    raw.layers["normalised"] = raw.X.copy()
    paired = validate_input(raw, columns, processing_params)
    for name in ("rna", "adt"):
        modality = paired[name]
        assert list(modality.layers.keys() - {None}) == ["counts"]
        assert modality.X is modality.layers["counts"]  # one matrix, not a copy
        assert sparse.issparse(modality.X) and modality.X.format == "csr"


def test_backed_input_is_read_without_its_x(small_raw, columns, processing_params, tmp_path):
    """A backed AnnData leaves X on disk; validation reads the counts layer only."""
    path = tmp_path / "raw.h5ad"
    small_raw.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        paired = validate_input(backed, columns, processing_params)
    finally:
        backed.file.close()
    expected = validate_input(small_raw, columns, processing_params)
    pd.testing.assert_frame_equal(paired.obs, expected.obs)
    for name in ("rna", "adt"):
        assert (paired[name].layers["counts"] != expected[name].layers["counts"]).nnz == 0


def test_backed_input_with_counts_in_x(small_raw, columns, processing_params, tmp_path):
    """Without a counts layer, the counts are read from a backed file's X."""
    path = tmp_path / "raw.h5ad"
    raw = small_raw.copy()
    del raw.layers["counts"]
    raw.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        paired = validate_input(backed, columns, processing_params)
    finally:
        backed.file.close()
    expected = validate_input(small_raw, columns, processing_params)
    for name in ("rna", "adt"):
        assert (paired[name].layers["counts"] != expected[name].layers["counts"]).nnz == 0


def test_count_problems_are_added_up_over_blocks(
    small_raw, columns, processing_params, monkeypatch
):
    monkeypatch.setattr(count_checks, "_CHECK_BLOCK", 7)
    raw = small_raw.copy()
    counts = raw.layers["counts"] = raw.layers["counts"].copy()
    gex = np.flatnonzero((raw.var["feature_types"] == "GEX").to_numpy())
    counts.data[np.flatnonzero(np.isin(counts.indices, gex))[[0, 500, 5000]]] = -1
    with pytest.raises(InputDataError, match="RNA layer 'counts' is not raw counts: 3 negative"):
        validate_input(raw, columns, processing_params)


def test_subsampling_copies_only_what_it_keeps(small_raw, columns, processing_params):
    paired = validate_input(small_raw, columns, processing_params)
    assert subsample_cells(paired, _subsample(None, 0), columns) is paired
    subset = subsample_cells(paired, _subsample(100, 0), columns)
    rna = subset["rna"]
    assert rna.X is rna.layers["counts"]  # the shared matrix is copied once
    rows = paired.obs_names.get_indexer(subset.obs_names)
    assert (rna.layers["counts"] != paired["rna"].layers["counts"][rows]).nnz == 0


def test_preprocessing_leaves_the_input_untouched(small_raw, columns, processing_params):
    paired = validate_input(small_raw, columns, processing_params)
    before = {name: paired[name].layers["counts"].copy() for name in ("rna", "adt")}
    rna = preprocess_rna(paired, processing_params, columns)
    preprocess_adt(paired, processing_params)
    for name, counts in before.items():
        after = paired[name].layers["counts"]
        assert np.array_equal(after.indices, counts.indices)
        assert np.array_equal(after.data, counts.data)
    assert sparse.issparse(rna.X) and rna.X.format == "csr"
    assert {"log1p", "hvg"} <= set(rna.uns)


def _sparse_raw(
    n_cells: int,
    n_genes: int,
    n_proteins: int,
    density: float = 0.02,
    batches: tuple[str, ...] = ("s1d1", "s1d2", "s2d1", "s3d6"),
) -> ad.AnnData:
    """A large, sparse input (2 % of genes detected per cell), cheap to build."""
    rng = np.random.default_rng(0)
    rna = sparse.random(n_cells, n_genes, density=density, format="csr", rng=rng, dtype=np.float32)
    rna.data = rng.integers(1, 20, rna.nnz).astype(np.float32)
    adt = sparse.csr_matrix(rng.poisson(20, (n_cells, n_proteins)).astype(np.float32))
    counts = sparse.hstack([rna, adt], format="csr")
    batch = np.array(batches)[rng.integers(0, len(batches), n_cells)]
    return ad.AnnData(
        X=counts.copy(),
        obs=pd.DataFrame({"batch": batch}, index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(
            {"feature_types": ["GEX"] * n_genes + ["ADT"] * n_proteins},
            index=[f"g{i}" for i in range(n_genes)] + [f"p{i}" for i in range(n_proteins)],
        ),
        layers={"counts": counts},
    )


def test_no_step_densifies_the_rna_or_copies_it_twice(columns, processing_params):
    """Peak memory of each node (numpy/scipy allocations) stays far below one dense
    cells x genes matrix, and within a few copies of the sparse counts: RNA is sparse from
    validation to the selected genes, and nothing is copied that need not be."""
    raw = _sparse_raw(n_cells=3000, n_genes=8000, n_proteins=30)
    dense = raw.n_obs * 8000 * np.dtype(np.float32).itemsize
    counts = raw.layers["counts"]
    stored = counts.data.nbytes + counts.indices.nbytes + counts.indptr.nbytes
    params = {**processing_params, "subsample": {"n_cells": 2000, "seed": 0}}
    peaks = {}

    def traced(name, function, *args):
        tracemalloc.start()
        try:
            result = function(*args)
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return result

    paired = traced("validate_input", validate_input, raw, columns, params)
    subset = traced("subsample_cells", subsample_cells, paired, params, columns)
    traced("preprocess_rna", preprocess_rna, subset, params, columns)
    assert max(peaks.values()) < min(dense / 4, 2.5 * stored), peaks


def test_cell_cycle_phase_is_carried_where_it_exists(small_raw, columns, processing_params):
    raw = small_raw.copy()
    raw.obs["GEX_phase"] = np.where(np.arange(raw.n_obs) % 3, "G1", "S")
    paired = validate_input(raw, {**columns, "phase": "GEX_phase"}, processing_params)
    assert list(paired.obs["GEX_phase"].cat.categories) == ["G1", "S"]
    assert "GEX_phase" not in validate_input(raw, columns, processing_params).obs
    without = validate_input(small_raw, {**columns, "phase": "GEX_phase"}, processing_params)
    assert "GEX_phase" not in without.obs  # optional: evaluation skips the cell-cycle score


# --- preprocessing at the GEO file's size: scanpy's values without scanpy's copies ------------


def _stored_bytes(matrix: sparse.csr_matrix) -> int:
    return matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes


def _scanpy_rna(paired: md.MuData, params: dict, columns: dict) -> ad.AnnData:
    """The straightforward way (what preprocess_rna did before it was made lean): scanpy on
    the whole normalised matrix, then the selected genes."""
    counts = sparse.csr_matrix(paired["rna"].layers["counts"], dtype=np.float32)
    site = columns["site"]
    work = ad.AnnData(
        X=counts.copy(),
        obs=paired.obs.loc[paired["rna"].obs_names, [site]],
        var=pd.DataFrame(index=paired["rna"].var_names),
    )
    sc.pp.normalize_total(work, target_sum=params["target_sum"])
    sc.pp.log1p(work)
    n_top_genes = min(params["n_top_genes"], work.n_vars)
    sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes, batch_key=site)
    selected = work.var["highly_variable"].to_numpy()
    return ad.AnnData(
        X=work.X[:, selected],
        var=work.var.loc[selected],
        uns=dict(work.uns),
        layers={"counts": counts[:, selected]},
    )


def _site_specific_genes(raw: ad.AnnData) -> ad.AnnData:
    """The first 10 genes without counts in site s1: they are left out of that site's selection
    (scanpy gives them zeros there) but kept, as the other sites detect them."""
    raw = raw.copy()
    in_s1 = raw.obs["batch"].astype(str).str.startswith("s1").to_numpy()
    counts = raw.layers["counts"].tolil()
    counts[np.flatnonzero(in_s1), :10] = 0
    raw.layers["counts"] = counts.tocsr()
    raw.X = raw.layers["counts"].copy()
    return raw


@pytest.mark.parametrize(
    ("case", "n_top_genes", "block"),
    [
        ("three sites", 200, None),
        ("three sites", 37, 64),  # blocks of a few cells
        ("all genes", 10_000, None),  # capped at the number of genes
        ("genes missing in one site", 50, None),
        ("one site", 60, 200),
    ],
)
def test_rna_preprocessing_gives_scanpys_values(
    small_raw, columns, processing_params, monkeypatch, case, n_top_genes, block
):
    """Same genes, same values, same annotations as scanpy on the whole normalised matrix, to
    the last bit: the lean computation is a reorganisation, not an approximation."""
    if block:
        monkeypatch.setattr(blocks, "_BLOCK", block)
    raw = small_raw
    if case == "genes missing in one site":
        raw = _site_specific_genes(small_raw)
    elif case == "one site":
        raw = small_raw.copy()
        raw.obs = raw.obs.drop(columns=["batch", "Site", "DonorNumber"])
    params = {**processing_params, "n_top_genes": n_top_genes}
    paired = validate_input(raw, columns, params)
    rna = preprocess_rna(paired, params, columns)
    expected = _scanpy_rna(paired, params, columns)

    assert list(rna.var_names) == list(expected.var_names)
    pd.testing.assert_frame_equal(rna.var[expected.var.columns], expected.var, check_exact=True)
    assert rna.uns == expected.uns
    for ours, theirs in ((rna.X, expected.X), (rna.layers["counts"], expected.layers["counts"])):
        assert ours.format == "csr" and ours.dtype == theirs.dtype == np.float32
        np.testing.assert_array_equal(ours.indptr, theirs.indptr)
        np.testing.assert_array_equal(ours.indices, theirs.indices)
        np.testing.assert_array_equal(ours.data, theirs.data)
    assert list(rna.obs_names) == list(paired.obs_names)


def test_rna_preprocessing_holds_one_site_at_a_time(columns, processing_params, monkeypatch):
    """preprocess_rna never builds the normalised matrix of all cells and genes: beside its
    input it holds one site's values (a quarter of the counts here) and the selected genes.
    scanpy's selection on the whole normalised matrix peaks at about twice the counts (6 GB
    at the GEO file's ~90,000 cells)."""
    monkeypatch.setattr(blocks, "_BLOCK", 1 << 12)
    monkeypatch.setattr(count_checks, "_CHECK_BLOCK", 1 << 12)
    raw = _sparse_raw(4000, 2000, 10, density=0.1, batches=("s1d1", "s2d1", "s3d1", "s4d1"))
    params = {**processing_params, "n_top_genes": 100}
    paired = validate_input(raw, columns, params)
    preprocess_rna(paired, params, columns)  # numba compiles outside the measurement
    tracemalloc.start()
    try:
        rna = preprocess_rna(paired, params, columns)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    stored = _stored_bytes(paired["rna"].layers["counts"])
    assert peak < 0.5 * stored, f"peak {peak / stored:.2f} x the RNA counts"
    assert rna.X.dtype == rna.layers["counts"].dtype == np.float32


class _OnDisk(CSRDataset):
    """A CSR matrix 'on disk' that records what is read and refuses to be read whole."""

    def __init__(self, matrix: sparse.csr_matrix) -> None:
        self._matrix = matrix
        self.shape = matrix.shape
        self.dtype = matrix.dtype
        self.backend = "hdf5"
        self.rows_read: list[int] = []

    def __getitem__(self, index):
        assert isinstance(index, slice) and index.step is None, index
        block = self._matrix[index]
        self.rows_read.append(block.shape[0])
        return block

    def to_memory(self):
        raise AssertionError("the whole matrix was loaded")


def test_counts_on_disk_are_read_a_block_of_cells_at_a_time(
    columns, processing_params, monkeypatch
):
    """A backed layer is never loaded whole (the GEO file's counts and their RNA part would be
    in memory together: 3.6 GB), and the result is what the matrix in memory gives."""
    monkeypatch.setattr(blocks, "_DISK_BLOCK", 1 << 12)
    raw = _sparse_raw(n_cells=3000, n_genes=2000, n_proteins=30)
    on_disk = _OnDisk(raw.layers["counts"])
    backed = ad.AnnData(obs=raw.obs, var=raw.var, layers={"counts": on_disk})
    paired = validate_input(backed, columns, processing_params)
    assert len(on_disk.rows_read) > 10 and sum(on_disk.rows_read) == raw.n_obs
    assert max(on_disk.rows_read) < raw.n_obs / 4
    expected = validate_input(raw, columns, processing_params)
    for name in ("rna", "adt"):
        ours, theirs = paired[name].layers["counts"], expected[name].layers["counts"]
        assert ours.format == "csr" and ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours.indptr, theirs.indptr)
        np.testing.assert_array_equal(ours.indices, theirs.indices)
        np.testing.assert_array_equal(ours.data, theirs.data)
        assert paired[name].X is paired[name].layers["counts"]


@pytest.mark.parametrize("counts_in", ["layer", "X"])
def test_geo_reader_leaves_the_counts_on_disk(
    small_raw, columns, processing_params, tmp_path, monkeypatch, counts_in
):
    """The GEO environment's backed read keeps X and the counts layer on disk; validation
    reads them a block at a time and gets what the file read whole gives."""
    monkeypatch.setattr(blocks, "_DISK_BLOCK", 1 << 10)
    raw = small_raw.copy()
    if counts_in == "X":
        del raw.layers["counts"]
    path = tmp_path / "raw.h5ad"
    raw.write_h5ad(path)
    backed = CiteSeqInputDataset(filepath=str(path), load_args={"backed": "r"}).load()
    try:
        assert backed.isbacked
        on_disk = backed.layers["counts"] if counts_in == "layer" else backed.X
        assert isinstance(on_disk, CSRDataset)
        paired = validate_input(backed, columns, processing_params)
    finally:
        backed.file.close()
    expected = validate_input(ad.read_h5ad(path), columns, processing_params)
    pd.testing.assert_frame_equal(paired.obs, expected.obs)
    for name in ("rna", "adt"):
        assert (paired[name].layers["counts"] != expected[name].layers["counts"]).nnz == 0
        pd.testing.assert_frame_equal(paired[name].var, expected[name].var)
