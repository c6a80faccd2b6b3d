"""Bad input is refused by the first node, before any long work, with a message that names the
problem, and leaves no artifact behind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

from cite_bench.pipelines.data_processing.nodes import InputDataError, validate_input
from tests.conftest import run_kedro


def _dense_counts(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    adata.layers["counts"] = adata.layers["counts"].toarray()
    return adata


def _set_value(value: float) -> Callable[[ad.AnnData], ad.AnnData]:
    def corrupt(adata: ad.AnnData) -> ad.AnnData:
        adata = _dense_counts(adata)
        adata.layers["counts"][3, 5] = value
        return adata

    return corrupt


def _without_adt(adata: ad.AnnData) -> ad.AnnData:
    return adata[:, adata.var["feature_types"] == "GEX"].copy()


def _without_feature_types(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    del adata.var["feature_types"]
    return adata


def _without_layer(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    del adata.layers["counts"]
    return adata


def _duplicate_barcode(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    names = adata.obs_names.to_numpy().copy()
    names[1] = names[0]
    adata.obs_names = names
    return adata


def _without_batch(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    del adata.obs["batch"]
    return adata


def _tiny_batch(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    batch = adata.obs["batch"].astype(str).to_numpy()
    batch[:3] = "s9d9"
    adata.obs["batch"] = batch
    adata.obs = adata.obs.drop(columns=["Site", "DonorNumber"])
    return adata


# (what is wrong, how to make it, what the message must say)
BAD_INPUTS = [
    ("missing counts layer", _without_layer, "no raw-count layer 'counts'"),
    ("negative counts", _set_value(-1.0), "'counts' is not raw counts: 1 negative"),
    ("non-integer counts", _set_value(0.5), "'counts' is not raw counts: 1 non-integer"),
    ("NaN counts", _set_value(np.nan), "'counts' is not raw counts: 1 NaN or infinite"),
    ("infinite counts", _set_value(np.inf), "1 NaN or infinite"),
    ("no ADT features", _without_adt, "has no 'ADT' features"),
    ("no feature_types", _without_feature_types, "no 'feature_types' column"),
    ("duplicate barcodes", _duplicate_barcode, "1 duplicate barcodes"),
    ("missing batch column", _without_batch, "no batch column 'batch'"),
    ("batch too small", _tiny_batch, r"too small for the models.*'s9d9': 3"),
]


@pytest.mark.parametrize(("case", "corrupt", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_named(small_raw, columns, processing_params, case, corrupt, message):
    with pytest.raises(InputDataError, match=message):
        validate_input(corrupt(small_raw), columns, processing_params)


def test_subsample_larger_than_the_data_is_refused_up_front(small_raw, columns, processing_params):
    params = {**processing_params, "subsample": {"n_cells": 10_000, "seed": 0}}
    with pytest.raises(InputDataError, match="n_cells=10000 is larger than the data"):
        validate_input(small_raw, columns, params)


def test_cells_without_counts_are_dropped_and_counted(
    small_raw, columns, processing_params, caplog
):
    raw = small_raw.copy()
    counts = raw.layers["counts"].tolil()
    adt = np.flatnonzero((raw.var["feature_types"] == "ADT").to_numpy())
    counts[0, :] = 0  # no counts at all
    counts[1, adt] = 0  # RNA only
    raw.layers["counts"] = sparse.csr_matrix(counts)
    with caplog.at_level(logging.WARNING):
        paired = validate_input(raw, columns, processing_params)
    assert paired.n_obs == raw.n_obs - 2
    assert "Dropped 2 of 400 cells without counts (1 without RNA, 2 without ADT" in caplog.text


def test_missing_labels_are_allowed(small_raw, columns, processing_params, caplog):
    raw = small_raw.copy()
    del raw.obs["cell_type"]
    with caplog.at_level(logging.WARNING):
        paired = validate_input(raw, columns, processing_params)
    assert "cell_type" not in paired.obs
    assert "no label column 'cell_type'" in caplog.text


def test_not_anndata_is_refused(columns, processing_params):
    with pytest.raises(InputDataError, match="is a dict, not AnnData or MuData"):
        validate_input({"X": 1}, columns, processing_params)


# --- the same through `kedro run`: the message reaches the user, no artifact is written --------


def _artifacts(project: Path) -> list[Path]:
    return [path for path in (project / "data").rglob("*") if path.is_file()]


def _run_geo(project: Path, path: Path, n_cells: int | None = None) -> None:
    """``kedro run --env geo --pipeline data_processing`` on ``path``, keeping all cells."""
    run_kedro(
        project,
        env="geo",
        pipeline_names=["data_processing"],
        runtime_params={
            "inputs": {"geo": str(path)},
            "data_processing": {"subsample": {"n_cells": n_cells}},
            "tracking": {"enabled": False},
        },
    )


@pytest.mark.parametrize(("case", "corrupt", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_file_fails_the_run_and_writes_nothing(
    project, tmp_path_factory, small_raw, case, corrupt, message
):
    path = tmp_path_factory.mktemp("input") / "bad.h5ad"
    corrupt(small_raw).write_h5ad(path)
    before = path.read_bytes()
    with pytest.raises(InputDataError, match=message):
        _run_geo(project, path)
    assert _artifacts(project) == []
    assert path.read_bytes() == before  # the raw input is never touched


def test_missing_file_is_named(project, tmp_path):
    with pytest.raises(Exception, match="file not found: '.*nothing.h5ad'"):
        _run_geo(project, tmp_path / "nothing.h5ad")
    assert _artifacts(project) == []


def test_file_that_is_not_anndata(project, tmp_path):
    path = tmp_path / "table.h5ad"
    path.write_text("cell,gene\n")
    with pytest.raises(Exception, match="is not a readable AnnData"):
        _run_geo(project, path)
    assert _artifacts(project) == []


def test_subsample_larger_than_the_file(project, tmp_path, small_raw):
    path = tmp_path / "raw.h5ad"
    small_raw.write_h5ad(path)
    with pytest.raises(InputDataError, match="larger than the data"):
        _run_geo(project, path, n_cells=20_000)  # as the geo environment does
    assert _artifacts(project) == []


def test_paired_files_with_unmatched_barcodes(project, tmp_path, small_raw):
    gex = (small_raw.var["feature_types"] == "GEX").to_numpy()
    small_raw[:, gex].write_h5ad(tmp_path / "rna.h5ad")
    small_raw[:350, ~gex].write_h5ad(tmp_path / "adt.h5ad")
    with pytest.raises(InputDataError, match="50 RNA and 0 ADT barcodes have no partner"):
        run_kedro(
            project,
            env="starter",
            pipeline_names=["data_processing"],
            runtime_params={
                "inputs": {"rna": str(tmp_path / "rna.h5ad"), "adt": str(tmp_path / "adt.h5ad")},
                "tracking": {"enabled": False},
            },
        )
    assert _artifacts(project) == []


# --- property test: random small inputs, randomly broken --------------------------------------

CORRUPTIONS = {
    "none": None,
    "negative": "negative",
    "fraction": "non-integer",
    "nan": "NaN or infinite",
    "no layer": "no raw-count layer",
    "no feature_types": "feature_types",
    "duplicate barcode": "duplicate barcodes",
    "no batch": "no batch column",
}


@st.composite
def cite_seq_inputs(draw):
    n_cells = draw(st.integers(2, 25))
    n_genes = draw(st.integers(1, 8))
    n_proteins = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    counts = rng.poisson(rng.uniform(0.1, 3.0), size=(n_cells, n_genes + n_proteins))
    obs = {"batch": rng.choice(["s1d1", "s2d3"], size=n_cells)}
    adata = ad.AnnData(
        X=counts.astype(np.float32),
        obs=obs,
        var={"feature_types": ["GEX"] * n_genes + ["ADT"] * n_proteins},
        layers={"counts": counts.astype(np.float32)},
    )
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"f{i}" for i in range(n_genes + n_proteins)]
    corruption = draw(st.sampled_from(sorted(CORRUPTIONS)))
    cell, feature = draw(st.integers(0, n_cells - 1)), draw(st.integers(0, adata.n_vars - 1))
    if corruption == "negative":
        adata.layers["counts"][cell, feature] = -draw(st.integers(1, 100))
    elif corruption == "fraction":
        adata.layers["counts"][cell, feature] += draw(st.sampled_from([0.25, 0.5, 0.001]))
    elif corruption == "nan":
        adata.layers["counts"][cell, feature] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif corruption == "no layer":
        del adata.layers["counts"]
    elif corruption == "no feature_types":
        del adata.var["feature_types"]
    elif corruption == "duplicate barcode":
        if n_cells < 2:
            corruption = "none"
        else:
            names = adata.obs_names.to_numpy().copy()
            names[-1] = names[0]
            adata.obs_names = names
    elif corruption == "no batch":
        del adata.obs["batch"]
    return adata, corruption


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cite_seq_inputs())
def test_random_inputs_pass_cleanly_or_fail_with_a_named_error(columns, example):
    adata, corruption = example
    params = {
        "counts_layer": "counts",
        "subsample": {"n_cells": None, "seed": 0},
        "min_cells_per_batch": 1,
    }
    expected = CORRUPTIONS[corruption]
    counts = adata.layers.get("counts")
    if expected is None:
        gex = (adata.var["feature_types"] == "GEX").to_numpy()
        has_both = (counts[:, gex].sum(axis=1) > 0) & (counts[:, ~gex].sum(axis=1) > 0)
        if not has_both.any():
            with pytest.raises(InputDataError, match="No cell has both RNA and ADT counts"):
                validate_input(adata, columns, params)
            return
        paired = validate_input(adata, columns, params)
        assert paired.n_obs == has_both.sum()
        assert set(paired.obs["Site"].astype(str)) <= {"s1", "s2"}
        np.testing.assert_array_equal(
            np.asarray(paired["rna"].layers["counts"]), counts[has_both][:, gex]
        )
    else:
        with pytest.raises(InputDataError, match=expected):
            validate_input(adata, columns, params)
