"""Score embeddings with the scib metrics of the reference benchmark and tabulate them."""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

logger = logging.getLogger(__name__)

# Metric keys (used in tables and tracking) and display names. The first five are the reference
# table's, in its order. Groups and the 0.6 / 0.4 weighting follow scib (Luecken et al. 2022).
BIO_METRICS: dict[str, str] = {
    "ari": "ARI",
    "nmi": "NMI",
    "asw_label": "ASW",
    "isolated_label_asw": "Isolated label ASW",
    "isolated_label_f1": "Isolated label F1",
    "clisi": "Graph cLISI",
}
BATCH_METRICS: dict[str, str] = {
    "graph_connectivity": "Graph connectivity",
    "asw_batch": "Batch ASW",
    "ilisi": "Graph iLISI",
    "kbet": "kBET",
    "pcr_comparison": "PCR comparison",
}
AGGREGATES: dict[str, str] = {
    "bio_conservation": "Bio conservation",
    "batch_correction": "Batch correction",
    "overall": "Overall (0.6 bio + 0.4 batch)",
}
REFERENCE_METRICS = ("ari", "nmi", "asw_label", "graph_connectivity", "isolated_label_asw")
METRICS: dict[str, str] = {
    **{key: {**BIO_METRICS, **BATCH_METRICS}[key] for key in REFERENCE_METRICS},
    **{k: v for k, v in {**BIO_METRICS, **BATCH_METRICS}.items() if k not in REFERENCE_METRICS},
    **AGGREGATES,
}
BIO_WEIGHT = 0.6
LABEL_FREE = ("ilisi", "pcr_comparison")
EMBEDDING_KEY = "X_emb"
CLUSTER_KEY = "leiden_optimal"


def embedding_anndata(embedding: pd.DataFrame, cells: pd.DataFrame) -> ad.AnnData:
    """Pair an embedding with the cell annotations, refusing any mismatch of barcodes."""
    missing = embedding.index.difference(cells.index)
    if missing.size or embedding.shape[0] != cells.shape[0]:
        raise ValueError(
            f"Embedding ({embedding.shape[0]} cells) and cell metadata ({cells.shape[0]} cells) "
            f"do not describe the same cells ({missing.size} embedding barcodes unknown)."
        )
    values = embedding.to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("The embedding contains NaN or infinite values.")
    constant = values.std(axis=0) == 0
    if constant.all():
        raise ValueError("Every dimension of the embedding is constant.")
    if constant.any():
        # e.g. MOFA factors switched off by its sparsity priors: they carry no information and
        # break regression-based scores (PCR).
        logger.info("Dropping %d constant embedding dimensions.", constant.sum())
        values = values[:, ~constant]
    adata = ad.AnnData(obs=cells.loc[embedding.index].copy())
    adata.obsm[EMBEDDING_KEY] = values
    return adata


def compute_metrics(
    embedding: pd.DataFrame,
    unintegrated: pd.DataFrame,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
) -> pd.DataFrame:
    """Score one embedding with scib's bio-conservation and batch-correction metrics.

    A kNN graph on the embedding feeds ARI and NMI of Leiden clusters at the resolution that
    best matches the labels, graph connectivity and isolated-label scores (scib, the reference
    implementation); cell-type and batch silhouettes come from scib, graph LISI, kBET and the
    PCR comparison (against ``unintegrated``, the PCA of the RNA) from scib-metrics. All are in
    [0, 1], higher is better. A metric the data cannot support is reported as missing, with the
    reason in ``note``.
    """
    label, batch = columns["label"], columns["batch"]
    adata = embedding_anndata(embedding, cells)
    values = dict.fromkeys([*BIO_METRICS, *BATCH_METRICS], np.nan)
    notes = dict.fromkeys(values, "")
    single_batch = adata.obs[batch].nunique() < 2
    batch_note = f"skipped: only one batch in '{batch}'"
    neighbours = _neighbours(adata.obsm[EMBEDDING_KEY], params["lisi_neighbors"])
    if not single_batch:
        values.update(_label_free_metrics(adata, neighbours, unintegrated, batch))
    labelled = (
        adata.obs[label].notna().to_numpy()
        if label in adata.obs
        else np.zeros(adata.n_obs, dtype=bool)
    )
    if labelled.any():
        subset = adata
        if not labelled.all():
            note = f"on the {labelled.sum()} of {labelled.size} cells with a label"
            notes.update({key: note for key in values if key not in LABEL_FREE})
            subset = adata[labelled].copy()
            subset.obs[label] = subset.obs[label].cat.remove_unused_categories()
            neighbours = _neighbours(subset.obsm[EMBEDDING_KEY], params["lisi_neighbors"])
        values.update(
            _label_metrics(subset, neighbours, params, columns, with_batch=not single_batch)
        )
        if np.isnan(values["isolated_label_asw"]):
            notes["isolated_label_asw"] = notes["isolated_label_f1"] = (
                "skipped: every label occurs in the same number of batches"
            )
    else:
        reason = f"skipped: no cell-type labels (obs column '{label}')"
        logger.warning("Evaluation %s; reporting the label-based metrics as missing.", reason)
        notes.update({key: reason for key in values if key not in LABEL_FREE})
    if single_batch:
        notes.update({key: batch_note for key in BATCH_METRICS if key != "graph_connectivity"})
    for key, value in values.items():
        if np.isnan(value) and not notes[key]:
            notes[key] = "not computable on this embedding"
    values.update(aggregate_scores(values))
    return _metric_table(values, notes)


