"""Sparse matrices read and built a block of cells at a time, so that memory stays bounded by
the raw counts (a backed AnnData's layer is never read whole)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from anndata.abc import CSCDataset, CSRDataset
from scipy import sparse

# Stored values normalised at a time, and read from disk at a time: bounds each block's copies
# to tens of MB, while a block read from disk stays large enough (over glibc's 32 MB) to be
# handed back to the system as soon as it is freed.
_BLOCK = 1 << 22
_DISK_BLOCK = 1 << 24


def columns_of(matrix: Any, features: list[np.ndarray | None]) -> list[Any]:
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


def row_blocks(row_nnz: np.ndarray) -> Iterator[tuple[int, int]]:
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
    """See :func:`columns_of`. The number of rows per block follows the number of stored values
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
