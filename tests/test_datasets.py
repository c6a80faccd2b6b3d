"""The catalog datasets: round trips, atomic writes, versioning, read-only inputs."""

from __future__ import annotations

import mudata as md
import pytest
from kedro.io.core import DatasetError, Version

from cite_bench.datasets import (
    AnnDataDataset,
    CiteSeqFilesDataset,
    MuDataDataset,
    SimulatedCiteSeqDataset,
    atomic_path,
)


def test_anndata_round_trip(small_raw, tmp_path):
    dataset = AnnDataDataset(filepath=str(tmp_path / "raw.h5ad"))
    assert not dataset.exists()
    dataset.save(small_raw)
    assert dataset.exists()
    back = dataset.load()
    assert back.shape == small_raw.shape
    assert (back.layers["counts"] != small_raw.layers["counts"]).nnz == 0
    assert "raw.h5ad" in str(dataset)  # _describe


def test_mudata_round_trip_and_versioning(small_mudata, tmp_path):
    dataset = MuDataDataset(filepath=str(tmp_path / "x.h5mu"), version=Version(None, None))
    dataset.save(small_mudata)
    back = dataset.load()
    assert isinstance(back, md.MuData)
    assert back.shape == small_mudata.shape
    assert len(list((tmp_path / "x.h5mu").iterdir())) == 1  # one timestamped version


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.h5mu"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [target]


def test_failed_save_keeps_the_previous_artifact(small_mudata, tmp_path):
    dataset = MuDataDataset(filepath=str(tmp_path / "x.h5mu"))
    dataset.save(small_mudata)
    before = (tmp_path / "x.h5mu").read_bytes()
    with pytest.raises(DatasetError):
        dataset.save("not a MuData")
    assert (tmp_path / "x.h5mu").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5mu"]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nothing.h5ad"):
        AnnDataDataset(filepath=str(tmp_path / "nothing.h5ad")).load()


def test_not_an_h5ad_file_is_a_clear_error(tmp_path):
    path = tmp_path / "text.h5ad"
    path.write_text("hello")
    with pytest.raises(DatasetError, match="not a readable"):
        AnnDataDataset(filepath=str(path)).load()


def test_paired_files_load_as_mudata_and_are_read_only(small_raw, tmp_path):
    gex = (small_raw.var["feature_types"] == "GEX").to_numpy()
    small_raw[:, gex].write_h5ad(tmp_path / "rna.h5ad")
    small_raw[:, ~gex].write_h5ad(tmp_path / "adt.h5ad")
    dataset = CiteSeqFilesDataset(
        rna_filepath=str(tmp_path / "rna.h5ad"), adt_filepath=str(tmp_path / "adt.h5ad")
    )
    assert dataset.exists()
    mdata = dataset.load()
    assert set(mdata.mod) == {"rna", "adt"}
    assert mdata["adt"].n_vars == (~gex).sum()
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(mdata)
    missing = CiteSeqFilesDataset(
        rna_filepath=str(tmp_path / "rna.h5ad"), adt_filepath=str(tmp_path / "none.h5ad")
    )
    with pytest.raises(DatasetError, match="ADT.*none.h5ad"):
        missing.load()


def test_simulated_dataset_is_generated_on_load():
    dataset = SimulatedCiteSeqDataset(n_cells=100, n_genes=120, n_proteins=10, seed=2)
    adata = dataset.load()
    assert adata.n_obs == 100 and adata.n_vars == 130
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(adata)
