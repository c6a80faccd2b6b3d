"""scib 1.1.7's own code path for the metrics that ``cite_bench.evaluate.score_embedding``
computes faster.

This is how the reference benchmark scored embeddings: scanpy's kNN graph (an exact,
brute-force search below 8,192 cells, pynndescent's approximate one above), scib's optimised
Leiden clustering (leidenalg, reclustering at every resolution) and sklearn silhouettes
recomputing the distances for every call. Tests check the fast path against it, and the
benchmark (``cite_bench.benchmark``) times both.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from cite_bench.outputs import EMBEDDING_KEY
from cite_bench.scoring import CLUSTER_KEY, Profiler, embedding_anndata

# The metrics both paths compute: the published table's five, and the batch silhouette.
REFERENCE_KEYS = (
    "ari",
    "nmi",
    "asw_label",
    "graph_connectivity",
    "isolated_label_asw",
    "asw_batch",
)


def leiden_arguments(flavor: str) -> dict[str, Any]:
    """What scib's sweep passes on to ``sc.tl.leiden``: leidenalg (scib's choice, scanpy's
    default) or igraph's Leiden as ``sc.tl.leiden(flavor="igraph")`` runs it (the benchmark's
    like-for-like comparison with the fast path)."""
    if flavor == "igraph":
        return {"flavor": "igraph", "n_iterations": 2, "directed": False}
    return {"flavor": "leidenalg"}


def scib_graph(embedding: pd.DataFrame, cells: pd.DataFrame, params: dict[str, Any]) -> ad.AnnData:
    """The cells with the kNN graph scib's path clusters: ``sc.pp.neighbors`` with its defaults
    (UMAP connectivities of ``n_neighbors`` neighbours, scanpy's own search)."""
    adata = embedding_anndata(embedding, cells)
    sc.pp.neighbors(
        adata,
        use_rep=EMBEDDING_KEY,
        n_neighbors=params["n_neighbors"],
        random_state=params["seed"],
    )
    return adata


def scib_reference_metrics(
    embedding: pd.DataFrame,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
    profile: Profiler | None = None,
    graph: ad.AnnData | None = None,
) -> dict[str, float]:
    """ARI, NMI, cell-type ASW, graph connectivity, isolated-label ASW and batch ASW, each from
    scib's own function with its defaults, on the resolutions of ``params``.

    ``graph``: the same cells with a kNN graph already built (``obsp["connectivities"]``,
    ``obsp["distances"]``, ``uns["neighbors"]``), e.g. the fast path's, to score instead of
    building scanpy's (``scib_graph``). Tests use it to compare the clustering alone: on one
    graph, scib's Leiden sweep and the fast path's (with the same implementation and seed) must
    give the same clusters.
    """
    import scib

    profile = profile or (lambda step: contextlib.nullcontext())
    label, batch = columns["label"], columns["batch"]
    with profile("knn_graph"):
        if graph is None:
            adata = scib_graph(embedding, cells, params)
        else:
            adata = embedding_anndata(embedding, cells)
            if not adata.obs_names.equals(graph.obs_names):
                raise ValueError("The graph describes other cells than the embedding.")
            for key in ("connectivities", "distances"):
                adata.obsp[key] = graph.obsp[key].copy()
            adata.uns["neighbors"] = copy.deepcopy(dict(graph.uns["neighbors"]))
    resolutions = np.linspace(*params["leiden_resolutions"]).round(3).tolist()
    with profile("leiden"):
        scib.me.cluster_optimal_resolution(
            adata,
            label_key=label,
            cluster_key=CLUSTER_KEY,
            resolutions=resolutions,
            force=True,
            verbose=False,
            random_state=params["seed"],
            **leiden_arguments(params.get("leiden_flavor", "leidenalg")),
        )
    with profile("ari_nmi"):
        values = {
            "ari": scib.me.ari(adata, cluster_key=CLUSTER_KEY, label_key=label),
            "nmi": scib.me.nmi(adata, cluster_key=CLUSTER_KEY, label_key=label),
        }
    with profile("asw_label"):
        values["asw_label"] = scib.me.silhouette(adata, label_key=label, embed=EMBEDDING_KEY)
    with profile("graph_connectivity"):
        values["graph_connectivity"] = scib.me.graph_connectivity(adata, label_key=label)
    with profile("isolated_label_asw"):
        values["isolated_label_asw"] = scib.me.isolated_labels_asw(
            adata, label_key=label, batch_key=batch, embed=EMBEDDING_KEY, verbose=False
        )
    with profile("asw_batch"):
        values["asw_batch"] = scib.me.silhouette_batch(
            adata, batch_key=batch, label_key=label, embed=EMBEDDING_KEY, verbose=False
        )
    return {key: float(value) for key, value in values.items()}
