"""Checks of the raw input before any long work, and RNA paired with ADT cell by cell.

Every problem is raised as an :class:`InputDataError` naming the modality, layer, column or
feature at fault; only the counts are taken from the input (a layer left on disk is read a
block of cells at a time).
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from cite_bench.preprocessing.annotations import cell_annotations, shared_annotations
from cite_bench.preprocessing.blocks import columns_of
from cite_bench.preprocessing.counts import (
    InputDataError,
    check_names,
    count_problem,
    input_counts,
    named_layers,
)

logger = logging.getLogger(__name__)

# Feature types of RNA and protein features, in the GEO file's and in 10x Genomics' words.
RNA_FEATURE_TYPES = ("GEX", "Gene Expression")
ADT_FEATURE_TYPES = ("ADT", "Antibody Capture")
# Modality names of a MuData input: scverse tools (muon.read_10x_h5) call the protein one 'prot'.
RNA_MODALITY = "rna"
ADT_MODALITIES = ("adt", "prot")

CountsAndCells = tuple[ad.AnnData, pd.DataFrame]


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
        shared_obs = shared_annotations(raw)
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
    obs = cell_annotations(rna_obs, adt_obs, columns, shared_obs)
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
    return subset_cells(mdata, keep)


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


def subset_cells(mdata: md.MuData, keep: np.ndarray) -> md.MuData:
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
        layers={name: take(matrix) for name, matrix in named_layers(modality).items()},
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


def _counts_modality(
    source: ad.AnnData, layer: str, name: str, features: np.ndarray | None = None
) -> CountsAndCells:
    """The checked raw counts of ``source`` (of the ``features`` columns only, where given) as
    a modality whose ``X`` is its counts layer, and, apart, its cell annotations: they are kept
    once, on the MuData. Where ``source`` has a counts layer its ``X`` is never read."""
    check_names(source.obs_names, _features_var(source, features).index, name)
    counts, from_x = input_counts(source, layer, name)
    (counts,) = columns_of(counts, [features])
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
    problem = count_problem(counts)
    if problem and from_x:
        layers = sorted(named_layers(source)) or "none"
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
        check_names(raw.obs_names, _features_var(raw, features).index, name)
    # RNA and ADT are columns of one matrix: take both in one reading of it.
    counts, from_x = input_counts(raw, layer, "RNA")
    rna_counts, adt_counts = columns_of(counts, [rna, adt])
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
