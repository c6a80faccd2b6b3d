"""Score embeddings with the scib metrics of the reference benchmark and tabulate them."""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

logger = logging.getLogger(__name__)

# Metric keys (used in tables and tracking) and the names the reference table uses, in its order.
METRICS: dict[str, str] = {
    "ari": "ARI",
    "nmi": "NMI",
    "asw_label": "ASW",
    "graph_connectivity": "Graph connectivity",
    "isolated_label_asw": "Isolated label ASW",
}
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
    adata = ad.AnnData(obs=cells.loc[embedding.index].copy())
    adata.obsm[EMBEDDING_KEY] = values
    return adata


def compute_metrics(
    embedding: pd.DataFrame,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
) -> pd.DataFrame:
    """kNN graph on the embedding, then ARI and NMI of Leiden clusters at the resolution that
    best matches the labels, cell-type silhouette, graph connectivity and isolated-label
    silhouette (all scib, all in [0, 1]).

    Returns one row per metric with a ``note`` saying why a metric is missing (no labels, no
    isolated label) or what it was computed on.
    """
    label = columns["label"]
    adata = embedding_anndata(embedding, cells)
    labelled = (
        adata.obs[label].notna().to_numpy()
        if label in adata.obs
        else np.zeros(adata.n_obs, dtype=bool)
    )
    if not labelled.any():
        reason = f"skipped: no cell-type labels (obs column '{label}')"
        logger.warning("Evaluation %s; reporting the metrics as missing.", reason)
        return _metric_table(dict.fromkeys(METRICS, np.nan), dict.fromkeys(METRICS, reason))
    notes = dict.fromkeys(METRICS, "")
    if not labelled.all():
        note = f"on the {labelled.sum()} of {labelled.size} cells with a label"
        notes = dict.fromkeys(METRICS, note)
        adata = adata[labelled].copy()
        adata.obs[label] = adata.obs[label].cat.remove_unused_categories()
    values = _label_metrics(adata, params, columns)
    if np.isnan(values["isolated_label_asw"]):
        notes["isolated_label_asw"] = "skipped: every label occurs in the same number of batches"
    return _metric_table(values, notes)


def _label_metrics(
    adata: ad.AnnData, params: dict[str, Any], columns: dict[str, str]
) -> dict[str, float]:
    import scib

    label, batch = columns["label"], columns["batch"]
    sc.pp.neighbors(
        adata,
        use_rep=EMBEDDING_KEY,
        n_neighbors=params["n_neighbors"],
        random_state=params["seed"],
    )
    scib.me.cluster_optimal_resolution(
        adata,
        label_key=label,
        cluster_key=CLUSTER_KEY,
        use_rep=EMBEDDING_KEY,
        resolutions=np.linspace(*params["leiden_resolutions"]).round(3).tolist(),
        verbose=False,
        random_state=params["seed"],
    )
    return {
        "ari": scib.me.ari(adata, cluster_key=CLUSTER_KEY, label_key=label),
        "nmi": scib.me.nmi(adata, cluster_key=CLUSTER_KEY, label_key=label),
        "asw_label": scib.me.silhouette(adata, label_key=label, embed=EMBEDDING_KEY),
        "graph_connectivity": scib.me.graph_connectivity(adata, label_key=label),
        "isolated_label_asw": scib.me.isolated_labels_asw(
            adata, label_key=label, batch_key=batch, embed=EMBEDDING_KEY, verbose=False
        ),
    }


def _metric_table(values: dict[str, float], notes: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "metric": list(values),
            "value": [float(v) for v in values.values()],
            "note": [notes.get(key, "") for key in values],
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