def aggregate_scores(values: dict[str, float]) -> dict[str, float]:
    """scib's aggregates: the mean of each group's available metrics, and 0.6 bio + 0.4 batch."""
    bio = np.array([values[key] for key in BIO_METRICS], dtype=float)
    batch = np.array([values[key] for key in BATCH_METRICS], dtype=float)
    bio_score = float(np.nanmean(bio)) if np.isfinite(bio).any() else np.nan
    batch_score = float(np.nanmean(batch)) if np.isfinite(batch).any() else np.nan
    return {
        "bio_conservation": bio_score,
        "batch_correction": batch_score,
        "overall": BIO_WEIGHT * bio_score + (1 - BIO_WEIGHT) * batch_score,
    }


def _neighbours(matrix: np.ndarray, n_neighbors: int) -> Any:
    """Exact nearest neighbours (deterministic, unlike approximate search)."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, matrix.shape[0] - 1)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(matrix).kneighbors(matrix)
    return NeighborsResults(indices=indices, distances=distances)


def _label_free_metrics(
    adata: ad.AnnData, neighbours: Any, unintegrated: pd.DataFrame, batch: str
) -> dict[str, float]:
    import scib_metrics

    batches = adata.obs[batch].astype(str).to_numpy()
    before = unintegrated.loc[adata.obs_names].to_numpy(dtype=np.float32)
    return {
        "ilisi": float(scib_metrics.ilisi_knn(neighbours, batches)),
        "pcr_comparison": float(
            scib_metrics.pcr_comparison(
                before, adata.obsm[EMBEDDING_KEY], batches, scale=True, categorical=True
            )
        ),
    }


def _label_metrics(
    adata: ad.AnnData,
    neighbours: Any,
    params: dict[str, Any],
    columns: dict[str, str],
    with_batch: bool,
) -> dict[str, float]:
    import scib
    import scib_metrics

    label, batch = columns["label"], columns["batch"]
    sc.pp.neighbors(
        adata,
        use_rep=EMBEDDING_KEY,
        n_neighbors=params["n_neighbors"],
        random_state=params["seed"],
    )
    resolutions = np.linspace(*params["leiden_resolutions"]).round(3).tolist()
    clusterings = leiden_clusterings(adata, resolutions, leiden_arguments(params))
    # As scib's cluster_optimal_resolution: keep the clustering whose NMI with the labels is
    # highest (the first of equals), then score ARI and NMI on it.
    best_nmi = -1.0
    for clusters in clusterings:
        adata.obs["_candidate"] = pd.Categorical(clusters)
        score = scib.me.nmi(adata, cluster_key="_candidate", label_key=label)
        if score > best_nmi:
            best_nmi, adata.obs[CLUSTER_KEY] = score, adata.obs["_candidate"]
    del adata.obs["_candidate"]
    labels = adata.obs[label].astype(str).to_numpy()
    values = {
        "ari": scib.me.ari(adata, cluster_key=CLUSTER_KEY, label_key=label),
        "nmi": scib.me.nmi(adata, cluster_key=CLUSTER_KEY, label_key=label),
        "asw_label": scib.me.silhouette(adata, label_key=label, embed=EMBEDDING_KEY),
        "graph_connectivity": scib.me.graph_connectivity(adata, label_key=label),
        "isolated_label_asw": scib.me.isolated_labels_asw(
            adata, label_key=label, batch_key=batch, embed=EMBEDDING_KEY, verbose=False
        ),
        "isolated_label_f1": isolated_label_f1(adata.obs, label, batch, clusterings),
        "clisi": float(scib_metrics.clisi_knn(neighbours, labels)),
    }
    if with_batch:
        batches = adata.obs[batch].astype(str).to_numpy()
        values["asw_batch"] = scib.me.silhouette_batch(
            adata, batch_key=batch, label_key=label, embed=EMBEDDING_KEY, verbose=False
        )
        values["kbet"] = float(scib_metrics.kbet_per_label(neighbours, batches, labels))
    return {key: float(value) for key, value in values.items()}


def leiden_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """``igraph`` (scanpy's coming default, ~10x faster) or ``leidenalg`` (what scib used)."""
    if params["leiden_flavor"] == "igraph":
        return {
            "random_state": params["seed"],
            "flavor": "igraph",
            "n_iterations": 2,
            "directed": False,
        }
    return {"random_state": params["seed"], "flavor": "leidenalg"}


def isolated_labels(obs: pd.DataFrame, label: str, batch: str) -> list[str]:
    """Labels found in the fewest batches (scib's rule), none if all are in every batch."""
    batches_per_label = obs.groupby(label, observed=True)[batch].nunique()
    fewest = batches_per_label.min()
    if fewest == obs[batch].nunique():
        return []
    return batches_per_label.index[batches_per_label == fewest].tolist()


def leiden_clusterings(
    adata: ad.AnnData, resolutions: list[float], leiden: dict[str, Any]
) -> list[np.ndarray]:
    """Leiden clusters of the kNN graph at each resolution, computed once for every metric."""
    clusterings = []
    for resolution in resolutions:
        sc.tl.leiden(adata, resolution=resolution, key_added="_leiden", **leiden)
        clusterings.append(adata.obs.pop("_leiden").to_numpy())
    return clusterings


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


def _metric_table(values: dict[str, float], notes: dict[str, str]) -> pd.DataFrame:
    """One row per metric, in the order of ``METRICS`` (the reference table's first)."""
    keys = [key for key in METRICS if key in values]
    return pd.DataFrame(
        {
            "metric": keys,
            "value": [float(values[key]) for key in keys],
            "note": [notes.get(key, "") for key in keys],
        }
    )


def collect_metrics(**metrics_by_model: pd.DataFrame) -> pd.DataFrame:
    """One tidy table (model, metric, value) from each model's metrics."""
    tables = [
        table.assign(model=model)[["model", "metric", "value", "note"]]
        for model, table in metrics_by_model.items()
    ]
    return pd.concat(tables, ignore_index=True)


def format_metrics_table(metrics: pd.DataFrame) -> str:
    """A markdown table in the layout of the reference: one row per metric, one column per
    model, the best value of each metric in bold; notes on missing metrics below it."""
    wide = metrics.pivot(index="metric", columns="model", values="value")
    models = list(dict.fromkeys(metrics["model"]))
    order = [key for key in METRICS if key in wide.index]
    order += [key for key in wide.index if key not in METRICS]
    wide = wide.loc[order, models]
    lines = [
        "| Metric | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for key, row in wide.iterrows():
        best = row.max()
        cells = [
            "n/a"
            if np.isnan(value)
            else ("**{:.3f}**" if np.isclose(value, best) else "{:.3f}").format(value)
            for value in row
        ]
        lines.append(f"| {METRICS.get(key, key)} | " + " | ".join(cells) + " |")
    notes = metrics.loc[metrics["note"].fillna("") != "", ["metric", "note"]].drop_duplicates()
    if len(notes):
        lines.append("")
        lines += [
            f"- {METRICS.get(row.metric, row.metric)}: {row.note}" for row in notes.itertuples()
        ]
    return "\n".join(lines) + "\n"
