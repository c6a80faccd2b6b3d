"""Nodes that turn raw CITE-seq data into one preprocessed MuData.

Raw data arrive either as one AnnData in the GEO layout (GEX and ADT told apart by
``var["feature_types"]``) or as a MuData with ``rna`` and ``adt`` modalities (separate files).

Memory is bounded by the raw counts: only the counts layer is taken from the input (its ``X``
is never read, so a backed AnnData keeps it on disk), RNA stays sparse throughout, cells are
subsampled before anything is copied, and genes are cut to the highly variable ones before the
result is kept.
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
    The result holds ``rna`` and ``adt`` with raw counts in ``layers[counts_layer]`` (``X`` is
    the same matrix, not a copy; the input's own ``X`` and other layers are not carried) and the
    cell annotations once, on the MuData, with ``Site`` and ``DonorNumber`` derived from
    ``batch`` (``s1d2`` -> ``s1``, ``d2``) where they are missing.
    """
    layer = params["counts_layer"]
    if isinstance(raw, md.MuData):
        (rna, rna_obs), (adt, adt_obs) = _modalities_from_mudata(raw, layer)
    elif isinstance(raw, ad.AnnData):
        (rna, rna_obs), (adt, adt_obs) = _modalities_from_feature_types(raw, layer)
    else:
        raise InputDataError(f"The raw input is a {type(raw).__name__}, not AnnData or MuData.")
    shared = rna.obs_names.intersection(adt.obs_names, sort=False)
    if shared.size < max(rna.n_obs, adt.n_obs):
        raise InputDataError(
            f"RNA ({rna.n_obs} cells) and ADT ({adt.n_obs} cells) barcodes do not match: "
            f"{rna.n_obs - shared.size} RNA and {adt.n_obs - shared.size} ADT barcodes "
            "have no partner."
        )
    if not adt.obs_names.equals(rna.obs_names):
        order = adt.obs_names.get_indexer(rna.obs_names)
        adt, adt_obs = _take_cells(adt, order), adt_obs.iloc[order]
    obs = _cell_annotations(rna_obs, adt_obs, columns)
    mdata = md.MuData({"rna": rna, "adt": adt})
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


def _check_names(obs_names: pd.Index, var_names: pd.Index, name: str) -> None:
    for axis, names in (("barcodes", obs_names), ("feature names", var_names)):
        duplicated = names[names.duplicated()]
        if duplicated.size:
            raise InputDataError(
                f"{name} has {duplicated.size} duplicate {axis}, e.g. "
                f"{list(duplicated.unique()[:3])}."
            )


def _counts_layer(modality: ad.AnnData, layer: str, name: str) -> Any:
    layers = _named_layers(modality)
    if layer not in layers:
        raise InputDataError(
            f"{name} has no raw-count layer '{layer}' (layers: {sorted(layers) or 'none'}); "
            "set data_processing.counts_layer."
        )
    return layers[layer]


# Values checked at a time: bounds the temporaries to a few hundred MB whatever the data size.
_CHECK_BLOCK = 1 << 24


def _check_count_values(matrix: Any, layer: str, name: str) -> None:
    """Raw counts must be finite, non-negative integers. Only stored values are read (``.data``
    of a sparse matrix), a block at a time."""
    values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix).reshape(-1)
    if values.dtype.kind not in "biuf":
        raise InputDataError(f"{name} layer '{layer}' is not numeric (dtype {values.dtype}).")
    problems = {"NaN or infinite": 0, "negative": 0, "non-integer": 0}
    for start in range(0, values.size, _CHECK_BLOCK):
        block = values[start : start + _CHECK_BLOCK]
        problems["negative"] += int(np.count_nonzero(block < 0))
        if values.dtype.kind == "f":
            finite = np.isfinite(block)
            problems["NaN or infinite"] += int(block.size - np.count_nonzero(finite))
            problems["non-integer"] += int(np.count_nonzero(finite & (block != np.floor(block))))
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
    subset = md.MuData({name: _take_cells(modality, keep) for name, modality in mdata.mod.items()})
    obs = mdata.obs.iloc[keep].copy()
    for column in obs:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].cat.remove_unused_categories()
    subset.obs = obs
    return subset


def _take_cells(modality: ad.AnnData, keep: np.ndarray) -> ad.AnnData:
    """Rows ``keep`` of a modality, copying each matrix once: where ``X`` and a layer are the
    same matrix (as after :func:`validate_input`), so are their copies."""
    taken: dict[int, Any] = {}

    def take(matrix: Any) -> Any:
        if id(matrix) not in taken:
            taken[id(matrix)] = matrix[keep]
        return taken[id(matrix)]

    return ad.AnnData(
        X=None if modality.X is None else take(modality.X),
        obs=modality.obs.iloc[keep],
        var=modality.var,
        layers={name: take(matrix) for name, matrix in _named_layers(modality).items()},
    )


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


def _named_layers(modality: ad.AnnData) -> dict[str, Any]:
    """The layers proper: anndata 0.13 also lists ``.X`` among them under the key ``None``."""
    return {name: matrix for name, matrix in modality.layers.items() if name is not None}


