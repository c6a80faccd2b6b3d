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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import anndata as ad
import mudata as md
import muon as mu
import numpy as np
import pandas as pd
import scanpy as sc
from anndata.abc import CSCDataset, CSRDataset
from fast_array_utils import stats
from scipy import sparse

logger = logging.getLogger(__name__)

# Feature types of RNA and protein features, in the GEO file's and in 10x Genomics' words.
RNA_FEATURE_TYPES = ("GEX", "Gene Expression")
ADT_FEATURE_TYPES = ("ADT", "Antibody Capture")
# Modality names of a MuData input: scverse tools (muon.read_10x_h5) call the protein one 'prot'.
RNA_MODALITY = "rna"
ADT_MODALITIES = ("adt", "prot")
# The batch of every cell of an input without a batch column: one sample is one batch.
SINGLE_BATCH = "all"
_BATCH_PATTERN = re.compile(r"^(?P<site>s\d+)(?P<donor>d\d+)$")

CountsAndCells = tuple[ad.AnnData, pd.DataFrame]


class InputDataError(ValueError):
    """Raised when raw data cannot be used; the message names the column, layer or feature."""


def validate_input(
    raw: ad.AnnData | md.MuData, columns: dict[str, str], params: dict[str, Any]
) -> md.MuData:
    """Check the raw data before any long work and pair RNA with ADT, cell by cell.

    Every problem is raised as an :class:`InputDataError` naming the modality, layer, column or
    feature at fault. Cells without any RNA or ADT counts, features without counts in any cell and
    features of other types (CRISPR guides, hashtags, ...) are dropped, and the log counts them.
    The result holds ``rna`` and ``adt`` with raw counts in ``layers[counts_layer]`` (taken from
    ``X`` where the input has no such layer and ``X`` holds raw counts; ``X`` is the same matrix,
    not a copy; the input's other layers are not carried) and the cell annotations once, on the
    MuData. Without a batch column all cells are one batch; ``Site`` and ``DonorNumber`` are
    derived from ``batch`` (``s1d2`` -> ``s1``, ``d2``) where they are missing, and the batch
    serves as site where it is not of that form.
    """
    layer = params["counts_layer"]
    shared_obs = None
    if isinstance(raw, md.MuData):
        (rna, rna_obs), (adt, adt_obs) = _modalities_from_mudata(
            raw, layer, params["max_adt_features"]
        )
        shared_obs = _shared_annotations(raw)
    elif isinstance(raw, ad.AnnData):
        (rna, rna_obs), (adt, adt_obs) = _modalities_from_feature_types(raw, layer)
    else:
        raise InputDataError(f"The raw input is a {type(raw).__name__}, not AnnData or MuData.")
    if rna.var_names.equals(adt.var_names):
        raise InputDataError(
            f"RNA and ADT have the same {rna.n_vars} features (e.g. {list(rna.var_names[:3])}): "
            "the same data were given as RNA and as ADT."
        )
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
    obs = _cell_annotations(rna_obs, adt_obs, columns, shared_obs)
    mdata = md.MuData({"rna": rna, "adt": adt})
    mdata.obs = obs
    mdata = _drop_empty_features(_drop_empty_cells(mdata, layer), layer)
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


def _input_counts(source: ad.AnnData, layer: str, name: str) -> tuple[Any, bool]:
    """The raw counts of an input: its counts layer, or else its ``X`` (users of 10x data keep
    counts there), as they are: in memory, or on disk for a backed AnnData (see
    :func:`_columns`). The flag says whether ``X`` was taken; the caller checks that it holds
    counts."""
    layers = _named_layers(source)
    if layer in layers:
        return layers[layer], False
    if source.X is None:
        raise InputDataError(
            f"{name} has no raw-count layer '{layer}' (layers: {sorted(layers) or 'none'}) and "
            "no X; set data_processing.counts_layer."
        )
    return source.X, True


