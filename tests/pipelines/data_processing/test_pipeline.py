"""The data_processing pipeline run in memory, as Kedro runs it: raw counts in, one MuData and
the cell table out."""

from __future__ import annotations

import mudata as md
import numpy as np
import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from cite_bench.pipelines.data_processing.pipeline import create_pipeline
from cite_bench.simulation import simulate_cite_seq


class _Kept(MemoryDataset):
    """An output the runner does not release once its last reader has run."""

    def _release(self) -> None:
        pass


def test_pipeline_turns_raw_counts_into_one_mudata(columns, processing_params):
    raw = simulate_cite_seq(n_cells=300, n_genes=200, n_proteins=12, seed=3)
    params = {**processing_params, "n_top_genes": 80, "subsample": {"n_cells": 250, "seed": 0}}
    # As conf/base/catalog.yml: scverse objects are passed on, not deep-copied.
    passed_on = (
        "paired_modalities",
        "subsampled_modalities",
        "rna_preprocessed",
        "adt_preprocessed",
    )
    catalog = DataCatalog(
        {
            "raw_cite_seq": MemoryDataset(raw, copy_mode="assign"),
            "params:columns": MemoryDataset(columns),
            "params:data_processing": MemoryDataset(params),
            "cite_seq_mudata": _Kept(copy_mode="assign"),
            "cell_metadata": _Kept(),
            **{name: MemoryDataset(copy_mode="assign") for name in passed_on},
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)
    mdata, cells = catalog.load("cite_seq_mudata"), catalog.load("cell_metadata")

    assert isinstance(mdata, md.MuData) and list(mdata.mod) == ["rna", "adt"]
    assert mdata.n_obs == 250  # subsampled
    assert mdata["rna"].n_vars == 80  # the highly variable genes
    assert mdata["adt"].n_vars == 12
    for name in ("rna", "adt"):
        modality = mdata[name]
        assert "counts" in modality.layers
        counts = modality.layers["counts"]
        assert np.array_equal(counts.data, np.round(counts.data))  # raw counts kept
        assert not np.array_equal(modality.X.data, counts.data)  # X is transformed
    assert "highly_variable" in mdata["rna"].var
    assert set(mdata.obs_names) <= set(raw.obs_names)
    for column in (columns["batch"], columns["label"], columns["site"], columns["donor"]):
        assert column in cells and isinstance(cells[column].dtype, pd.CategoricalDtype)
    assert list(cells.index) == list(mdata.obs_names)
    assert set(cells[columns["batch"]]) <= set(raw.obs[columns["batch"]].astype(str))
