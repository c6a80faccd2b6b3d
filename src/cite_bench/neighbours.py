"""Exact k-nearest-neighbour search of an embedding: on the CPU (scikit-learn) or a CUDA GPU
(PyTorch), the same neighbours either way.

One search per embedding feeds the Leiden graph, graph connectivity, LISI and kBET
(``cite_bench.scoring``), through ``nearest_neighbours`` and, for scanpy's graph,
``PrecomputedNeighbors``. It is exact, so that it is deterministic: an approximate search
(pynndescent) gives other neighbours on another run or machine. This module imports only
numpy at the top, so that it can be checked on a GPU machine without the rest of the stack.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

# Rows of the distance matrix computed at once on the GPU: 4,096 x 90,000 float32 is 1.5 GB.
GPU_BLOCK_ROWS = 4096


def gpu_available() -> bool:
    """Whether PyTorch can use a CUDA GPU here; without importing torch where no NVIDIA
    driver is loaded (importing it costs seconds)."""
    if importlib.util.find_spec("torch") is None or not Path("/proc/driver/nvidia").exists():
        return False
    import torch

    return torch.cuda.is_available()


def search_device(setting: str) -> str:
    """``cpu``, ``cuda``, or ``auto`` (the GPU when there is one) as the device to search on."""
    if setting == "auto":
        return "cuda" if gpu_available() else "cpu"
    if setting == "cuda" and not gpu_available():
        raise RuntimeError("evaluation.device: cuda was asked for, but torch sees no CUDA GPU.")
    return setting


def exact_neighbours(
    matrix: np.ndarray, n_neighbors: int, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances of each row's ``n_neighbors`` nearest rows, itself
    first (distance exactly 0), nearest first."""
    k = min(n_neighbors, matrix.shape[0] - 1)
    if device == "cpu":
        from sklearn.neighbors import NearestNeighbors

        distances, indices = NearestNeighbors(n_neighbors=k).fit(matrix).kneighbors(matrix)
    else:
        indices, distances = _torch_neighbours(matrix, k, device)
    # Both compute |x|^2 - 2x.y + |y|^2, which leaves rounding noise (~1e-7, CPU-dependent)
    # instead of 0 as a cell's distance to itself; UMAP's connectivities would take it for the
    # nearest neighbour's distance and reweight that cell's edges. scanpy zeroes it after its
    # own search; so do we.
    distances[indices == np.arange(indices.shape[0])[:, None]] = 0
    return indices, distances


def _torch_neighbours(matrix: np.ndarray, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force search in blocks of rows on ``device`` (float32, as scikit-learn's)."""
    import torch

    points = torch.as_tensor(np.ascontiguousarray(matrix, dtype=np.float32), device=device)
    squared = (points * points).sum(dim=1)
    indices = np.empty((points.shape[0], k), dtype=np.int64)
    distances = np.empty((points.shape[0], k), dtype=np.float32)
    for start in range(0, points.shape[0], GPU_BLOCK_ROWS):
        block = points[start : start + GPU_BLOCK_ROWS]
        block_squared = squared[start : start + GPU_BLOCK_ROWS, None]
        squared_distances = block_squared - 2 * block @ points.T + squared[None, :]
        nearest, where = torch.topk(squared_distances, k, dim=1, largest=False, sorted=True)
        stop = start + block.shape[0]
        indices[start:stop] = where.cpu().numpy()
        distances[start:stop] = nearest.clamp_min_(0).sqrt_().cpu().numpy()
    return indices, distances


def nearest_neighbours(matrix: np.ndarray, n_neighbors: int, device: str = "cpu") -> Any:
    """Exact nearest neighbours of every cell, itself first, as scib-metrics'
    ``NeighborsResults``: one search serves the Leiden graph, graph connectivity, LISI and kBET."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    indices, distances = exact_neighbours(matrix, n_neighbors, device)
    return NeighborsResults(indices=indices, distances=distances)


class PrecomputedNeighbors:
    """A kNN "transformer" (scanpy's ``transformer=`` protocol) that hands ``sc.pp.neighbors``
    the first ``n_neighbors`` columns of a search already done, instead of searching again."""

    def __init__(self, neighbours: Any, n_neighbors: int) -> None:
        self.neighbours = neighbours
        self.n_neighbors = min(n_neighbors, neighbours.indices.shape[1])

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"n_neighbors": self.n_neighbors}

    def fit_transform(self, matrix: Any) -> Any:
        from scipy import sparse

        indices = self.neighbours.indices[:, : self.n_neighbors]
        distances = self.neighbours.distances[:, : self.n_neighbors]
        n_cells = indices.shape[0]
        if matrix.shape[0] != n_cells:
            raise ValueError("The precomputed neighbours describe other cells.")
        pointers = np.arange(0, indices.size + 1, self.n_neighbors)
        return sparse.csr_matrix(
            (distances.ravel(), indices.ravel(), pointers), shape=(n_cells, n_cells)
        )
