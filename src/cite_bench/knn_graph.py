"""Cell graphs as tables: how a graph-output method (e.g. WNN) hands its graph to evaluation.

A method that outputs a cell graph instead of an embedding writes, per cell, its ``k`` nearest
neighbours and their distances, the cell itself first at distance 0 (the layout of an exact
neighbour search, which graph metrics read): columns ``neighbour_0..k-1`` (row positions in the
same table) and ``distance_0..k-1``. It is stored and stacked over seeds like an embedding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

NEIGHBOUR = "neighbour_"
DISTANCE = "distance_"


def graph_frame(
    distances: sparse.spmatrix, barcodes: pd.Index, n_neighbors: int | None = None
) -> pd.DataFrame:
    """A kNN distance matrix (one row per cell, its neighbours' distances as stored values, as
    scanpy and muon write ``obsp["distances"]``) as a table, self first: at most
    ``n_neighbors`` other cells each, as many for every cell as the cell with the fewest has
    (a stored distance from a cell to itself is not counted)."""
    matrix = sparse.csr_matrix(distances)
    rows = []
    for row in range(matrix.shape[0]):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        others = matrix.indices[start:stop] != row
        neighbours, values = matrix.indices[start:stop][others], matrix.data[start:stop][others]
        order = np.argsort(values, kind="stable")
        rows.append((neighbours[order], values[order]))
    k = min(len(neighbours) for neighbours, _ in rows)
    if k < 1:
        raise ValueError("Some cells have no neighbour in the graph.")
    k = min(k, n_neighbors) if n_neighbors else k
    indices = np.column_stack(
        [np.arange(matrix.shape[0]), np.stack([neighbours[:k] for neighbours, _ in rows])]
    )
    values = np.column_stack(
        [np.zeros(matrix.shape[0]), np.stack([row_values[:k] for _, row_values in rows])]
    ).astype(np.float32)
    columns = {f"{NEIGHBOUR}{i}": indices[:, i].astype(np.int64) for i in range(k + 1)}
    columns |= {f"{DISTANCE}{i}": values[:, i] for i in range(k + 1)}
    return pd.DataFrame(columns, index=pd.Index(barcodes, name="barcode"))


def is_graph_frame(frame: pd.DataFrame) -> bool:
    return len(frame.columns) > 0 and str(frame.columns[0]).startswith(NEIGHBOUR)


def neighbours_of(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour indices and distances (cells x k, self first) of a graph table."""
    indices = frame[[c for c in frame.columns if c.startswith(NEIGHBOUR)]].to_numpy(np.int64)
    distances = frame[[c for c in frame.columns if c.startswith(DISTANCE)]].to_numpy(np.float32)
    return np.ascontiguousarray(indices), np.ascontiguousarray(distances)


def subset_neighbours(
    indices: np.ndarray, distances: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The graph among the cells in ``keep`` (a boolean mask): each kept cell's kept neighbours,
    renumbered, as many per cell as the kept cell with the fewest has."""
    position = np.full(keep.size, -1)
    position[keep] = np.arange(int(keep.sum()))
    rows_indices, rows_distances = [], []
    for row in np.flatnonzero(keep):
        inside = keep[indices[row]]
        rows_indices.append(position[indices[row][inside]])
        rows_distances.append(distances[row][inside])
    k = min(len(row) for row in rows_indices)
    return (
        np.stack([row[:k] for row in rows_indices]),
        np.stack([row[:k] for row in rows_distances]),
    )
