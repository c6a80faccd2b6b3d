"""Nodes that turn raw CITE-seq data into one preprocessed MuData.

Raw data arrive either as one AnnData whose RNA and protein features are told apart by
``var["feature_types"]`` (the GEO file, a single ``.h5ad``, 10x Cell Ranger output) or as a
MuData with an RNA modality ``rna`` and a protein modality ``adt`` or ``prot`` (separate
``.h5ad`` files, an ``.h5mu``). Both vocabularies of feature types are understood: ``GEX`` /
``ADT`` (the GEO file) and ``Gene Expression`` / ``Antibody Capture`` (10x Genomics).

Memory is bounded by the raw counts: only the counts are taken from the input (the counts layer
where there is one, and then its ``X`` is never read, so a backed AnnData keeps it on disk; a
layer left on disk is read a block of cells at a time), RNA stays sparse throughout, cells are
subsampled before anything is copied, the normalised matrix is never built whole (the highly
variable genes are found a site at a time) and only the selected genes are normalised for the
result.

The checks, the block-wise reading and the gene selection live in ``cite_bench.preprocessing``;
these nodes call them.
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import mudata as md
import muon as mu
import numpy as np
import pandas as pd

from cite_bench.preprocessing.counts import InputDataError, raw_counts
from cite_bench.preprocessing.hvg import highly_variable_genes, log_normalised
from cite_bench.preprocessing.validation import check_batch_sizes, subset_cells, validate_input

logger = logging.getLogger(__name__)

__all__ = [
    "InputDataError",
    "assemble_mudata",
    "extract_cell_metadata",
    "preprocess_adt",
    "preprocess_rna",
    "subsample_cells",
    "validate_input",
]


def subsample_cells(mdata: md.MuData, params: dict[str, Any], columns: dict[str, str]) -> md.MuData:
    """Draw a random subset of cells (``subsample.n_cells: null`` keeps all), reproducibly by
    ``subsample.seed``; every batch must keep enough cells for the models."""
    n_cells, seed = params["subsample"]["n_cells"], params["subsample"]["seed"]
    if n_cells is None or n_cells == mdata.n_obs:
        return mdata  # nothing changes, so nothing is copied
    if n_cells > mdata.n_obs:
        raise InputDataError(
            f"subsample.n_cells={n_cells} is larger than the data ({mdata.n_obs} cells); "
            "set it to null to keep all cells."
        )
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(mdata.n_obs, size=n_cells, replace=False))
    subset = subset_cells(mdata, keep)
    logger.info("Subsampled %d of %d cells (seed %d).", n_cells, mdata.n_obs, seed)
    check_batch_sizes(subset.obs, columns["batch"], params["min_cells_per_batch"])
    return subset


def preprocess_rna(mdata: md.MuData, params: dict[str, Any], columns: dict[str, str]) -> ad.AnnData:
    """Raw counts into ``.X`` (kept in ``layers["counts"]``), library-size normalisation,
    ``log1p``, and the most variable genes selected with the site as batch key.

    The result is scanpy's, value for value: ``normalize_total``, ``log1p``, then
    ``highly_variable_genes(flavor="seurat", batch_key=site)``, then the selected genes. But the
    normalised matrix of all genes is never built: scanpy's batch-aware selection holds it with
    up to three copies of a site's cells (6 GB at ~90,000 cells). Normalisation and ``log1p``
    work within each cell, so scanpy runs them on blocks of cells; the selection needs only
    each site's per-gene statistics (``cite_bench.preprocessing.hvg``); and only the selected genes
    are normalised for the result.
    """
    layer = params["counts_layer"]
    counts = raw_counts(mdata["rna"], layer, "RNA")
    var_names = mdata["rna"].var_names
    sites = mdata.obs.loc[mdata["rna"].obs_names, columns["site"]]
    n_top_genes = min(params["n_top_genes"], counts.shape[1])
    hvg, factors = highly_variable_genes(
        counts, sites, params["target_sum"], n_top_genes, var_names
    )
    selected = hvg["highly_variable"].to_numpy()
    var = mdata["rna"].var.loc[selected].copy()
    for column in hvg:
        var[column] = hvg.loc[selected, column].to_numpy()
    selected_counts = counts[:, selected]
    rna = ad.AnnData(
        X=log_normalised(selected_counts, factors),
        obs=pd.DataFrame(index=mdata["rna"].obs_names),
        var=var,
        uns={"log1p": {"base": None}, "hvg": {"flavor": "seurat"}},
        layers={"counts": selected_counts},
    )
    logger.info("Kept %d highly variable genes of %d.", rna.n_vars, counts.shape[1])
    return rna


def preprocess_adt(mdata: md.MuData, params: dict[str, Any]) -> ad.AnnData:
    """Raw counts into ``.X`` (kept in ``layers["counts"]``), then muon's CLR transform."""
    adt = _with_raw_counts(mdata["adt"], params["counts_layer"], "ADT")
    mu.prot.pp.clr(adt, axis=params["clr_axis"])
    return adt


def _with_raw_counts(modality: ad.AnnData, layer: str, name: str) -> ad.AnnData:
    counts = raw_counts(modality, layer, name)
    return ad.AnnData(
        X=counts.copy(),
        obs=pd.DataFrame(index=modality.obs_names),
        var=modality.var.copy(),
        layers={"counts": counts},
    )


def assemble_mudata(rna: ad.AnnData, adt: ad.AnnData, cells: md.MuData) -> md.MuData:
    """One MuData with the processed modalities and the shared cell annotations."""
    mdata = md.MuData({"rna": rna, "adt": adt})
    mdata.obs = cells.obs.loc[mdata.obs_names].copy()
    return mdata


def extract_cell_metadata(mdata: md.MuData) -> pd.DataFrame:
    """Cell annotations as a table, for evaluation without loading the whole MuData."""
    return mdata.obs.copy()
