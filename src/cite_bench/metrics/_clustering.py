"""Clustering against the labels: ARI and NMI (scib's own functions), isolated labels and
isolated-label F1 (scib's definition, from clusterings shared by all labels)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def against_labels(adata: ad.AnnData, name: str, clusters: np.ndarray, label_key: str) -> float:
    """scib's ``ari`` or ``nmi`` (``name``) of ``obs[label_key]`` and one clustering of the
    cells of ``adata``; the clusters are written to ``obs`` for scib and removed after."""
    import scib

    adata.obs["_clusters"] = pd.Categorical(clusters)
    try:
        score = getattr(scib.me, name)(adata, cluster_key="_clusters", label_key=label_key)
    finally:
        del adata.obs["_clusters"]
    return float(score)


def isolated_labels(obs: pd.DataFrame, label: str, batch: str) -> list[str]:
    """Labels found in the fewest batches (scib's rule), none if all are in every batch."""
    batches_per_label = obs.groupby(label, observed=True)[batch].nunique()
    fewest = batches_per_label.min()
    if fewest == obs[batch].nunique():
        return []
    return batches_per_label.index[batches_per_label == fewest].tolist()


def isolated_label_f1(
    obs: pd.DataFrame, label: str, batch: str, clusterings: list[np.ndarray]
) -> float:
    """scib's isolated-label F1: for each isolated label, the best F1 of any Leiden cluster
    at any resolution against that label; the mean over isolated labels.

    Same definition as ``scib.me.isolated_labels_f1``, but from clusterings shared by all
    labels and metrics (scib reclusters per label with leidenalg: ~40x slower on the demo).
    """
    from sklearn.metrics import f1_score

    labels = isolated_labels(obs, label, batch)
    if not labels:
        return np.nan
    truth = obs[label].astype(str).to_numpy()
    scores = []
    for isolated in labels:
        is_label = truth == isolated
        scores.append(
            max(
                f1_score(is_label, clusters == cluster)
                for clusters in clusterings
                for cluster in np.unique(clusters[is_label])
            )
        )
    return float(np.mean(scores))
