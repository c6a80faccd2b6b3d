"""Bad input is refused by the first node, before any long work, with a message that names the
problem, and leaves no artifact behind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kedro.io.core import DatasetError
from scipy import sparse

from cite_bench.pipelines.data_processing.nodes import InputDataError, validate_input
from tests.builders import (
    cell_ranger_counts,
    write_cell_ranger_folder,
    write_cell_ranger_h5,
    write_h5mu,
)
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


def _normalised_x_without_layer(adata: ad.AnnData) -> ad.AnnData:
    """No counts layer, and X holds log-normalised values (as many processed files do)."""
    adata = adata.copy()
    del adata.layers["counts"]
    adata.X = sparse.csr_matrix(adata.X).log1p()
    return adata


def _boolean_counts(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    adata.layers["counts"] = adata.layers["counts"] > 0
    return adata


def _text_counts(adata: ad.AnnData) -> ad.AnnData:
    adata = _dense_counts(adata)
    adata.layers["counts"] = adata.layers["counts"].astype(int).astype(str)
    return adata


def _missing_value(column: str) -> Callable[[ad.AnnData], ad.AnnData]:
    def corrupt(adata: ad.AnnData) -> ad.AnnData:
        adata = adata.copy()
        values = adata.obs[column].astype(object).to_numpy()
        values[[2, 7]] = None
        adata.obs[column] = values
        return adata

    return corrupt


def _duplicate_barcode(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    names = adata.obs_names.to_numpy().copy()
    names[1] = names[0]
    adata.obs_names = names
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
    (
        "no counts layer, normalised X",
        _normalised_x_without_layer,
        r"no raw-count layer 'counts' \(layers: none\), and its X is not raw counts either: "
        r"\d+ non-integer values",
    ),
    ("negative counts", _set_value(-1.0), "'counts' is not raw counts: 1 negative"),
    ("non-integer counts", _set_value(0.5), "'counts' is not raw counts: 1 non-integer"),
    ("NaN counts", _set_value(np.nan), "'counts' is not raw counts: 1 NaN or infinite"),
    ("infinite counts", _set_value(np.inf), "1 NaN or infinite"),
    ("boolean counts", _boolean_counts, "'counts' is not raw counts: its values are boolean"),
    ("text counts", _text_counts, r"'counts' is not raw counts: its values are not numbers"),
    ("no ADT features", _without_adt, "has no ADT features \\('ADT' or 'Antibody Capture'"),
    ("no feature_types", _without_feature_types, "no 'feature_types' column"),
    ("duplicate barcodes", _duplicate_barcode, "1 duplicate barcodes"),
    ("batch too small", _tiny_batch, r"too small for the models.*'s9d9': 3"),
    ("NaN in site column", _missing_value("Site"), "Site column 'Site' is empty for 2 cells"),
    (
        "NaN in donor column",
        _missing_value("DonorNumber"),
        "Donor column 'DonorNumber' is empty for 2 cells",
    ),
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


def _split(adata: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    gex = (adata.var["feature_types"] == "GEX").to_numpy()
    return adata[:, gex].copy(), adata[:, ~gex].copy()


def test_raw_counts_in_x_are_used_and_logged(small_raw, columns, processing_params, caplog):
    raw = small_raw.copy()
    del raw.layers["counts"]  # X holds the raw counts, as in 10x files
    with caplog.at_level(logging.INFO):
        paired = validate_input(raw, columns, processing_params)
    assert "RNA has no layer 'counts': using its X, which holds raw integer counts" in caplog.text
    assert "ADT has no layer 'counts': using its X" in caplog.text
    expected = validate_input(small_raw, columns, processing_params)
    for name in ("rna", "adt"):
        assert (paired[name].layers["counts"] != expected[name].layers["counts"]).nnz == 0


def test_without_a_batch_column_all_cells_are_one_batch(
    small_raw, columns, processing_params, caplog
):
    raw = small_raw.copy()
    raw.obs = raw.obs[["cell_type"]]  # one sample: no batch, site or donor
    with caplog.at_level(logging.WARNING):
        paired = validate_input(raw, columns, processing_params)
    assert "obs has no batch column 'batch': the 400 cells are taken for one sample" in caplog.text
    assert set(paired.obs["batch"]) == {"all"}
    assert set(paired.obs["Site"]) == {"all"}  # the batch serves as site for the HVGs
    assert "DonorNumber" not in paired.obs


def test_batches_not_named_like_s1d2_serve_as_site(small_raw, columns, processing_params):
    raw = small_raw.copy()
    raw.obs = raw.obs[["cell_type"]].assign(batch=np.where(np.arange(400) % 2, "lane1", "lane2"))
    paired = validate_input(raw, columns, processing_params)
    assert (paired.obs["Site"].astype(str) == paired.obs["batch"].astype(str)).all()


def test_tenx_feature_type_vocabulary_is_understood(small_raw, columns, processing_params):
    raw = small_raw.copy()
    raw.var["feature_types"] = raw.var["feature_types"].map(
        {"GEX": "Gene Expression", "ADT": "Antibody Capture"}
    )
    paired = validate_input(raw, columns, processing_params)
    assert (paired["rna"].n_vars, paired["adt"].n_vars) == (300, 20)


def test_features_of_other_types_are_dropped_and_named(
    small_raw, columns, processing_params, caplog
):
    raw = small_raw.copy()
    types = raw.var["feature_types"].astype(str).to_numpy()
    types[:4] = "CRISPR Guide Capture"
    types[-1] = "Multiplexing Capture"
    raw.var["feature_types"] = types
    with caplog.at_level(logging.WARNING):
        paired = validate_input(raw, columns, processing_params)
    assert (paired["rna"].n_vars, paired["adt"].n_vars) == (296, 19)
    assert (
        "Dropped 5 features of types other than RNA and protein (var['feature_types']): "
        "'CRISPR Guide Capture' (4), 'Multiplexing Capture' (1)" in caplog.text
    )


def test_features_without_counts_are_dropped_and_counted(
    small_raw, columns, processing_params, caplog
):
    raw = small_raw.copy()
    counts = raw.layers["counts"].tolil()
    counts[:, [0, 1, 2, 310]] = 0  # three genes and one protein never detected
    raw.layers["counts"] = sparse.csr_matrix(counts)
    with caplog.at_level(logging.WARNING):
        paired = validate_input(raw, columns, processing_params)
    assert (paired["rna"].n_vars, paired["adt"].n_vars) == (297, 19)
    assert raw.var_names[310] not in paired["adt"].var_names
    assert (
        "Dropped features without counts in any cell: 3 of 300 RNA genes (e.g. "
        f"{list(raw.var_names[:3])}) and 1 of 20 ADT proteins (['{raw.var_names[310]}'])"
        in caplog.text
    )
    assert paired["rna"].X is paired["rna"].layers["counts"]  # still one matrix


@pytest.mark.parametrize("protein", ["prot", "adt"])
def test_mudata_with_scverse_modality_names(small_raw, columns, processing_params, protein):
    rna, adt = _split(small_raw)
    mdata = md.MuData({"rna": rna, protein: adt, "hto": adt[:, :3].copy()})
    paired = validate_input(mdata, columns, processing_params)
    assert list(paired.mod) == ["rna", "adt"]
    assert paired["adt"].n_vars == 20


def test_mudata_annotations_on_the_mudata_itself(small_raw, columns, processing_params):
    rna, adt = _split(small_raw)
    obs = rna.obs.copy()
    rna.obs, adt.obs = obs.iloc[:, :0], obs.iloc[:, :0]
    mdata = md.MuData({"rna": rna, "prot": adt})
    mdata.obs = obs
    paired = validate_input(mdata, columns, processing_params)
    pd.testing.assert_series_equal(
        paired.obs["cell_type"].astype(str), obs["cell_type"].astype(str)
    )


def test_mudata_extra_modalities_are_named(small_raw, columns, processing_params, caplog):
    rna, adt = _split(small_raw)
    with caplog.at_level(logging.WARNING):
        validate_input(md.MuData({"rna": rna, "prot": adt, "hto": adt}), columns, processing_params)
    assert "Ignored the MuData modalities ['hto']" in caplog.text


MUDATA_PROBLEMS = [
    ("no protein modality", lambda r, a: {"rna": r, "atac": a}, "a protein modality 'adt' or"),
    ("two protein modalities", lambda r, a: {"rna": r, "adt": a, "prot": a}, "two protein"),
    (
        "ADT holds genes",
        lambda r, a: {"rna": r, "adt": r.copy()},
        r"ADT holds 300 of 300 features with var\['feature_types'\] \['GEX'\] "
        r"\(e.g. .*\): genes, not proteins",
    ),
    (
        "RNA holds proteins",
        lambda r, a: {"rna": a.copy(), "adt": a},
        r"RNA holds 20 of 20 features .* \['ADT'\].*proteins, not genes",
    ),
    (
        "RNA given twice without feature types",
        lambda r, a: {"rna": _untyped(r[:, :100]), "adt": _untyped(r[:, :100])},
        "RNA and ADT have the same 100 features",
    ),
    (
        "ADT without feature types, larger than a panel",
        lambda r, a: {"rna": r, "adt": _untyped(r)},
        r"ADT \('adt'\) has 300 features and no var\['feature_types'\].*"
        r"data_processing.max_adt_features=200",
    ),
    (
        "RNA and ADT disagree on batches",
        lambda r, a: {"rna": r, "adt": _with_batch(a, 5, "s9d9")},
        r"RNA and ADT disagree on the batch \('batch'\) of 5 cells, e\.g\. '\w+-1-s\dd\d': "
        r"'s\dd\d' \(RNA\) vs 's9d9' \(ADT\)",
    ),
]


def _untyped(adata: ad.AnnData) -> ad.AnnData:
    adata = adata.copy()
    del adata.var["feature_types"]
    return adata


def _with_batch(adata: ad.AnnData, n_cells: int, batch: str) -> ad.AnnData:
    adata = adata.copy()
    values = adata.obs["batch"].astype(str).to_numpy()
    values[:n_cells] = batch
    adata.obs["batch"] = values
    return adata


@pytest.mark.parametrize(
    ("case", "modalities", "message"), MUDATA_PROBLEMS, ids=[c[0] for c in MUDATA_PROBLEMS]
)
def test_bad_mudata_is_named(small_raw, columns, processing_params, case, modalities, message):
    rna, adt = _split(small_raw)
    params = {**processing_params, "max_adt_features": 200}
    with pytest.raises(InputDataError, match=message):
        validate_input(md.MuData(modalities(rna, adt)), columns, params)


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
            "inputs": {"path": str(path)},
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
            pipeline_names=["data_processing"],
            runtime_params={
                "inputs": {
                    "path": str(tmp_path / "rna.h5ad"),
                    "adt_path": str(tmp_path / "adt.h5ad"),
                },
                "tracking": {"enabled": False},
            },
        )
    assert _artifacts(project) == []


# Inputs in the wrong place or of the wrong kind, each through the `kedro run` a user would type:
# (what is wrong, how to make the input files in a folder -> (env, inputs), error, message).
# Every format is read by content, so these are the layouts a format cannot fix.


def _pair(folder: Path, raw: ad.AnnData, adt_from_rna: bool = False) -> dict[str, str]:
    gex = (raw.var["feature_types"] == "GEX").to_numpy()
    raw[:, gex].write_h5ad(folder / "rna.h5ad")
    if not adt_from_rna:
        raw[:, ~gex].write_h5ad(folder / "adt.h5ad")
    return {
        "path": str(folder / "rna.h5ad"),
        "adt_path": str(folder / ("rna.h5ad" if adt_from_rna else "adt.h5ad")),
    }


def _rna_file_as_adt(folder: Path, raw: ad.AnnData) -> tuple[str | None, dict]:
    return None, _pair(folder, raw, adt_from_rna=True)


def _untyped_rna_file_twice(folder: Path, raw: ad.AnnData) -> tuple[str, dict]:
    rna, _ = _split(raw)
    del rna.var["feature_types"]
    rna.write_h5ad(folder / "genes.h5ad")
    return None, {"path": str(folder / "genes.h5ad"), "adt_path": str(folder / "genes.h5ad")}


def _batches_disagree(folder: Path, raw: ad.AnnData) -> tuple[str, dict]:
    inputs = _pair(folder, raw)
    adt = ad.read_h5ad(inputs["adt_path"])
    adt.obs["batch"] = np.where(np.arange(adt.n_obs) < 3, "s9d9", adt.obs["batch"].astype(str))
    adt.write_h5ad(inputs["adt_path"])
    return None, inputs


def _h5mu_as_rna(folder: Path, raw: ad.AnnData) -> tuple[str, dict]:
    inputs = _pair(folder, raw)
    rna, adt = _split(raw)
    write_h5mu(rna, adt, folder / "data.h5mu")
    return None, {**inputs, "path": str(folder / "data.h5mu")}


def _tenx_folder_as_adt(folder: Path, raw: ad.AnnData) -> tuple[str, dict]:
    inputs = _pair(folder, raw)
    write_cell_ranger_folder(cell_ranger_counts(*_split(raw)), folder / "matrix")
    return None, {**inputs, "adt_path": str(folder / "matrix")}


def _h5ad_as_sample(folder: Path, raw: ad.AnnData) -> tuple[str | None, dict]:
    write_cell_ranger_h5(cell_ranger_counts(*_split(raw)), folder / "d1.h5")
    raw.write_h5ad(folder / "data.h5ad")
    return None, {"samples": {"d1": str(folder / "d1.h5"), "d2": str(folder / "data.h5ad")}}


def _folder_of_something_else(folder: Path, raw: ad.AnnData) -> tuple[str | None, dict]:
    (folder / "results").mkdir()
    raw.obs.to_csv(folder / "results" / "cells.csv")
    return None, {"path": str(folder / "results")}


def _adt_without_rna(folder: Path, raw: ad.AnnData) -> tuple[str | None, dict]:
    inputs = _pair(folder, raw)
    return None, {"adt_path": inputs["adt_path"]}


def _h5mu_with_genes_as_protein(folder: Path, raw: ad.AnnData) -> tuple[str | None, dict]:
    rna, _ = _split(raw)
    write_h5mu(rna, rna, folder / "data.h5mu")
    return None, {"path": str(folder / "data.h5mu")}


def _sample_not_found(folder: Path, raw: ad.AnnData) -> tuple[str | None, dict]:
    write_cell_ranger_h5(cell_ranger_counts(*_split(raw)), folder / "d1.h5")
    return None, {"samples": {"d1": str(folder / "d1.h5"), "d2": str(folder / "d2.h5")}}


WRONG_INPUTS = [
    (
        "RNA file given as ADT",
        _rna_file_as_adt,
        InputDataError,
        r"ADT holds 300 of 300 features with var\['feature_types'\] \['GEX'\].*genes, not "
        "proteins",
    ),
    (
        "one file without feature types given as RNA and as ADT",
        _untyped_rna_file_twice,
        InputDataError,
        "RNA and ADT have the same 300 features",
    ),
    (
        "RNA and ADT files disagree on batches",
        _batches_disagree,
        InputDataError,
        r"RNA and ADT disagree on the batch \('batch'\) of 3 cells",
    ),
    (
        ".h5mu given as the RNA .h5ad",
        _h5mu_as_rna,
        DatasetError,
        r"is a MuData \(.h5mu\) file, not the RNA AnnData \(.h5ad\) file: read it with "
        r"`kedro run --params inputs.path=.*data.h5mu`",
    ),
    (
        "10x matrix folder given as the ADT .h5ad",
        _tenx_folder_as_adt,
        DatasetError,
        r"is a 10x Cell Ranger matrix folder .*, not the ADT AnnData \(.h5ad\) file: read it "
        r"with `kedro run --params inputs.path=.*matrix`",
    ),
    (
        ".h5ad given as a Cell Ranger sample",
        _h5ad_as_sample,
        DatasetError,
        r"is an AnnData \(.h5ad\) file, not a 10x Cell Ranger .h5 file or matrix folder: read "
        r"it with `kedro run --params inputs.path=.*data.h5ad`",
    ),
    (
        "a folder of something else as the input",
        _folder_of_something_else,
        DatasetError,
        r"'.*results' is a folder, but none that an input reader knows",
    ),
    ("an ADT file without an RNA file", _adt_without_rna, DatasetError, r"but no RNA file"),
    (
        ".h5mu whose protein modality holds genes",
        _h5mu_with_genes_as_protein,
        InputDataError,
        r"ADT holds 300 of 300 features .*genes, not proteins",
    ),
    (
        "a listed sample is missing",
        _sample_not_found,
        DatasetError,
        r"a 10x Cell Ranger .h5 file or matrix folder not found: '.*d2.h5'",
    ),
]


@pytest.mark.parametrize(
    ("case", "make", "error", "message"), WRONG_INPUTS, ids=[c[0] for c in WRONG_INPUTS]
)
def test_wrong_input_fails_the_run_by_name_and_writes_nothing(
    project, tmp_path_factory, small_raw, case, make, error, message
):
    folder = tmp_path_factory.mktemp("input")
    env, inputs = make(folder, small_raw)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    with pytest.raises(error, match=message):
        run_kedro(
            project,
            env=env,
            pipeline_names=["data_processing"],
            runtime_params={"inputs": inputs, "tracking": {"enabled": False}},
        )
    assert _artifacts(project) == []
    assert {path: path.read_bytes() for path in before} == before  # inputs untouched


def test_the_rna_file_given_twice_is_refused(project, starter_dir):
    """The issue's case: the starter's RNA file as RNA and as ADT."""
    rna = str(starter_dir / "rna.h5ad")
    with pytest.raises(InputDataError, match=r"ADT holds 1000 of 1000 features .*'GEX'"):
        run_kedro(
            project,
            pipeline_names=["data_processing"],
            runtime_params={
                "inputs": {"path": rna, "adt_path": rna},
                "tracking": {"enabled": False},
            },
        )
    assert _artifacts(project) == []


def test_an_rna_file_without_feature_types_as_adt_is_refused(project, tmp_path, starter_dir):
    """Without feature types, a 'protein panel' of 1,000 features is taken for genes."""
    rna = ad.read_h5ad(starter_dir / "rna.h5ad")
    del rna.var["feature_types"]
    rna.write_h5ad(tmp_path / "genes.h5ad")
    inputs = {"path": str(starter_dir / "rna.h5ad"), "adt_path": str(tmp_path / "genes.h5ad")}
    with pytest.raises(
        InputDataError,
        match=r"ADT \('adt'\) has 1000 features and no var\['feature_types'\].*"
        r"max_adt_features=500\)\. Are these genes\?",
    ):
        run_kedro(
            project,
            pipeline_names=["data_processing"],
            runtime_params={"inputs": inputs, "tracking": {"enabled": False}},
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
    "no batch": None,  # one sample: one batch
    "counts in X": None,  # no counts layer, raw counts in X
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
        adata.X = adata.X + 0.5  # normalised values, not counts
    elif corruption == "counts in X":
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
    counts = adata.layers.get("counts", adata.X)
    if expected is None:
        gex = (adata.var["feature_types"] == "GEX").to_numpy()
        has_both = (counts[:, gex].sum(axis=1) > 0) & (counts[:, ~gex].sum(axis=1) > 0)
        if not has_both.any():
            with pytest.raises(InputDataError, match="No cell has both RNA and ADT counts"):
                validate_input(adata, columns, params)
            return
        paired = validate_input(adata, columns, params)
        assert paired.n_obs == has_both.sum()
        sites = {"all"} if corruption == "no batch" else {"s1", "s2"}
        assert set(paired.obs["Site"].astype(str)) <= sites
        detected = counts[has_both].sum(axis=0) > 0  # genes without counts are dropped
        np.testing.assert_array_equal(
            np.asarray(paired["rna"].layers["counts"]), counts[has_both][:, gex & detected]
        )
    else:
        with pytest.raises(InputDataError, match=expected):
            validate_input(adata, columns, params)