# Stored values normalised at a time, and read from disk at a time: bounds each block's copies
# to tens of MB, while a block read from disk stays large enough (over glibc's 32 MB) to be
# handed back to the system as soon as it is freed.
_BLOCK = 1 << 22
_DISK_BLOCK = 1 << 24


def _columns(matrix: Any, features: list[np.ndarray | None]) -> list[Any]:
    """The columns of each mask in ``features`` (all where None) of ``matrix``, in memory.

    A CSR matrix on disk (a backed AnnData's layer or ``X``) is read a block of cells at a time
    and only the selected columns of each block are kept: reading it whole and then cutting
    would hold the whole matrix and its RNA part together (3.6 GB for the GEO file's ~90,000
    cells).
    """
    if isinstance(matrix, CSRDataset):
        return _read_columns(matrix, features)
    if isinstance(matrix, CSCDataset) or hasattr(matrix, "to_memory"):
        matrix = matrix.to_memory()  # by genes on disk: no cheap way to read it by cells
    if not sparse.issparse(matrix):
        matrix = np.asarray(matrix)  # dense, or an h5py dataset
    return [matrix if mask is None else matrix[:, mask] for mask in features]


def _row_blocks(row_nnz: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive rows (start, stop) with about ``_BLOCK`` stored values each (at least one
    row)."""
    budget = _BLOCK
    ends = np.cumsum(row_nnz)
    start = 0
    while start < row_nnz.size:
        before = int(ends[start - 1]) if start else 0
        stop = max(int(np.searchsorted(ends, before + budget, side="right")), start + 1)
        yield start, stop
        start = stop


def _read_columns(
    dataset: CSRDataset, features: list[np.ndarray | None]
) -> list[sparse.csr_matrix]:
    """See :func:`_columns`. The number of rows per block follows the number of stored values
    in the last block."""
    n_rows, n_cols = dataset.shape
    parts: list[list[sparse.csr_matrix]] = [[] for _ in features]
    start, rows = 0, 64
    while start < n_rows:
        block = sparse.csr_matrix(dataset[start : start + rows])
        for mask, kept in zip(features, parts, strict=True):
            kept.append(block if mask is None else block[:, mask])
        start += block.shape[0]
        rows = int(np.clip(rows * _DISK_BLOCK / max(block.nnz, 1), 1, 4 * rows))
        del block
    widths = [n_cols if mask is None else int(np.count_nonzero(mask)) for mask in features]
    return [_stacked(kept, width) for kept, width in zip(parts, widths, strict=True)]


def _stacked(parts: list[sparse.csr_matrix], n_cols: int) -> sparse.csr_matrix:
    """``sparse.vstack(parts)``, emptying ``parts``: each part is freed once copied, where
    vstack would hold all parts and the result together (twice the memory)."""
    nnz = sum(part.nnz for part in parts)
    n_rows = sum(part.shape[0] for part in parts)
    small = max(nnz, n_cols) <= np.iinfo(np.int32).max
    data = np.empty(nnz, dtype=parts[0].dtype if parts else np.float32)
    indices = np.empty(nnz, dtype=np.int32 if small else np.int64)
    indptr = np.zeros(n_rows + 1, dtype=indices.dtype)
    row = stored = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        data[stored : stored + part.nnz] = part.data
        indices[stored : stored + part.nnz] = part.indices
        indptr[row + 1 : row + 1 + part.shape[0]] = part.indptr[1:] + stored
        row, stored = row + part.shape[0], stored + part.nnz
        del part
    return sparse.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))


# Values checked at a time: bounds the temporaries to a few hundred MB whatever the data size.
_CHECK_BLOCK = 1 << 24


def _count_problem(matrix: Any) -> str | None:
    """Why ``matrix`` is not raw counts (finite, non-negative integers), or None. Only stored
    values are read (``.data`` of a sparse matrix), a block at a time."""
    values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix).reshape(-1)
    if values.dtype.kind == "b":
        return f"its values are boolean (dtype {values.dtype}), not counts"
    if values.dtype.kind not in "iuf":
        return f"its values are not numbers (dtype {values.dtype})"
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
            return f"{count} {problem} values"
    return None


def _check_count_values(matrix: Any, layer: str, name: str) -> None:
    problem = _count_problem(matrix)
    if problem:
        raise InputDataError(f"{name} layer '{layer}' is not raw counts: {problem}.")


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


def _drop_empty_features(mdata: md.MuData, layer: str) -> md.MuData:
    """Genes and proteins without a count in any cell carry no signal (a 10x file lists every
    gene of the reference): drop them, and say how many."""
    kept, dropped = {}, {}
    for name in ("rna", "adt"):
        modality = mdata[name]
        detected = np.asarray(modality.layers[layer].sum(axis=0)).ravel() > 0
        kept[name] = modality if detected.all() else _take(modality, features=detected)
        dropped[name] = modality.var_names[~detected]
    if not any(names.size for names in dropped.values()):
        return mdata
    logger.warning(
        "Dropped features without counts in any cell: %d of %d RNA genes%s and %d of %d ADT "
        "proteins%s.",
        dropped["rna"].size,
        mdata["rna"].n_vars,
        f" (e.g. {list(dropped['rna'][:3])})" if dropped["rna"].size else "",
        dropped["adt"].size,
        mdata["adt"].n_vars,
        f" ({list(dropped['adt'][:10])})" if dropped["adt"].size else "",
    )
    result = md.MuData(kept)
    result.obs = mdata.obs
    return result


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
    return _take(modality, cells=keep)


def _take(
    modality: ad.AnnData, cells: np.ndarray | None = None, features: np.ndarray | None = None
) -> ad.AnnData:
    """Rows ``cells`` and columns ``features`` (all where None) of a modality, copying each
    matrix once: where ``X`` and a layer are the same matrix (as after :func:`validate_input`),
    so are their copies."""
    taken: dict[int, Any] = {}

    def take(matrix: Any) -> Any:
        if id(matrix) not in taken:
            part = matrix if cells is None else matrix[cells]
            taken[id(matrix)] = part if features is None else part[:, features]
        return taken[id(matrix)]

    return ad.AnnData(
        X=None if modality.X is None else take(modality.X),
        obs=modality.obs if cells is None else modality.obs.iloc[cells],
        var=modality.var if features is None else modality.var.iloc[features],
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
) -> CountsAndCells:
    """The checked raw counts of ``source`` (of the ``features`` columns only, where given) as
    a modality whose ``X`` is its counts layer, and, apart, its cell annotations: they are kept
    once, on the MuData. Where ``source`` has a counts layer its ``X`` is never read."""
    _check_names(source.obs_names, _features_var(source, features).index, name)
    counts, from_x = _input_counts(source, layer, name)
    (counts,) = _columns(counts, [features])
    return _checked_modality(source, counts, from_x, layer, name, features)


def _features_var(source: ad.AnnData, features: np.ndarray | None) -> pd.DataFrame:
    return source.var if features is None else source.var.iloc[np.flatnonzero(features)]


def _checked_modality(
    source: ad.AnnData,
    counts: Any,
    from_x: bool,
    layer: str,
    name: str,
    features: np.ndarray | None,
) -> CountsAndCells:
    """``counts`` (the ``features`` columns of ``source``'s counts, in memory) checked and made
    a modality; see :func:`_counts_modality`."""
    var = _features_var(source, features)
    if sparse.issparse(counts) and counts.format != "csr":
        counts = sparse.csr_matrix(counts)
    problem = _count_problem(counts)
    if problem and from_x:
        layers = sorted(_named_layers(source)) or "none"
        raise InputDataError(
            f"{name} has no raw-count layer '{layer}' (layers: {layers}), and its X is not raw "
            f"counts either: {problem} (normalised values?). Give the raw counts in X or in a "
            "layer named by data_processing.counts_layer."
        )
    if problem:
        raise InputDataError(f"{name} layer '{layer}' is not raw counts: {problem}.")
    if from_x:
        logger.info(
            "%s has no layer '%s': using its X, which holds raw integer counts.", name, layer
        )
    modality = ad.AnnData(
        X=counts, obs=pd.DataFrame(index=source.obs_names), var=var.copy(), layers={layer: counts}
    )
    return modality, source.obs


def _quoted(values: tuple[str, ...] | list[str]) -> str:
    return " or ".join(f"'{value}'" for value in values)


def _log_other_feature_types(feature_types: pd.Series, where: str) -> None:
    """Features that are neither RNA nor protein (CRISPR guides, cell hashtags, ...) are not
    used: name their types and count them."""
    if feature_types.size:
        counts = feature_types.value_counts()
        logger.warning(
            "Dropped %d features of types other than RNA and protein (%s): %s.",
            feature_types.size,
            where,
            ", ".join(f"'{kind}' ({n})" for kind, n in counts.items()),
        )


def _modalities_from_feature_types(
    raw: ad.AnnData, layer: str
) -> tuple[CountsAndCells, CountsAndCells]:
    if "feature_types" not in raw.var:
        raise InputDataError(
            "var has no 'feature_types' column: cannot tell RNA "
            f"({_quoted(RNA_FEATURE_TYPES)}) from protein ({_quoted(ADT_FEATURE_TYPES)}) features."
        )
    feature_types = raw.var["feature_types"].astype(str)
    rna = feature_types.isin(RNA_FEATURE_TYPES).to_numpy()
    adt = feature_types.isin(ADT_FEATURE_TYPES).to_numpy()
    found = ", ".join(sorted(feature_types.unique()))
    for features, kind, words in ((rna, "RNA", RNA_FEATURE_TYPES), (adt, "ADT", ADT_FEATURE_TYPES)):
        if not features.any():
            raise InputDataError(
                f"var['feature_types'] has no {kind} features ({_quoted(words)}; found: {found})."
            )
    _log_other_feature_types(feature_types[~(rna | adt)], "var['feature_types']")
    for features, name in ((rna, "RNA"), (adt, "ADT")):
        _check_names(raw.obs_names, _features_var(raw, features).index, name)
    # RNA and ADT are columns of one matrix: take both in one reading of it.
    counts, from_x = _input_counts(raw, layer, "RNA")
    rna_counts, adt_counts = _columns(counts, [rna, adt])
    del counts
    return (
        _checked_modality(raw, rna_counts, from_x, layer, "RNA", rna),
        _checked_modality(raw, adt_counts, from_x, layer, "ADT", adt),
    )


def _modalities_from_mudata(
    raw: md.MuData, layer: str, max_adt_features: int
) -> tuple[CountsAndCells, CountsAndCells]:
    proteins = [name for name in ADT_MODALITIES if name in raw.mod]
    if RNA_MODALITY not in raw.mod or not proteins:
        raise InputDataError(
            f"MuData needs an RNA modality '{RNA_MODALITY}' and a protein modality "
            f"{_quoted(ADT_MODALITIES)} (found: {sorted(raw.mod)})."
        )
    if len(proteins) > 1:
        raise InputDataError(f"MuData has two protein modalities, {proteins}: keep one of them.")
    protein = proteins[0]
    others = sorted(set(raw.mod) - {RNA_MODALITY, protein})
    if others:
        logger.warning(
            "Ignored the MuData modalities %s: only '%s' (RNA) and '%s' (protein) are used.",
            others,
            RNA_MODALITY,
            protein,
        )
    rna, adt = raw[RNA_MODALITY], raw[protein]
    if "feature_types" not in adt.var and adt.n_vars > max_adt_features:
        raise InputDataError(
            f"ADT ('{protein}') has {adt.n_vars} features and no var['feature_types'] to say what "
            f"they are: more than an antibody panel holds (tens to a few hundred; "
            f"data_processing.max_adt_features={max_adt_features}). Are these genes? Give "
            "protein counts as ADT, or mark them with var['feature_types'] "
            f"({_quoted(ADT_FEATURE_TYPES)})."
        )
    return (
        _counts_modality(rna, layer, "RNA", _features_of_kind(rna, "RNA")),
        _counts_modality(adt, layer, "ADT", _features_of_kind(adt, "ADT")),
    )


def _features_of_kind(modality: ad.AnnData, kind: str) -> np.ndarray | None:
    """The features of a modality to keep, by ``var["feature_types"]`` where it has one (None:
    all). Features of the other modality's type mean the wrong data were given (an RNA file as
    ADT): refused. Features of other types (hashtags, ...) are dropped and named."""
    if "feature_types" not in modality.var:
        return None
    own, other = (
        (RNA_FEATURE_TYPES, ADT_FEATURE_TYPES)
        if kind == "RNA"
        else (ADT_FEATURE_TYPES, RNA_FEATURE_TYPES)
    )
    feature_types = modality.var["feature_types"].astype(str)
    wrong = feature_types.isin(other).to_numpy()
    if wrong.any():
        what = "proteins, not genes" if kind == "RNA" else "genes, not proteins"
        examples = list(modality.var_names[wrong][:3])
        raise InputDataError(
            f"{kind} holds {wrong.sum()} of {wrong.size} features with var['feature_types'] "
            f"{sorted(feature_types[wrong].unique())} (e.g. {examples}): {what}. Was the same "
            "file given as RNA and as ADT?"
        )
    keep = feature_types.isin(own).to_numpy()
    if not keep.any():
        raise InputDataError(
            f"{kind} has no features with var['feature_types'] {_quoted(own)} (found: "
            f"{', '.join(sorted(feature_types.unique()))})."
        )
    _log_other_feature_types(feature_types[~keep], f"{kind} var['feature_types']")
    return None if keep.all() else keep


def _shared_annotations(raw: md.MuData) -> pd.DataFrame:
    """The MuData's own cell annotations (not copies of a modality's, ``rna:...``)."""
    prefixes = tuple(f"{name}:" for name in raw.mod)
    return raw.obs[[column for column in raw.obs if not str(column).startswith(prefixes)]]


def _cell_annotations(
    rna_obs: pd.DataFrame,
    adt_obs: pd.DataFrame,
    columns: dict[str, str],
    shared_obs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Collect the annotation columns: a MuData's own first, then RNA's, then ADT's."""
    cells = rna_obs.index
    sources = [rna_obs, adt_obs.set_axis(cells)]
    if shared_obs is not None and shared_obs.shape[1]:
        sources.insert(0, shared_obs.reindex(cells))
    batch = columns["batch"]
    if batch in rna_obs and batch in adt_obs and rna_obs is not adt_obs:
        _check_same_batches(rna_obs[batch], adt_obs[batch], batch)
    obs = pd.DataFrame(index=cells)
    # ``phase`` (cell-cycle phase, for evaluation) is optional, in the columns and in the data.
    for key in ("batch", "label", "site", "donor", "phase"):
        column = columns.get(key)
        for source in sources if column else ():
            if column in source:
                obs[column] = source[column].to_numpy()
                break
    if batch not in obs:
        logger.warning(
            "obs has no batch column '%s': the %d cells are taken for one sample (batch '%s'). "
            "The models train without a batch covariate and the batch-correction metrics do "
            "not apply. Set columns.batch if the data hold several samples.",
            batch,
            len(cells),
            SINGLE_BATCH,
        )
        obs[batch] = SINGLE_BATCH
    if obs[batch].isna().any():
        raise InputDataError(
            f"Batch column '{batch}' is empty for {int(obs[batch].isna().sum())} cells."
        )
    obs[batch] = obs[batch].astype(str)
    for key in ("site", "donor"):
        column = columns[key]
        if column in obs and obs[column].isna().any():
            raise InputDataError(
                f"{key.capitalize()} column '{column}' is empty for "
                f"{int(obs[column].isna().sum())} cells: fill it in, or remove the column to "
                f"derive it from the batch column '{batch}'."
            )
    if columns["label"] not in obs:
        logger.warning(
            "obs has no label column '%s': the models train as usual, and evaluation skips "
            "the metrics that need cell-type labels.",
            columns["label"],
        )
    _add_site_and_donor(obs, columns)
    for column in obs:
        # Plain string categories; missing labels stay missing (not the string 'nan').
        values = obs[column]
        obs[column] = pd.Categorical(values.astype(str).where(values.notna(), None))
    return obs


