"""Score embeddings with the scib metrics of the reference benchmark and tabulate them.

The metrics are scib's (Luecken et al. 2022) with scib's definitions; the work is organised to
scale to the full 90,000-cell dataset: one exact nearest-neighbour search per embedding feeds
every graph metric, Leiden runs once per resolution for all metrics that need clusters, and the
three silhouettes come from one pass over the distances (``silhouette.py``). ``reference.py``
keeps scib's own code path, against which tests check these values.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from cite_bench.pipelines.modelling.nodes import first_seed, split_by_seed

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
    "cell_cycle": "Cell-cycle conservation",
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
# Times (or otherwise watches) each step of the scoring; the benchmark passes one.
Profiler = Callable[[str], AbstractContextManager[Any]]
BIO_WEIGHT = 0.6
LABEL_FREE = ("ilisi", "pcr_comparison", "cell_cycle")
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
    """Score a model's embedding for each seed it was trained with (``score_embedding``); one
    row per seed and metric. The unintegrated reference is the baseline's first seed."""
    reference = first_seed(unintegrated)
    tables = [
        score_embedding(frame, reference, cells, params, columns).assign(seed=seed)
        for seed, frame in split_by_seed(embedding).items()
    ]
    return pd.concat(tables, ignore_index=True)[["seed", "metric", "value", "note"]]


