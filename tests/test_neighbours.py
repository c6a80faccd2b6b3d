"""The exact neighbour search: scikit-learn's on the CPU, and the blocked PyTorch search that
runs on a GPU (checked here on PyTorch's CPU device: the same code, another device)."""

from __future__ import annotations

import numpy as np
import pytest

from cite_bench import neighbours
from cite_bench.neighbours import exact_neighbours, search_device


def _points(n: int = 1500, dims: int = 20) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (8, dims))
    return (centres[rng.integers(0, 8, n)] + rng.normal(size=(n, dims))).astype(np.float32)


def test_each_cell_is_its_own_first_neighbour_at_distance_zero():
    indices, distances = exact_neighbours(_points(), 30)
    assert (indices[:, 0] == np.arange(len(indices))).all()
    assert (distances[:, 0] == 0).all()
    assert (np.diff(distances, axis=1) >= 0).all()


def test_the_blocked_torch_search_finds_scikit_learns_neighbours(monkeypatch):
    pytest.importorskip("torch")
    points = _points()
    monkeypatch.setattr(neighbours, "GPU_BLOCK_ROWS", 500)  # several blocks and a partial one
    expected_indices, expected_distances = exact_neighbours(points, 30, "cpu")
    indices, distances = neighbours._torch_neighbours(points, 30, "cpu")
    # Itself first; the rest within float32 rounding (exact_neighbours zeroes column 0).
    assert (indices[:, 0] == np.arange(len(indices))).all()
    np.testing.assert_allclose(distances[:, 1:], expected_distances[:, 1:], rtol=1e-4, atol=1e-3)
    same = (indices == expected_indices).mean()
    assert same > 0.999  # only near-ties may swap places


def test_auto_uses_the_cpu_without_a_gpu_and_cuda_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(neighbours, "gpu_available", lambda: False)
    assert search_device("auto") == "cpu"
    assert search_device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        search_device("cuda")
