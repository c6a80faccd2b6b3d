"""The fast evaluation agrees with scib's own code path (the reference), like with like.

The fast path differs from scib's in how it organises the work, not in what it computes: one
exact kNN search shared by every graph metric, one Leiden clustering per resolution shared by
ARI, NMI and isolated-label F1, one pass for the silhouettes. Each difference is checked on its
own, with scib's Leiden implementation (leidenalg) on both sides:

- the kNN graph: the fast path's connectivities against scanpy's own (``sc.pp.neighbors``, an
  exact search below 8,192 cells): the same edges, the same weights up to float rounding;
- the clustering: scib's ``cluster_optimal_resolution`` run on the fast path's graph must pick
  the same clusters, hence exactly the same ARI and NMI (same graph, implementation and seed:
  nothing is left to the CPU);
- silhouettes (exact, to float32 rounding) and graph connectivity (on scanpy's own graph).

The default implementation, igraph's Leiden, gives other clusters than leidenalg for the same
seed (as another seed does): the README states by how much; these tests do not compare them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scib

from cite_bench.evaluate import score_embedding
from cite_bench.reference import (
    REFERENCE_KEYS,
    scib_graph,
    scib_reference_metrics,
)
from cite_bench.scoring import ScoringData, embedding_anndata

PARAMS = {
    "metrics": list(REFERENCE_KEYS),
    "n_neighbors": 15,
    "lisi_neighbors": 90,
    "leiden_resolutions": [0.1, 2.0, 20],
    "leiden_flavor": "leidenalg",  # scib's implementation, as on scib's side
    "seed": 0,
}
# Two exact searches whose distances differ in the last float bits give UMAP connectivities
# that differ by far less (a k-d tree against brute force on the synthetic data: 2.7e-6); a
# distorted graph by far more (a cell's distance to itself left at rounding noise instead of 0
# changed the starter graph's weights by up to 0.69).
GRAPH_TOLERANCE = 1e-4
SILHOUETTES = ("asw_label", "asw_batch", "isolated_label_asw")


def _compare(embedding: pd.DataFrame, cells: pd.DataFrame, columns) -> dict:
    """Both paths on one embedding: the fast path's scores and graph, scib's own graph, and
    scib's path clustering the fast path's graph."""
    fast = score_embedding(embedding, embedding, cells, PARAMS, columns).set_index("metric")
    fast_graph = ScoringData(embedding_anndata(embedding, cells), columns, PARAMS).graph
    return {
        "fast": fast["value"].to_dict(),
        "fast_graph": fast_graph,
        "scib_graph": scib_graph(embedding, cells, PARAMS),
        "scib_on_fast_graph": scib_reference_metrics(
            embedding, cells, PARAMS, columns, graph=fast_graph
        ),
    }


def _check(result: dict, columns) -> None:
    fast, shared = result["fast"], result["scib_on_fast_graph"]
    table = pd.DataFrame({"fast": fast, "scib": shared}).loc[list(REFERENCE_KEYS)]
    print("\n" + table.to_string())
    assert table.notna().all().all(), table

    # The kNN graph: the same edges, the same weights.
    mine, theirs = result["fast_graph"], result["scib_graph"]
    ours, scanpys = (g.obsp["connectivities"].tocsr() for g in (mine, theirs))
    assert (abs((ours != 0).astype(int) - (scanpys != 0).astype(int))).sum() == 0
    difference = abs(ours - scanpys).max()
    assert difference <= GRAPH_TOLERANCE, (
        f"connectivities differ by up to {difference} (is each cell's distance to itself 0?)"
    )

    # The clustering: one Leiden run per resolution, shared, picks what scib picks.
    for key in ("ari", "nmi"):
        assert fast[key] == pytest.approx(shared[key], abs=1e-12), table

    # The silhouettes are exact (up to float32 rounding in sklearn), not approximated.
    for key in SILHOUETTES:
        assert fast[key] == pytest.approx(shared[key], abs=1e-6), table

    # Graph connectivity on scanpy's own graph, as scib computes it.
    label = columns["label"]
    assert fast["graph_connectivity"] == pytest.approx(
        scib.me.graph_connectivity(theirs, label_key=label), abs=1e-12
    )


def test_fast_path_matches_scib_on_real_data(starter_embedding, columns):
    embedding, cells = starter_embedding
    _check(_compare(embedding, cells, columns), columns)


def test_fast_path_matches_scib_with_isolated_labels_and_batch_effects(columns):
    rng = np.random.default_rng(3)
    n_cells = 900
    labels = rng.choice([f"type{i}" for i in range(6)], n_cells)
    batches = rng.choice(["s1d1", "s1d2", "s2d1"], n_cells)
    batches[labels == "type5"] = "s2d1"  # an isolated label
    cells = pd.DataFrame(
        {"cell_type": pd.Categorical(labels), "batch": pd.Categorical(batches)},
        index=[f"c{i}" for i in range(n_cells)],
    )
    centres = rng.normal(0, 4, (6, 12))
    shifts = rng.normal(0, 1.5, (3, 12))
    values = (
        centres[cells["cell_type"].cat.codes]
        + shifts[cells["batch"].cat.codes]
        + rng.normal(size=(n_cells, 12))
    )
    embedding = pd.DataFrame(values, index=cells.index)
    _check(_compare(embedding, cells, columns), columns)
