"""Raw counts: where an input keeps them, and whether they are counts at all."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse


class InputDataError(ValueError):
    """Raised when raw data cannot be used; the message names the column, layer or feature."""


def named_layers(modality: ad.AnnData) -> dict[str, Any]:
    """The layers proper: anndata 0.13 also lists ``.X`` among them under the key ``None``."""
    return {name: matrix for name, matrix in modality.layers.items() if name is not None}


def check_names(obs_names: pd.Index, var_names: pd.Index, name: str) -> None:
    for axis, names in (("barcodes", obs_names), ("feature names", var_names)):
        duplicated = names[names.duplicated()]
        if duplicated.size:
            raise InputDataError(
                f"{name} has {duplicated.size} duplicate {axis}, e.g. "
                f"{list(duplicated.unique()[:3])}."
            )


def _counts_layer(modality: ad.AnnData, layer: str, name: str) -> Any:
    layers = named_layers(modality)
    if layer not in layers:
        raise InputDataError(
            f"{name} has no raw-count layer '{layer}' (layers: {sorted(layers) or 'none'}); "
            "set data_processing.counts_layer."
        )
    return layers[layer]


def input_counts(source: ad.AnnData, layer: str, name: str) -> tuple[Any, bool]:
    """The raw counts of an input: its counts layer, or else its ``X`` (users of 10x data keep
    counts there), as they are: in memory, or on disk for a backed AnnData (see
    :func:`columns_of`). The flag says whether ``X`` was taken; the caller checks that it holds
    counts."""
    layers = named_layers(source)
    if layer in layers:
        return layers[layer], False
    if source.X is None:
        raise InputDataError(
            f"{name} has no raw-count layer '{layer}' (layers: {sorted(layers) or 'none'}) and "
            "no X; set data_processing.counts_layer."
        )
    return source.X, True


# Values checked at a time: bounds the temporaries to a few hundred MB whatever the data size.
_CHECK_BLOCK = 1 << 24


def count_problem(matrix: Any) -> str | None:
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
    problem = count_problem(matrix)
    if problem:
        raise InputDataError(f"{name} layer '{layer}' is not raw counts: {problem}.")


def raw_counts(modality: ad.AnnData, layer: str, name: str) -> sparse.csr_matrix:
    """The checked counts as float32 CSR: the layer itself where it already is one (it is only
    read, never changed), else a converted copy."""
    matrix = _counts_layer(modality, layer, name)
    _check_count_values(matrix, layer, name)
    return sparse.csr_matrix(matrix, dtype=np.float32)
