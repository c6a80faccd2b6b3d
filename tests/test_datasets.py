"""The catalog datasets: round trips, atomic writes, versioning, read-only inputs."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import textwrap

import anndata as ad
import mudata as md
import numpy as np
import pytest
from kedro.io.core import DatasetError, Version
from scipy import sparse

from cite_bench.datasets import (
    INPUT_FORMATS,
    READERS,
    AnnDataDataset,
    CellRangerDataset,
    CellRangerSamplesDataset,
    CiteSeqFilesDataset,
    CiteSeqH5adDataset,
    CiteSeqH5muDataset,
    CiteSeqInputDataset,
    ModelDataset,
    MuDataDataset,
    SimulatedCiteSeqDataset,
    atomic_path,
    input_format,
    recover_interrupted_writes,
)
from cite_bench.methods.model_artifacts import PcaModel


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


def test_a_write_that_raises_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.h5mu"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("failed mid-write")
    assert target.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [target]


def _killed_while(script: str, *arguments: str) -> None:
    """Run ``script`` in a new process and SIGKILL it once it prints "now"."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *arguments],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "now"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    assert process.returncode == -signal.SIGKILL


def test_a_write_killed_midway_leaves_the_previous_file_until_cleared(tmp_path):
    target = tmp_path / "out.h5mu"
    target.write_text("previous")
    _killed_while(
        """
        import sys, time
        from pathlib import Path
        from cite_bench.datasets import atomic_path
        with atomic_path(Path(sys.argv[1])) as temporary, temporary.open("w") as handle:
            handle.write("half")
            handle.flush()
            print("now", flush=True)
            time.sleep(600)
        """,
        str(target),
    )
    assert target.read_text() == "previous"
    (leftover,) = [path for path in tmp_path.iterdir() if path != target]
    assert leftover.name.startswith(".out.h5mu.tmp-")  # hidden, never the final name
    assert recover_interrupted_writes(target) == [f"removed the unfinished '{leftover}'"]
    assert list(tmp_path.iterdir()) == [target]


