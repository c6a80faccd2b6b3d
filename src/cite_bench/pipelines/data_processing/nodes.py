"""Nodes that turn raw CITE-seq data into one preprocessed MuData.

Raw data arrive either as one AnnData in the GEO layout (GEX and ADT told apart by
``var["feature_types"]``) or as a MuData with ``rna`` and ``adt`` modalities (separate files).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import anndata as ad
import mudata as md
import muon as mu
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

logger = logging.getLogger(__name__)

RNA_FEATURE_TYPE = "GEX"
ADT_FEATURE_TYPE = "ADT"
_BATCH_PATTERN = re.compile(r"^(?P<site>s\d+)(?P<donor>d\d+)$")


class InputDataError(ValueError):
    """Raised when raw data cannot be used; the message names the column, layer or feature."""


def validate_input(
    raw: ad.AnnData | md.MuData, columns: dict[str, str], params: dict[str, Any]
) -> md.MuData:
    """Check the raw data before any long work and pair RNA with ADT, cell by cell.

    Every problem is raised as an :class:`InputDataError` naming the modality, layer, column or
    feature at fault. Cells without any RNA or ADT counts are dropped (and counted in the log).
    The result holds ``rna`` and ``adt`` with raw counts in ``layers[counts_layer]`` and the cell
    annotations once, on the MuData, with ``Site`` and ``DonorNumber`` derived from ``batch``
    (``s1d2`` -> ``s1``, ``d2``) where they are missing.
    """
    if isinstance(raw, md.MuData):
        rna, adt = _modalities_from_mudata(raw)
    elif isinstance(raw, ad.AnnData):
        rna, adt = _modalities_from_feature_types(raw)
    else:
        raise InputDataError(f"The raw input is a {type(raw).__name__}, not AnnData or MuData.")
    layer = params["counts_layer"]
    for name, modality in (("RNA", rna), ("ADT", adt)):
        _check_names(modality, name)
        _check_counts(modality, layer, name)
    shared = rna.obs_names.intersection(adt.obs_names, sort=False)
    if shared.size < max(rna.n_obs, adt.n_obs):
        raise InputDataError(
            f"RNA ({rna.n_obs} cells) and ADT ({adt.n_obs} cells) barcodes do not match: "
            f"{rna.n_obs - shared.size} RNA and {adt.n_obs - shared.size} ADT barcodes "
            "have no partner."
        )
    adt = adt[rna.obs_names]
    obs = _cell_annotations(rna.obs, adt.obs, columns)
    mdata = md.MuData({"rna": _without_obs(rna), "adt": _without_obs(adt)})
    mdata.obs = obs
    mdata = _drop_empty_cells(mdata, layer)
    n_cells = params["subsample"]["n_cells"]
    if n_cells is not None and n_cells > mdata.n_obs:
        raise InputDataError(
            f"subsample.n_cells={n_cells} is larger than the data ({mdata.n_obs} cells with "
            "counts); set data_processing.subsample.n_cells to null to keep all cells."
        )
    check_batch_sizes(mdata.obs, columns["batch"], params["min_cells_per_batch"])
    return mdata


def _check_names(modality: ad.AnnData, name: str) -> None:
    for axis, names in (("barcodes", modality.obs_names), ("feature names", modality.var_names)):
        duplicated = names[names.duplicated()]
        if duplicated.size:
            raise InputDataError(
                f"{name} has {duplicated.size} duplicate {axis}, e.g. "
                f"{list(duplicated.unique()[:3])}."
            )


def _check_counts(modality: ad.AnnData, layer: str, name: str) -> None:
    """Raw counts must exist and be finite, non-negative integers."""
    layers = _named_layers(modality)
    if layer not in layers:
        raise InputDataError(
            f"{name} has no raw-count layer '{layer}' (layers: {sorted(layers) or 'none'}); "
            "set data_processing.counts_layer."
        )
    matrix = layers[layer]
    values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix).ravel()
    if values.dtype.kind not in "biuf":
        raise InputDataError(f"{name} layer '{layer}' is not numeric (dtype {values.dtype}).")
    problems = {
        "NaN or infinite": int((~np.isfinite(values)).sum()) if values.dtype.kind == "f" else 0,
        "negative": int((values < 0).sum()),
        "non-integer": int((np.mod(values[np.isfinite(values)], 1) != 0).sum())
        if values.dtype.kind == "f"
        else 0,
    }
    for problem, count in problems.items():
        if count:
            raise InputDataError(
                f"{name} layer '{layer}' is not raw counts: {count} {problem} values."
            )


def _drop_empty_cells(mdata: md.MuData, layer: str) -> md.MuData:
    totals = {
        name: np.asarray(mdata[name].layers[layer].sum(axis=1)).ravel() for name in ("rna", "adt")
    }
    keep = (totals["rna"] > 0) & (totals["adt"] > 0)
    if keep.all():
        return mdata
    logger.warning(
        "Dropped %d of %d cells without counts (%d without RNA, %d without ADT counts).",
        (~keep).sum(),
        keep.size,
        (totals["rna"] == 0).sum(),
        (totals["adt"] == 0).sum(),
    )
    if not keep.any():
        raise InputDataError(f"No cell has both RNA and ADT counts in layer '{layer}'.")
    return _subset_cells(mdata, keep)


def _subset_cells(mdata: md.MuData, keep: np.ndarray) -> md.MuData:
    """The selected cells, with annotation categories that no cell uses any more removed."""
    subset = mdata[keep].copy()
    for column in subset.obs:
        if isinstance(subset.obs[column].dtype, pd.CategoricalDtype):
            subset.obs[column] = subset.obs[column].cat.remove_unused_categories()
    return subset


def check_batch_sizes(obs: pd.DataFrame, batch: str, minimum: int) -> None:
    """Batch-aware models need a few cells of every batch to learn its effect."""
    sizes = obs[batch].astype(str).value_counts()  # batches with no cell left are not batches
    small = sizes[sizes < minimum]
    if small.size:
        raise InputDataError(
            f"Batch column '{batch}' has batches too small for the models (fewer than "
            f"{minimum} cells): {small.to_dict()}. Remove them, merge them, or lower "
            "data_processing.min_cells_per_batch."
        )


def _without_obs(modality: ad.AnnData) -> ad.AnnData:
    """The modality with its cell annotations dropped: they are kept once, on the MuData."""
    return ad.AnnData(
        X=modality.X,
        obs=pd.DataFrame(index=modality.obs_names),
        var=modality.var,
        layers=_named_layers(modality),
    )


def _named_layers(modality: ad.AnnData) -> dict[str, Any]:
    """The layers proper: anndata 0.13 also lists ``.X`` among them under the key ``None``."""
    return {name: matrix for name, matrix in modality.layers.items() if name is not None}


def _modalities_from_feature_types(raw: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    if "feature_types" not in raw.var:
        raise InputDataError(
            "var has no 'feature_types' column: cannot tell RNA (GEX) from protein (ADT) features."
        )
    feature_types = raw.var["feature_types"].astype(str)
    found = sorted(feature_types.unique())
    for wanted in (RNA_FEATURE_TYPE, ADT_FEATURE_TYPE):
        if wanted not in found:
            raise InputDataError(
                f"var['feature_types'] has no '{wanted}' features (found: {', '.join(found)})."
            )
    return (
        raw[:, feature_types == RNA_FEATURE_TYPE].copy(),
        raw[:, feature_types == ADT_FEATURE_TYPE].copy(),
    )


def _modalities_from_mudata(raw: md.MuData) -> tuple[ad.AnnData, ad.AnnData]:
    missing = {"rna", "adt"} - set(raw.mod)
    if missing:
        raise InputDataError(
            f"MuData has no modality {sorted(missing)} (found: {sorted(raw.mod)})."
        )
    return raw["rna"].copy(), raw["adt"].copy()


def _cell_annotations(
    rna_obs: pd.DataFrame, adt_obs: pd.DataFrame, columns: dict[str, str]
) -> pd.DataFrame:
    """Collect the annotation columns, preferring RNA's and falling back to ADT's."""
    obs = pd.DataFrame(index=rna_obs.index)
    for key in ("batch", "label", "site", "donor"):
        column = columns[key]
        for source in (rna_obs, adt_obs):
            if column in source:
                obs[column] = source[column].to_numpy()
                break
    batch = columns["batch"]
    if batch not in obs:
        raise InputDataError(f"obs has no batch column '{batch}' (set columns.batch).")
    if obs[batch].isna().any():
        raise InputDataError(
            f"Batch column '{batch}' is empty for {int(obs[batch].isna().sum())} cells."
        )
    obs[batch] = obs[batch].astype(str)
    if columns["label"] not in obs:
        logger.warning(
            "obs has no label column '%s': the models train as usual, and evaluation skips "
            "the metrics that need cell-type labels.",
            columns["label"],
        )
    if columns["site"] not in obs or columns["donor"] not in obs:
        parts = obs[batch].str.extract(_BATCH_PATTERN)
        if parts.isna().any().any():
            bad = obs.loc[parts["site"].isna(), batch].unique()[:3]
            raise InputDataError(
                f"obs has no '{columns['site']}'/'{columns['donor']}' columns and batch values "
                f"such as {list(bad)} are not of the form 's1d2' to derive them from."
            )
        if columns["site"] not in obs:
            obs[columns["site"]] = parts["site"]
        if columns["donor"] not in obs:
            obs[columns["donor"]] = parts["donor"]
    for column in obs:
        # Plain string categories; missing labels stay missing (not the string 'nan').
        values = obs[column]
        obs[column] = pd.Categorical(values.astype(str).where(values.notna(), None))
    return obs


def subsample_cells(mdata: md.MuData, params: dict[str, Any], columns: dict[str, str]) -> md.MuData:
    """Draw a random subset of cells (``subsample.n_cells: null`` keeps all), reproducibly by
    ``subsample.seed``; every batch must keep enough cells for the models."""
    n_cells, seed = params["subsample"]["n_cells"], params["subsample"]["seed"]
    if n_cells is None or n_cells == mdata.n_obs:
        return mdata.copy()
    if n_cells > mdata.n_obs:
        raise InputDataError(
            f"subsample.n_cells={n_cells} is larger than the data ({mdata.n_obs} cells); "
            "set it to null to keep all cells."
        )
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(mdata.n_obs, size=n_cells, replace=False))
    subset = _subset_cells(mdata, keep)
    logger.info("Subsampled %d of %d cells (seed %d).", n_cells, mdata.n_obs, seed)
    check_batch_sizes(subset.obs, columns["batch"], params["min_cells_per_batch"])
    return subset


def preprocess_rna(mdata: md.MuData, params: dict[str, Any], columns: dict[str, str]) -> ad.AnnData:
    """Raw counts into ``.X`` (kept in ``layers["counts"]``), library-size normalisation,
    ``log1p``, and the most variable genes selected with the site as batch key."""
    rna = _with_raw_counts(mdata["rna"], params["counts_layer"], "RNA")
    rna.obs = mdata.obs.loc[rna.obs_names].copy()
    sc.pp.normalize_total(rna, target_sum=params["target_sum"])
    sc.pp.log1p(rna)
    n_top_genes = min(params["n_top_genes"], rna.n_vars)
    sc.pp.highly_variable_genes(
        rna, n_top_genes=n_top_genes, batch_key=columns["site"], subset=True
    )
    logger.info("Kept %d highly variable genes of %d.", rna.n_vars, mdata["rna"].n_vars)
    rna.obs = pd.DataFrame(index=rna.obs_names)
    return rna


def preprocess_adt(mdata: md.MuData, params: dict[str, Any]) -> ad.AnnData:
    """Raw counts into ``.X`` (kept in ``layers["counts"]``), then muon's CLR transform."""
    adt = _with_raw_counts(mdata["adt"], params["counts_layer"], "ADT")
    mu.prot.pp.clr(adt, axis=params["clr_axis"])
    return adt


def _with_raw_counts(modality: ad.AnnData, layer: str, name: str) -> ad.AnnData:
    _check_counts(modality, layer, name)
    counts = sparse.csr_matrix(modality.layers[layer], dtype=np.float32)
    adata = ad.AnnData(
        X=counts.copy(),
        obs=pd.DataFrame(index=modality.obs_names),
        var=modality.var.copy(),
        layers={"counts": counts},
    )
    return adata


def assemble_mudata(rna: ad.AnnData, adt: ad.AnnData, cells: md.MuData) -> md.MuData:
    """One MuData with the processed modalities and the shared cell annotations."""
    mdata = md.MuData({"rna": rna, "adt": adt})
    mdata.obs = cells.obs.loc[mdata.obs_names].copy()
    return mdata


def extract_cell_metadata(mdata: md.MuData) -> pd.DataFrame:
    """Cell annotations as a table, for evaluation without loading the whole MuData."""
    return mdata.obs.copy()