def _check_same_batches(rna_batch: pd.Series, adt_batch: pd.Series, batch: str) -> None:
    """RNA and ADT of one cell come from one sample: a disagreement means mismatched files."""
    rna_values = rna_batch.astype(str).to_numpy()
    adt_values = adt_batch.astype(str).to_numpy()
    differ = np.flatnonzero(rna_values != adt_values)
    if differ.size:
        first = differ[0]
        raise InputDataError(
            f"RNA and ADT disagree on the batch ('{batch}') of {differ.size} cells, e.g. "
            f"'{rna_batch.index[first]}': '{rna_values[first]}' (RNA) vs "
            f"'{adt_values[first]}' (ADT). Are both files of the same samples?"
        )


def _add_site_and_donor(obs: pd.DataFrame, columns: dict[str, str]) -> None:
    """Derive missing site and donor columns from batches named like 's1d2'; for other batch
    names the batch serves as site (the batch key of the highly variable genes)."""
    batch, site, donor = columns["batch"], columns["site"], columns["donor"]
    if site in obs and donor in obs:
        return
    parts = obs[batch].str.extract(_BATCH_PATTERN)
    if parts.notna().all().all():
        if site not in obs:
            obs[site] = parts["site"]
        if donor not in obs:
            obs[donor] = parts["donor"]
    elif site not in obs:
        logger.info(
            "obs has no site column '%s' and batches such as %s are not named like 's1d2': the "
            "batch serves as site.",
            site,
            list(obs[batch].unique()[:3]),
        )
        obs[site] = obs[batch]


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

    The result is scanpy's, value for value: ``normalize_total``, ``log1p``, then
    ``highly_variable_genes(flavor="seurat", batch_key=site)``, then the selected genes. But the
    normalised matrix of all genes is never built: scanpy's batch-aware selection holds it with
    up to three copies of a site's cells (6 GB at ~90,000 cells). Normalisation and ``log1p``
    work within each cell, so scanpy runs them on blocks of cells; the selection needs only
    each site's per-gene statistics (:func:`_site_dispersions`); and only the selected genes
    are normalised for the result.
    """
    layer = params["counts_layer"]
    counts = _raw_counts(mdata["rna"], layer, "RNA")
    var_names = mdata["rna"].var_names
    sites = mdata.obs.loc[mdata["rna"].obs_names, columns["site"]]
    n_top_genes = min(params["n_top_genes"], counts.shape[1])
    hvg, factors = _highly_variable_genes(
        counts, sites, params["target_sum"], n_top_genes, var_names
    )
    selected = hvg["highly_variable"].to_numpy()
    var = mdata["rna"].var.loc[selected].copy()
    for column in hvg:
        var[column] = hvg.loc[selected, column].to_numpy()
    selected_counts = counts[:, selected]
    rna = ad.AnnData(
        X=_log_normalised(selected_counts, factors),
        obs=pd.DataFrame(index=mdata["rna"].obs_names),
        var=var,
        uns={"log1p": {"base": None}, "hvg": {"flavor": "seurat"}},
        layers={"counts": selected_counts},
    )
    logger.info("Kept %d highly variable genes of %d.", rna.n_vars, counts.shape[1])
    return rna


def _log_normalised(counts: sparse.csr_matrix, factors: np.ndarray) -> sparse.csr_matrix:
    """``log1p`` of ``counts`` divided by each cell's ``normalize_total`` factor (its total
    over all genes / target_sum), as scanpy divides them: the values these genes had before the
    cut, in a new matrix."""
    factors = factors + (factors == 0)  # as scanpy: a cell without counts stays zero
    data = np.empty_like(counts.data)
    indptr = counts.indptr
    for start, stop in _row_blocks(np.diff(indptr)):
        stored = slice(indptr[start], indptr[stop])
        scale = np.repeat(factors[start:stop], np.diff(indptr[start : stop + 1]))
        np.divide(counts.data[stored], scale, out=data[stored])
    values = sparse.csr_matrix((data, counts.indices.copy(), indptr.copy()), shape=counts.shape)
    return sc.pp.log1p(values)


def _site_dispersions(
    counts: sparse.csr_matrix, rows: np.ndarray, target_sum: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and variance (``correction=1``) of each gene's ``expm1`` of the log-normalised
    values over the ``rows`` cells of one site, computed as scanpy's ``flavor="seurat"`` does
    (the same function on the same matrix of the site's cells, so to the last bit), which genes
    are detected there, and the cells' normalisation factors. Only this site's values are held,
    never all cells'; scanpy normalises them a block of cells at a time."""
    row_nnz = np.diff(counts.indptr)[rows]
    indptr = np.concatenate([[0], np.cumsum(row_nnz)])
    data = np.empty(indptr[-1], dtype=np.float32)
    indices = np.empty(indptr[-1], dtype=counts.indices.dtype)
    detected = np.zeros(counts.shape[1], dtype=np.int64)
    factors = np.empty(rows.size, dtype=np.float32)
    for start, stop in _row_blocks(row_nnz):
        block = ad.AnnData(counts[rows[start:stop]])
        sc.pp.normalize_total(block, target_sum=target_sum, key_added="factor")
        sc.pp.log1p(block)
        factors[start:stop] = block.obs["factor"].to_numpy()
        stored = slice(indptr[start], indptr[stop])
        log_values = block.X
        detected += np.bincount(log_values.indices[log_values.data > 0], minlength=detected.size)
        np.expm1(log_values.data, out=data[stored])
        indices[stored] = log_values.indices
    values = sparse.csr_matrix((data, indices, indptr), shape=(rows.size, counts.shape[1]))
    mean, variance = stats.mean_var(values, axis=0, correction=1)
    return mean, variance, detected > 0, factors