def test_a_folder_swap_killed_between_its_renames_is_undone_at_the_next_start(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("previous model")
    _killed_while(
        """
        import pathlib, sys, time
        from cite_bench.datasets import atomic_path
        rename = pathlib.Path.rename
        def rename_then_wait(self, destination):
            moved = rename(self, destination)
            if ".old-" in str(destination):  # the first of the two renames
                print("now", flush=True)
                time.sleep(600)
            return moved
        pathlib.Path.rename = rename_then_wait
        with atomic_path(pathlib.Path(sys.argv[1]), directory=True) as temporary:
            (temporary / "weights").write_text("new model")
        """,
        str(target),
    )
    assert not target.exists()  # the window a kill can hit
    assert sorted(path.name.split("-")[0] for path in tmp_path.iterdir()) == [
        ".model.old",
        ".model.tmp",
    ]
    actions = recover_interrupted_writes(target)
    assert len(actions) == 2 and "restored" in actions[1]
    assert (target / "weights").read_text() == "previous model"
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


# --- readers of the formats users bring, built from the real starter subset -----------------


def _tenx(starter_dir, batch: str = "s1d1"):
    from tests.builders import cell_ranger_counts, starter_pair

    return cell_ranger_counts(*starter_pair(starter_dir, batch))


@pytest.mark.parametrize("layout", ["h5", "folder"])
def test_cell_ranger_output_is_read_with_every_feature_type(starter_dir, tmp_path, layout):
    from tests.builders import write_cell_ranger_folder, write_cell_ranger_h5

    expected = _tenx(starter_dir)
    write = write_cell_ranger_h5 if layout == "h5" else write_cell_ranger_folder
    path = write(expected, tmp_path / ("filtered.h5" if layout == "h5" else "filtered"))
    dataset = CellRangerDataset(filepath=str(path))
    assert dataset.exists()
    adata = dataset.load()
    assert adata.shape == (311, 1134)
    assert list(adata.obs_names) == list(expected.obs_names)
    assert adata.var["feature_types"].value_counts().to_dict() == {
        "Gene Expression": 1000,
        "Antibody Capture": 134,
    }
    assert (sparse.csr_matrix(adata.X) != expected.X).nnz == 0  # raw counts, in X
    assert adata.obs.columns.empty  # no batch column: one sample
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(adata)


def test_repeated_gene_symbols_are_made_unique_within_their_feature_type(
    starter_dir, tmp_path, caplog
):
    from tests.builders import write_cell_ranger_h5

    adata = _tenx(starter_dir)
    names = adata.var_names.to_numpy().copy()
    names[1] = names[0]  # Cell Ranger references repeat a few gene symbols
    adata.var_names = names
    genes, proteins = set(names[:1000]), names[1000:]
    shared = [i for i, name in enumerate(proteins, start=1000) if name in genes]
    assert shared  # antibodies named like their gene, e.g. CD14
    with caplog.at_level(logging.INFO):
        back = CellRangerDataset(
            filepath=str(write_cell_ranger_h5(adata, tmp_path / "x.h5"))
        ).load()
    assert back.var_names[:1000].is_unique and back.var_names[1] == f"{names[0]}-1"
    assert list(back.var_names[shared]) == list(names[shared])  # antibodies keep their names
    assert "Made 1 repeated Gene Expression feature names unique" in caplog.text


def test_several_samples_are_one_dataset_with_the_sample_as_batch(starter_dir, tmp_path, caplog):
    from tests.builders import write_cell_ranger_folder, write_cell_ranger_h5

    first, second = _tenx(starter_dir, "s1d1"), _tenx(starter_dir, "s1d2")
    write_cell_ranger_h5(first, tmp_path / "d1.h5")
    write_cell_ranger_folder(second[:, 3:].copy(), tmp_path / "d2")  # 3 genes fewer
    samples = {"s1d1": str(tmp_path / "d1.h5"), "s1d2": str(tmp_path / "d2")}
    dataset = CellRangerSamplesDataset(samples=samples)
    assert dataset.exists()
    with caplog.at_level(logging.WARNING):
        adata = dataset.load()
    starter = ad.read_h5ad(starter_dir / "rna.h5ad", backed="r")
    assert list(adata.obs_names) == list(starter.obs_names)  # 'ACGT-1' + '-s1d1'
    assert adata.obs["batch"].astype(str).tolist() == starter.obs["batch"].astype(str).tolist()
    assert adata.n_vars == 1131
    assert "feature_types" in adata.var
    assert "Kept the 1131 features found in every sample" in caplog.text
    assert "3 only in s1d1" in caplog.text
    with pytest.raises(DatasetError, match="No samples given"):
        CellRangerSamplesDataset(samples={}).load()


def test_input_readers_know_the_formats_and_are_read_only(starter_dir, tmp_path):
    from tests.builders import starter_pair, write_cell_ranger_h5, write_h5mu

    rna, adt = starter_pair(starter_dir, "s1d1")
    files = {
        "h5mu": write_h5mu(rna, adt, tmp_path / "x.h5mu"),
        "10x_h5": write_cell_ranger_h5(_tenx(starter_dir), tmp_path / "x.h5"),
        "h5ad": starter_dir / "rna.h5ad",
    }
    for expected, path in files.items():
        assert input_format(path) == expected
    text = tmp_path / "text.h5ad"
    text.write_text("cell,gene\n")
    assert input_format(text) is None
    mdata = CiteSeqH5muDataset(filepath=str(files["h5mu"])).load()
    assert set(mdata.mod) == {"rna", "prot"}
    with pytest.raises(DatasetError, match="read-only"):
        CiteSeqH5muDataset(filepath=str(files["h5mu"])).save(mdata)
    h5ad = CiteSeqH5adDataset(filepath=str(files["h5ad"]))
    assert h5ad.load().n_obs == 600
    with pytest.raises(DatasetError, match="read-only"):
        h5ad.save(ad.AnnData())
    with pytest.raises(DatasetError, match="is not a readable AnnData"):
        CiteSeqH5adDataset(filepath=str(text)).load()
    with pytest.raises(DatasetError, match="is not a readable AnnData"):
        CellRangerDataset(filepath=str(text)).load()


# --- the one input dataset: each format read by what the file holds, not its name ----------


def _renamed(path, target):
    """``path`` copied to ``target`` (a file or a folder): a name that says nothing."""
    if path.is_dir():
        shutil.copytree(path, target)
    else:
        shutil.copyfile(path, target)
    return target


def test_the_registry_lists_each_format_once_with_what_docs_need():
    assert list(READERS) == ["h5mu", "h5ad", "10x_h5", "10x_mtx", "zarr"]  # h5mu before h5ad
    for name, reader in READERS.items():
        assert reader.name == name
        assert reader.description.startswith(("a ", "an "))
        assert callable(reader.recognise) and callable(reader.read)
        assert INPUT_FORMATS[name] == (reader.description, "kedro run --params inputs.path={path}")


def test_an_h5ad_under_another_name_is_read_as_anndata(starter_dir, tmp_path):
    path = _renamed(starter_dir / "rna.h5ad", tmp_path / "cells.dat")
    assert input_format(path) == "h5ad"
    adata = CiteSeqInputDataset(filepath=str(path)).load()
    assert isinstance(adata, ad.AnnData) and adata.shape == (600, 1000)
    backed = CiteSeqInputDataset(filepath=str(path), load_args={"backed": "r"}).load()
    assert backed.isbacked and backed.shape == (600, 1000)


def test_an_h5mu_under_another_name_is_read_as_mudata(starter_dir, tmp_path):
    from tests.builders import starter_pair, write_h5mu

    path = _renamed(
        write_h5mu(*starter_pair(starter_dir, "s1d1"), tmp_path / "x.h5mu"), tmp_path / "x.bin"
    )
    mdata = CiteSeqInputDataset(filepath=str(path)).load()
    assert isinstance(mdata, md.MuData) and set(mdata.mod) == {"rna", "prot"}


@pytest.mark.parametrize("layout", ["h5", "folder"])
def test_cell_ranger_output_under_another_name_is_read(starter_dir, tmp_path, layout):
    from tests.builders import write_cell_ranger_folder, write_cell_ranger_h5

    expected = _tenx(starter_dir)
    if layout == "h5":
        path = _renamed(write_cell_ranger_h5(expected, tmp_path / "x.h5"), tmp_path / "x.dat")
    else:
        path = write_cell_ranger_folder(expected, tmp_path / "run42")
    assert input_format(path) == ("10x_h5" if layout == "h5" else "10x_mtx")
    adata = CiteSeqInputDataset(filepath=str(path)).load()
    assert adata.shape == (311, 1134)
    assert (sparse.csr_matrix(adata.X) != expected.X).nnz == 0


def test_a_zarr_store_reads_to_the_same_mudata_as_its_h5ad(
    small_raw, columns, processing_params, tmp_path
):
    from cite_bench.pipelines.data_processing.nodes import validate_input

    small_raw.write_h5ad(tmp_path / "raw.h5ad")
    ad.read_h5ad(tmp_path / "raw.h5ad").write_zarr(tmp_path / "raw.zarr")
    store = _renamed(tmp_path / "raw.zarr", tmp_path / "store")  # a folder, by content
    assert input_format(store) == "zarr"
    from_zarr = CiteSeqInputDataset(filepath=str(store)).load()
    from_h5ad = CiteSeqInputDataset(filepath=str(tmp_path / "raw.h5ad")).load()
    paired = [validate_input(raw, columns, processing_params) for raw in (from_zarr, from_h5ad)]
    assert paired[0].shape == paired[1].shape == (small_raw.n_obs, small_raw.n_vars)
    for name in ("rna", "adt"):
        zarr_counts, h5ad_counts = (p[name].layers["counts"] for p in paired)
        assert (sparse.csr_matrix(zarr_counts) != sparse.csr_matrix(h5ad_counts)).nnz == 0
        assert list(paired[0][name].var_names) == list(paired[1][name].var_names)
    assert paired[0].obs.equals(paired[1].obs)


def test_a_folder_where_a_file_is_expected_is_named(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("not counts")
    assert input_format(folder) is None
    with pytest.raises(DatasetError, match=r"'.*results' is a folder, but none that an input"):
        CiteSeqInputDataset(filepath=str(folder)).load()
    with pytest.raises(DatasetError, match=r"'.*results' is a folder, not the RNA AnnData"):
        CiteSeqInputDataset(filepath=str(tmp_path / "results"), adt_filepath=str(folder)).load()


def test_unknown_or_missing_inputs_are_named(tmp_path):
    table = tmp_path / "counts.csv"
    table.write_text("cell,gene\n")
    with pytest.raises(DatasetError, match=r"'.*counts.csv' is not a readable input file"):
        CiteSeqInputDataset(filepath=str(table)).load()
    with pytest.raises(DatasetError, match=r"Input file not found: '.*nothing.h5'"):
        CiteSeqInputDataset(filepath=str(tmp_path / "nothing.h5")).load()
    with pytest.raises(DatasetError, match="no RNA file"):
        CiteSeqInputDataset(adt_filepath=str(table))


def test_a_pair_refuses_another_format_with_the_command_that_reads_it(starter_dir, tmp_path):
    from tests.builders import starter_pair, write_h5mu

    h5mu = write_h5mu(*starter_pair(starter_dir, "s1d1"), tmp_path / "x.h5mu")
    dataset = CiteSeqInputDataset(filepath=str(h5mu), adt_filepath=str(starter_dir / "adt.h5ad"))
    with pytest.raises(
        DatasetError,
        match=r"is a MuData \(.h5mu\) file, not the RNA AnnData \(.h5ad\) file: read it with "
        r"`kedro run --params inputs.path=.*x.h5mu`",
    ):
        dataset.load()


def test_nothing_named_is_the_demo():
    dataset = CiteSeqInputDataset(demo={"n_cells": 100, "n_genes": 120, "n_proteins": 10})
    adata = dataset.load()
    assert adata.shape == (100, 130) and "counts" in adata.layers
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(adata)


def test_samples_and_a_file_named_together_are_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"Both samples \(d1\) and a file .*name one"):
        CiteSeqInputDataset(filepath=str(tmp_path / "a.h5ad"), samples={"d1": str(tmp_path)})


def test_the_dataset_is_named_by_the_command_line_or_after_the_file():
    from cite_bench.config_loader import dataset_name, dataset_name_from_path

    assert dataset_name({}) is None  # globals.yml's name stays
    assert dataset_name({"demo": {"n_cells": 5}}) is None
    assert dataset_name({"dataset": "mine", "inputs": {"path": "/x/a.h5ad"}}) == "mine"
    assert dataset_name({"inputs": {"path": "/x/pbmc10k.h5mu"}}) == "pbmc10k"
    assert dataset_name({"inputs": {"samples": {"d1": "/a", "d2": "/b"}}}) == "d1-d2"
    starter = {"dataset": "bmmc_cite_starter", "inputs": {"path": "rna.h5ad"}}
    assert dataset_name({"inputs": {"path": "/x/copy.h5ad"}}, starter) is None  # its dataset
    assert dataset_name({"dataset": "mine"}, starter) == "mine"
    assert dataset_name_from_path("/data/pbmc/outs/filtered_feature_bc_matrix.h5") == "pbmc"
    assert dataset_name_from_path("/data/study 2/rna.h5ad") == "study_2"
    assert dataset_name_from_path("/data/cells.zarr") == "cells"
    # The name becomes part of every artifact's path: never a way out of data/.
    for unsafe in ("../../etc", "a/b", ".hidden", "x..y"):
        with pytest.raises(ValueError, match="one plain name"):
            dataset_name({"dataset": unsafe})
    assert dataset_name({"inputs": {"samples": {"../up": "/a", "d2": "/b"}}}) == "up-d2"


# --- ModelDataset: saved models are loaded only as the project's own model classes ----------


def _pca() -> PcaModel:
    rng = np.random.default_rng(0)
    return PcaModel(np.array(["a", "b"]), rng.normal(size=2), np.ones(2), rng.normal(size=(1, 2)))


def test_models_round_trip_under_public_class_names(tmp_path):
    dataset = ModelDataset(filepath=str(tmp_path / "pca"))
    dataset.save({"seed_0": _pca(), "seed_1": _pca()})
    loaded = dataset.load()
    assert list(loaded) == ["seed_0", "seed_1"] and isinstance(loaded["seed_1"], PcaModel)
    recorded = json.loads((tmp_path / "pca/seed_0/model_class.json").read_text())["class"]
    assert recorded == "cite_bench.methods.model_artifacts.PcaModel"


def test_models_saved_under_the_old_module_name_still_load(tmp_path):
    dataset = ModelDataset(filepath=str(tmp_path / "pca"))
    dataset.save(_pca())
    legacy = {"class": "cite_bench.pipelines.modelling.model_artifacts.PcaModel"}
    (tmp_path / "pca/model_class.json").write_text(json.dumps(legacy))
    assert isinstance(dataset.load(), PcaModel)


def test_a_model_class_outside_the_project_is_neither_imported_nor_run(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "class Model:\n    @classmethod\n    def load(cls, path):\n        return cls()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("planted_module.Model", "os.system", "builtins.eval"):
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "model_class.json").write_text(json.dumps({"class": name}))
        with pytest.raises(DatasetError, match="not one of the model classes the methods declare"):
            ModelDataset(filepath=str(folder)).load()
    assert not marker.exists()


def test_model_names_cannot_leave_the_model_folder(tmp_path):
    ModelDataset(filepath=str(tmp_path / "outside")).save(_pca())  # a valid model elsewhere
    folder = tmp_path / "models" / "pca"
    ModelDataset(filepath=str(folder)).save({"seed_0": _pca()})
    for name in ("../../outside", str(tmp_path / "outside"), "seed_0/..", ".hidden", ""):
        (folder / "models.json").write_text(json.dumps([name]))
        with pytest.raises(DatasetError, match="not a plain folder name"):
            ModelDataset(filepath=str(folder)).load()
    with pytest.raises(DatasetError, match="not a plain folder name"):
        ModelDataset(filepath=str(tmp_path / "other")).save({"../escape": _pca()})
    assert not (tmp_path / "escape").exists()


class _Unregistered:
    def save(self, dir_path: str, overwrite: bool = False) -> None:
        raise AssertionError("must not be reached")


def test_saving_a_class_that_could_not_be_loaded_again_is_refused(tmp_path):
    refused = "only the model classes the methods declare.*_Unregistered"
    with pytest.raises(DatasetError, match=refused):
        ModelDataset(filepath=str(tmp_path / "model")).save(_Unregistered())
    assert list(tmp_path.iterdir()) == []


class _CopiesAFileWhenUnpickled:
    """What a tampered model.pt can hold: unpickling it calls shutil.copyfile."""

    def __init__(self, source: str, destination: str) -> None:
        self.arguments = (source, destination)

    def __reduce__(self):
        return shutil.copyfile, self.arguments


def test_a_torch_file_that_would_run_code_is_refused(tmp_path):
    import torch

    folder = tmp_path / "totalvi"
    folder.mkdir()
    marker = tmp_path / "code ran"
    payload = {"model_state_dict": {}, "attr_dict": _CopiesAFileWhenUnpickled(__file__, marker)}
    torch.save(payload, folder / "model.pt")
    (folder / "model_class.json").write_text(json.dumps({"class": "scvi.model.TOTALVI"}))
    with pytest.raises(DatasetError, match="shutil.copyfile.*refusing to load"):
        ModelDataset(filepath=str(folder)).load()
    assert not marker.exists()
