"""Cell graphs as tables: the layout graph-output methods hand to evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cite_bench.knn_graph import graph_frame, is_graph_frame, neighbours_of, subset_neighbours


def _distances() -> sparse.csr_matrix:
    # Cell 0's neighbours: 2 (0.5), 1 (1.0), 3 (2.0); a stored self-distance is ignored.
    dense = np.array(
        [
            [1e-9, 1.0, 0.5, 2.0],
            [1.0, 0.0, 0.7, 0.0],
            [0.5, 0.7, 0.0, 0.9],
            [2.0, 0.0, 0.9, 0.0],
        ]
    )
    return sparse.csr_matrix(dense)


def test_a_distance_matrix_becomes_self_first_nearest_first():
    frame = graph_frame(_distances(), pd.Index(list("abcd")))
    assert is_graph_frame(frame)
    indices, distances = neighbours_of(frame)
    # Every cell keeps as many neighbours as the one with the fewest (two).
    np.testing.assert_array_equal(indices, [[0, 2, 1], [1, 2, 0], [2, 0, 1], [3, 2, 0]])
    np.testing.assert_allclose(distances[0], [0, 0.5, 1.0])
    assert indices.flags["C_CONTIGUOUS"] and distances.flags["C_CONTIGUOUS"]
    capped = graph_frame(_distances(), pd.Index(list("abcd")), n_neighbors=1)
    assert neighbours_of(capped)[0].shape == (4, 2)


def test_a_cell_without_neighbours_is_refused():
    lonely = _distances().tolil()
    lonely[3, :] = 0
    with pytest.raises(ValueError, match="no neighbour"):
        graph_frame(lonely.tocsr(), pd.Index(list("abcd")))


def test_the_graph_among_a_subset_of_cells_is_renumbered():
    indices, distances = neighbours_of(graph_frame(_distances(), pd.Index(list("abcd"))))
    keep = np.array([True, False, True, True])
    sub_indices, sub_distances = subset_neighbours(indices, distances, keep)
    # Cells a, c, d become 0, 1, 2; b is gone from every neighbour list.
    np.testing.assert_array_equal(sub_indices, [[0, 1], [1, 0], [2, 1]])
    np.testing.assert_allclose(sub_distances[0], [0, 0.5])