def _highly_variable_genes(
    counts: sparse.csr_matrix,
    sites: pd.Series,
    target_sum: float,
    n_top_genes: int,
    var_names: pd.Index,
) -> tuple[pd.DataFrame, np.ndarray]:
    """scanpy's ``highly_variable_genes(flavor="seurat", n_top_genes=..., batch_key=...)`` on
    the log-normalised counts, from each site's statistics: the columns and values it adds to
    ``var``, and each cell's normalisation factor. scanpy 1.12's per-batch selection and its
    merging of the batches, step for step; ``tests/pipelines/data_processing/test_nodes.py``
    compares the two."""
    sites = sites if isinstance(sites.dtype, pd.CategoricalDtype) else sites.astype("category")
    codes = sites.cat.codes.to_numpy()
    factors = np.full(codes.size, np.nan, dtype=np.float32)
    per_site = []
    for code in range(sites.cat.categories.size):
        rows = np.flatnonzero(codes == code)
        mean, variance, detected, factors[rows] = _site_dispersions(counts, rows, target_sum)
        per_site.append(
            _site_hvg(mean[detected], variance[detected], detected, n_top_genes, var_names)
        )
    if np.isnan(factors).any():
        raise InputDataError(f"{int(np.isnan(factors).sum())} cells have no site.")
    table = pd.concat(per_site, axis=0)
    table["highly_variable"] = table["highly_variable"].astype(int)
    table = table.groupby(table.index, observed=True).agg(
        {
            "means": "mean",
            "dispersions": "mean",
            "dispersions_norm": "mean",
            "highly_variable": "sum",
        }
    )
    table["highly_variable_nbatches"] = table["highly_variable"]
    table["highly_variable_intersection"] = table["highly_variable_nbatches"] == len(per_site)
    # Genes chosen by most sites first, ties broken by the mean normalised dispersion.
    table = table.sort_values(
        ["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last"
    )
    table["highly_variable"] = np.arange(table.shape[0]) < n_top_genes
    table = table.loc[var_names]
    hvg = pd.DataFrame(
        {
            "highly_variable": table["highly_variable"],
            "means": table["means"],
            "dispersions": table["dispersions"],
            "dispersions_norm": table["dispersions_norm"].astype(np.float32),
            "highly_variable_nbatches": table["highly_variable_nbatches"],
            "highly_variable_intersection": table["highly_variable_intersection"],
        }
    )
    return hvg, factors


# Bins of mean expression within which scanpy's 'seurat' flavour normalises dispersions.
_HVG_BINS = 20


def _site_hvg(
    mean: np.ndarray,
    variance: np.ndarray,
    detected: np.ndarray,
    n_top_genes: int,
    var_names: pd.Index,
) -> pd.DataFrame:
    """One site's selection from the detected genes' statistics, as scanpy's 'seurat' flavour
    makes it: log dispersions normalised within bins of mean expression, the top genes by
    normalised dispersion; genes not detected in the site get zeros."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    dispersion = variance / mean
    dispersion[dispersion == 0] = np.nan
    dispersion = np.log(dispersion)
    mean = np.log1p(mean)
    table = pd.DataFrame({"means": mean, "dispersions": dispersion})
    bins = pd.cut(table["means"], bins=_HVG_BINS)
    table["mean_bin"] = bins.cat.set_categories(bins.cat.categories.astype("string"), rename=True)
    grouped = table.groupby("mean_bin", observed=True)["dispersions"]
    bin_stats = grouped.agg(avg="mean", dev="std")
    # A gene alone in its bin has no spread: its normalised dispersion is set to 1.
    alone = bin_stats["dev"].isnull()
    bin_stats.loc[alone, "dev"] = bin_stats.loc[alone, "avg"]
    bin_stats.loc[alone, "avg"] = 0
    bin_stats = bin_stats.loc[table["mean_bin"]].set_index(table.index)
    table["dispersions_norm"] = (table["dispersions"] - bin_stats["avg"]) / bin_stats["dev"]
    norm = table["dispersions_norm"].to_numpy()
    ranked = norm[~np.isnan(norm)]
    n_top = min(n_top_genes, detected.sum(), ranked.size)
    ranked[::-1].sort()
    table["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= ranked[n_top - 1]
    table.index = var_names[detected]
    if not detected.all():
        missing = pd.DataFrame(np.zeros(((~detected).sum(), table.shape[1])), columns=table.columns)
        missing["highly_variable"] = missing["highly_variable"].astype(bool)
        missing.index = var_names[~detected]
        table = pd.concat([table, missing]).loc[var_names]
    return table


def preprocess_adt(mdata: md.MuData, params: dict[str, Any]) -> ad.AnnData:
    """Raw counts into ``.X`` (kept in ``layers["counts"]``), then muon's CLR transform."""
    adt = _with_raw_counts(mdata["adt"], params["counts_layer"], "ADT")
    mu.prot.pp.clr(adt, axis=params["clr_axis"])
    return adt


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
