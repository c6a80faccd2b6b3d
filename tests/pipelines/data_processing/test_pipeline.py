"""The data_processing pipeline run in memory, as Kedro runs it: raw counts in, one MuData and
the cell table out."""

from __future__ import annotations

import mudata as md
import numpy as np
import pandas as pd

from cite_bench.pipelines.data_processing.pipeline import create_pipeline
from cite_bench.simulation import simulate_cite_seq
from tests.builders import run_in_memory


def test_pipeline_turns_raw_counts_into_one_mudata(columns, processing_params):
    raw = simulate_cite_seq(n_cells=300, n_genes=200, n_proteins=12, seed=3)
    params = {**processing_params, "n_top_genes": 80, "subsample": {"n_cells": 250, "seed": 0}}
    catalog = run_in_memory(
        create_pipeline(),
        {
            "raw_cite_seq": raw,
            "params:columns": columns,
            "params:data_processing": params,
        },
    )
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
