"""One output type: an embedding or a cell graph, told apart and checked in one place."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cite_bench.knn_graph import graph_frame
from cite_bench.outputs import EMBEDDING_KEY, MethodOutput, OutputError


def _cells(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"cell_type": ["a", "b"] * (n // 2)}, index=[f"c{i}" for i in range(n)])


def _embedding(cells: pd.DataFrame, n_dims: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.normal(size=(len(cells), n_dims)), index=cells.index)


def test_a_graph_table_is_told_from_an_embedding_and_scored_as_neighbours():
    cells = _cells()
    embedding = _embedding(cells)
    distances = sparse.csr_matrix(np.abs(np.subtract.outer(np.arange(20.0), np.arange(20.0))))
    graph = graph_frame(distances, cells.index, n_neighbors=4)
    assert not MethodOutput.of(embedding).is_graph
    assert MethodOutput.of(graph).is_graph
    adata, neighbours = MethodOutput.of(graph).to_anndata(cells)
    assert EMBEDDING_KEY not in adata.obsm
    assert neighbours.indices.shape == (20, 5)
    assert (neighbours.indices[:, 0] == np.arange(20)).all()  # each cell first, as searched
    with pytest.raises(ValueError, match="Unknown method output 'tree'"):
        MethodOutput(embedding, "tree")


def test_an_output_must_describe_the_annotated_cells():
    cells = _cells()
    with pytest.raises(ValueError, match=r"Embedding \(17 cells\) .* same cells"):
        MethodOutput(_embedding(cells).iloc[3:]).to_anndata(cells)
    with_constant = _embedding(cells).assign(flat=1.0)
    adata, neighbours = MethodOutput(with_constant).to_anndata(cells.iloc[::-1])
    assert neighbours is None
    assert adata.obsm[EMBEDDING_KEY].shape == (20, 3)  # the constant dimension is dropped
    assert list(adata.obs_names) == list(cells.index)  # in the output's order


def test_a_users_embedding_is_checked_before_scoring():
    cells = _cells()
    where = "external method 'mine' (mine.csv)"
    extra = pd.concat([_embedding(cells), _embedding(cells).iloc[:2].set_axis(["x", "y"])])
    checked = MethodOutput(extra.iloc[::-1]).checked_against(cells, where)
    assert list(checked.index) == list(cells.index)
    one_dimension = _embedding(cells, n_dims=1).assign(flat=0.0)
    with pytest.raises(OutputError, match=r"mine.csv\): 1 non-constant dimension"):
        MethodOutput(one_dimension).checked_against(cells, where)
    duplicated = pd.concat([_embedding(cells), _embedding(cells).iloc[:1]])
    with pytest.raises(OutputError, match="1 duplicate barcodes, e.g. \\['c0'\\]"):
        MethodOutput(duplicated).checked_against(cells, where)
