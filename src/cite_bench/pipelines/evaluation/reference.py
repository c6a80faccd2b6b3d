"""scib 1.1.7's own code path for the metrics that ``nodes.score_embedding`` computes faster.

This is how the reference benchmark scored embeddings: scanpy's kNN graph (approximate beyond
4,096 cells), scib's optimised Leiden clustering (leidenalg, reclustering at every resolution)
and sklearn silhouettes recomputing the distances for every call. Tests check the fast path
against it, and the benchmark (``cite_bench.benchmark``) times both.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pandas as pd
import scanpy as sc

from .nodes import CLUSTER_KEY, EMBEDDING_KEY, Profiler, embedding_anndata

# The metrics both paths compute: the published table's five, and the batch silhouette.
REFERENCE_KEYS = (
    "ari",
    "nmi",
    "asw_label",
    "graph_connectivity",
    "isolated_label_asw",
    "asw_batch",
)


def scib_reference_metrics(
    embedding: pd.DataFrame,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
    profile: Profiler | None = None,
) -> dict[str, float]:
    """ARI, NMI, cell-type ASW, graph connectivity, isolated-label ASW and batch ASW, each from
    scib's own function with its defaults, on the resolutions of ``params``."""
    import scib

    profile = profile or (lambda step: contextlib.nullcontext())
    label, batch = columns["label"], columns["batch"]
    adata = embedding_anndata(embedding, cells)
    with profile("knn_graph"):
        sc.pp.neighbors(
            adata,
            use_rep=EMBEDDING_KEY,
            n_neighbors=params["n_neighbors"],
            random_state=params["seed"],
        )
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