def score_embedding(
    embedding: pd.DataFrame,
    unintegrated: pd.DataFrame,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
    profile: Profiler | None = None,
) -> pd.DataFrame:
    """Score one embedding with scib's bio-conservation and batch-correction metrics.

    An exact kNN graph on the embedding feeds ARI and NMI of Leiden clusters at the resolution
    that best matches the labels, graph connectivity and isolated-label F1 (scib), graph LISI
    and kBET (scib-metrics); the cell-type, batch and isolated-label silhouettes follow scib's
    definitions; the PCR comparison (against ``unintegrated``, the PCA of the RNA) comes from
    scib-metrics, and cell-cycle conservation is scored where a phase column exists. All are in
    [0, 1], higher is better. A metric the data cannot support is reported as missing, with the
    reason in ``note``. ``profile(step)`` wraps each step (the benchmark times them).
    """
    profile = profile or (lambda step: contextlib.nullcontext())
    label, batch = columns["label"], columns["batch"]
    adata = embedding_anndata(embedding, cells)
    values = dict.fromkeys([*BIO_METRICS, *BATCH_METRICS], np.nan)
    notes = dict.fromkeys(values, "")
    single_batch = adata.obs[batch].nunique() < 2
    batch_note = f"skipped: only one batch in '{batch}'"
    with profile("knn"):
        neighbours = nearest_neighbours(adata.obsm[EMBEDDING_KEY], params["lisi_neighbors"])
    if not single_batch:
        values.update(_label_free_metrics(adata, neighbours, unintegrated, batch, profile))
    phase = columns["phase"]
    if phase in adata.obs and adata.obs[phase].notna().any():
        with profile("cell_cycle"):
            values["cell_cycle"] = cell_cycle_conservation(
                adata.obsm[EMBEDDING_KEY],
                _aligned(unintegrated, adata),
                adata.obs[phase],
                adata.obs[batch].astype(str).to_numpy(),
            )
    else:
        notes["cell_cycle"] = f"skipped: no cell-cycle phase column '{phase}' in obs"
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
            with profile("knn"):
                neighbours = nearest_neighbours(
                    subset.obsm[EMBEDDING_KEY], params["lisi_neighbors"]
                )
        values.update(
            _label_metrics(
                subset, neighbours, params, columns, with_batch=not single_batch, profile=profile
            )
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


def nearest_neighbours(matrix: np.ndarray, n_neighbors: int) -> Any:
    """Exact nearest neighbours of every cell, itself first (deterministic, unlike approximate
    search): one search serves the Leiden graph, graph connectivity, LISI and kBET."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, matrix.shape[0] - 1)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(matrix).kneighbors(matrix)
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


def _label_free_metrics(
    adata: ad.AnnData, neighbours: Any, unintegrated: pd.DataFrame, batch: str, profile: Profiler
) -> dict[str, float]:
    import scib_metrics

    batches = adata.obs[batch].astype(str).to_numpy()
    before = _aligned(unintegrated, adata)
    with profile("ilisi"):
        ilisi = float(scib_metrics.ilisi_knn(neighbours, batches))
    with profile("pcr_comparison"):
        pcr = scib_metrics.pcr_comparison(
            before, adata.obsm[EMBEDDING_KEY], batches, scale=True, categorical=True
        )
    return {"ilisi": ilisi, "pcr_comparison": float(pcr)}


def _aligned(frame: pd.DataFrame, adata: ad.AnnData) -> np.ndarray:
    return frame.loc[adata.obs_names].to_numpy(dtype=np.float32)


def cell_cycle_conservation(
    embedding: np.ndarray, unintegrated: np.ndarray, phases: pd.Series, batches: np.ndarray
) -> float:
    """scib's cell-cycle conservation, with the annotated phase as the covariate.

    In each batch, the variance that the phase explains through principal component
    regression is compared before (``unintegrated``) and after integration:
    ``max(0, 1 - |after - before| / before)``; the mean over batches. scib regresses on S and
    G2/M scores recomputed from marker genes, which a highly-variable-gene subset may lack;
    the phase call of the input (e.g. GEX_phase in the GEO file) carries the same signal.
    """
    from scib_metrics.utils import principal_component_regression

    known = phases.notna().to_numpy()
    codes = phases.astype("category").cat.codes.to_numpy()
    scores = []
    for name in np.unique(batches[known]):
        cells = known & (batches == name)
        if np.unique(codes[cells]).size < 2 or cells.sum() < 3:
            continue  # no cell-cycle variance to conserve in this batch
        before, after = (
            float(principal_component_regression(matrix[cells], codes[cells], categorical=True))
            for matrix in (unintegrated, embedding)
        )
        if before > 0:
            scores.append(max(0.0, 1 - abs(after - before) / before))
    return float(np.mean(scores)) if scores else np.nan


def _label_metrics(
    adata: ad.AnnData,
    neighbours: Any,
    params: dict[str, Any],
    columns: dict[str, str],
    with_batch: bool,
    profile: Profiler,
) -> dict[str, float]:
    import scib
    import scib_metrics

    from .silhouette import silhouette_metrics

    label, batch = columns["label"], columns["batch"]
    with profile("knn_graph"):
        sc.pp.neighbors(
            adata,
            use_rep=EMBEDDING_KEY,
            transformer=PrecomputedNeighbors(neighbours, params["n_neighbors"]),
        )
    resolutions = np.linspace(*params["leiden_resolutions"]).round(3).tolist()
    with profile("leiden"):
        clusterings = leiden_clusterings(adata, resolutions, leiden_arguments(params))
    with profile("ari_nmi"):
        # As scib's cluster_optimal_resolution: keep the clustering whose NMI with the labels
        # is highest (the first of equals), then score ARI and NMI on it.
        best_nmi = -1.0
        for clusters in clusterings:
            adata.obs["_candidate"] = pd.Categorical(clusters)
            score = scib.me.nmi(adata, cluster_key="_candidate", label_key=label)
            if score > best_nmi:
                best_nmi, adata.obs[CLUSTER_KEY] = score, adata.obs["_candidate"]
        del adata.obs["_candidate"]
        values = {
            "ari": scib.me.ari(adata, cluster_key=CLUSTER_KEY, label_key=label),
            "nmi": scib.me.nmi(adata, cluster_key=CLUSTER_KEY, label_key=label),
        }
    labels = adata.obs[label].astype(str).to_numpy()
    batches = adata.obs[batch].astype(str).to_numpy()
    with profile("silhouettes"):
        silhouettes = silhouette_metrics(
            adata.obsm[EMBEDDING_KEY],
            labels,
            batches if with_batch else None,
            isolated_labels(adata.obs, label, batch),
        )
    values["asw_label"] = silhouettes["asw_label"]
    values["isolated_label_asw"] = silhouettes["isolated_label_asw"]
    with profile("graph_connectivity"):
        values["graph_connectivity"] = scib.me.graph_connectivity(adata, label_key=label)
    with profile("isolated_label_f1"):
        values["isolated_label_f1"] = isolated_label_f1(adata.obs, label, batch, clusterings)
    with profile("clisi"):
        values["clisi"] = float(scib_metrics.clisi_knn(neighbours, labels))
    if with_batch:
        values["asw_batch"] = silhouettes["asw_batch"]
        with profile("kbet"):
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
    """Leiden clusters of the kNN graph at each resolution, computed once for every metric.

    With igraph, the graph is converted once and each resolution calls igraph directly, as
    ``sc.tl.leiden(flavor="igraph")`` does (same graph, arguments and random state, hence the
    same clusters; a test checks it), instead of converting it again for every resolution:
    that conversion took ~40% of the time at 90,000 cells.
    """
    if leiden["flavor"] != "igraph":
        clusterings = []
        for resolution in resolutions:
            sc.tl.leiden(adata, resolution=resolution, key_added="_leiden", **leiden)
            clusterings.append(adata.obs.pop("_leiden").to_numpy())
        return clusterings
    from scanpy._utils import get_igraph_from_adjacency
    from scanpy._utils.random import set_igraph_random_state

    graph = get_igraph_from_adjacency(adata.obsp["connectivities"], directed=False)
    clusterings = []
    for resolution in resolutions:
        with set_igraph_random_state(leiden["random_state"]):
            partition = graph.community_leiden(
                objective_function="modularity",
                weights="weight",
                resolution=resolution,
                n_iterations=leiden["n_iterations"],
            )
        clusterings.append(np.asarray(partition.membership).astype(str))
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
    """One tidy table (model, seed, metric, value, note) from each model's metrics."""
    tables = [
        table.assign(model=model)[["model", "seed", "metric", "value", "note"]]
        for model, table in metrics_by_model.items()
    ]
    return pd.concat(tables, ignore_index=True)


def summarise_over_seeds(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation of each model's metrics over its seeds (one row per
    model and metric, models and metrics in table order); the SD is 0 for a single seed."""
    keys = ["model", "metric"]
    summary = metrics.groupby(keys, sort=False).agg(
        mean=("value", "mean"),
        sd=("value", lambda values: values.std(ddof=1) if values.notna().sum() > 1 else 0.0),
        n_seeds=("seed", "nunique"),
        note=("note", "first"),
    )
    summary.loc[summary["mean"].isna(), "sd"] = np.nan
    return summary.reset_index()


def format_metrics_table(metrics: pd.DataFrame) -> str:
    """A markdown table in the layout of the reference: one row per metric, one column per
    model, the best value of each metric in bold; mean ± SD where models ran with several
    seeds; notes on missing metrics below it."""
    summary = summarise_over_seeds(metrics)
    wide = summary.pivot(index="metric", columns="model", values="mean")
    spread = summary.pivot(index="metric", columns="model", values="sd")
    models = list(dict.fromkeys(metrics["model"]))
    order = [key for key in METRICS if key in wide.index]
    order += [key for key in wide.index if key not in METRICS]
    wide, spread = wide.loc[order, models], spread.loc[order, models]
    with_sd = bool((summary["n_seeds"] > 1).any())
    lines = [
        "| Metric | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for key, row in wide.iterrows():
        best = row.max()
        cells = []
        for model, value in row.items():
            if np.isnan(value):
                cells.append("n/a")
                continue
            text = f"{value:.3f}" + (f" ± {spread.at[key, model]:.3f}" if with_sd else "")
            cells.append(f"**{text}**" if np.isclose(value, best) else text)
        lines.append(f"| {METRICS.get(key, key)} | " + " | ".join(cells) + " |")
    if with_sd:
        seeds = ", ".join(str(seed) for seed in sorted(metrics["seed"].unique()))
        lines += ["", f"Mean ± standard deviation over seeds {seeds}."]
    notes = metrics.loc[metrics["note"].fillna("") != "", ["metric", "note"]].drop_duplicates()
    if len(notes):
        lines.append("")
        lines += [
            f"- {METRICS.get(row.metric, row.metric)}: {row.note}" for row in notes.itertuples()
        ]
    return "\n".join(lines) + "\n"