def _counts_modality(
    source: ad.AnnData, layer: str, name: str, features: np.ndarray | None = None
) -> tuple[ad.AnnData, pd.DataFrame]:
    """The checked raw counts of ``source`` (of the ``features`` columns only, where given) as
    a modality whose ``X`` is its counts layer, and, apart, its cell annotations: they are kept
    once, on the MuData. Only the counts layer is read, never ``X``."""
    var = source.var if features is None else source.var.iloc[np.flatnonzero(features)]
    _check_names(source.obs_names, var.index, name)
    counts = _counts_layer(source, layer, name)
    if features is not None:
        counts = counts[:, features]
    if sparse.issparse(counts) and counts.format != "csr":
        counts = sparse.csr_matrix(counts)
    _check_count_values(counts, layer, name)
    modality = ad.AnnData(
        X=counts, obs=pd.DataFrame(index=source.obs_names), var=var.copy(), layers={layer: counts}
    )
    return modality, source.obs


def _modalities_from_feature_types(
    raw: ad.AnnData, layer: str
) -> tuple[tuple[ad.AnnData, pd.DataFrame], tuple[ad.AnnData, pd.DataFrame]]:
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
        _counts_modality(raw, layer, "RNA", (feature_types == RNA_FEATURE_TYPE).to_numpy()),
        _counts_modality(raw, layer, "ADT", (feature_types == ADT_FEATURE_TYPE).to_numpy()),
    )


def _modalities_from_mudata(
    raw: md.MuData, layer: str
) -> tuple[tuple[ad.AnnData, pd.DataFrame], tuple[ad.AnnData, pd.DataFrame]]:
    missing = {"rna", "adt"} - set(raw.mod)
    if missing:
        raise InputDataError(
            f"MuData has no modality {sorted(missing)} (found: {sorted(raw.mod)})."
        )
    return _counts_modality(raw["rna"], layer, "RNA"), _counts_modality(raw["adt"], layer, "ADT")


def _cell_annotations(
    rna_obs: pd.DataFrame, adt_obs: pd.DataFrame, columns: dict[str, str]
) -> pd.DataFrame:
    """Collect the annotation columns, preferring RNA's and falling back to ADT's."""
    obs = pd.DataFrame(index=rna_obs.index)
    # ``phase`` (cell-cycle phase, for evaluation) is optional, in the columns and in the data.
    for key in ("batch", "label", "site", "donor", "phase"):
        column = columns.get(key)
        for source in (rna_obs, adt_obs) if column else ():
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
        return mdata  # nothing changes, so nothing is copied
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
    ``log1p``, and the most variable genes selected with the site as batch key.

    The data stay sparse; scanpy works on the normalised matrix alone (its per-site copies then
    leave the counts out), and only the selected genes are kept.
    """
    layer = params["counts_layer"]
    counts = _raw_counts(mdata["rna"], layer, "RNA")
    site = columns["site"]
    work = ad.AnnData(
        X=_values_copy(counts),
        obs=mdata.obs.loc[mdata["rna"].obs_names, [site]],
        var=pd.DataFrame(index=mdata["rna"].var_names),
    )
    sc.pp.normalize_total(work, target_sum=params["target_sum"])
    sc.pp.log1p(work)
    n_top_genes = min(params["n_top_genes"], work.n_vars)
    sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes, batch_key=site)
    selected = work.var["highly_variable"].to_numpy()
    var = mdata["rna"].var.loc[selected].copy()
    for column in work.var:
        var[column] = work.var.loc[selected, column].to_numpy()
    rna = ad.AnnData(
        X=work.X[:, selected],
        obs=pd.DataFrame(index=work.obs_names),
        var=var,
        uns=dict(work.uns),
        layers={"counts": counts[:, selected]},
    )
    logger.info("Kept %d highly variable genes of %d.", rna.n_vars, work.n_vars)
    return rna


def preprocess_adt(mdata: md.MuData, params: dict[str, Any]) -> ad.AnnData:
    """Raw counts into ``.X`` (kept in ``layers["counts"]``), then muon's CLR transform."""
    adt = _with_raw_counts(mdata["adt"], params["counts_layer"], "ADT")
    mu.prot.pp.clr(adt, axis=params["clr_axis"])
    return adt


def _values_copy(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """A copy of ``counts`` to normalise in place. Normalisation and ``log1p`` only rewrite the
    values, so a canonical matrix lends its index arrays: half a copy of the counts is saved."""
    if not counts.has_canonical_format:
        return counts.copy()
    return sparse.csr_matrix((counts.data.copy(), counts.indices, counts.indptr), counts.shape)


def _with_raw_counts(modality: ad.AnnData, layer: str, name: str) -> ad.AnnData:
    counts = _raw_counts(modality, layer, name)
    return ad.AnnData(
        X=counts.copy(),
        obs=pd.DataFrame(index=modality.obs_names),
        var=modality.var.copy(),
        layers={"counts": counts},
    )


def _raw_counts(modality: ad.AnnData, layer: str, name: str) -> sparse.csr_matrix:
    """The checked counts as float32 CSR: the layer itself where it already is one (it is only
    read, never changed), else a converted copy."""
    matrix = _counts_layer(modality, layer, name)
    _check_count_values(matrix, layer, name)
    return sparse.csr_matrix(matrix, dtype=np.float32)


def assemble_mudata(rna: ad.AnnData, adt: ad.AnnData, cells: md.MuData) -> md.MuData:
    """One MuData with the processed modalities and the shared cell annotations."""
    mdata = md.MuData({"rna": rna, "adt": adt})
    mdata.obs = cells.obs.loc[mdata.obs_names].copy()
    return mdata


def extract_cell_metadata(mdata: md.MuData) -> pd.DataFrame:
    """Cell annotations as a table, for evaluation without loading the whole MuData."""
    return mdata.obs.copy()
