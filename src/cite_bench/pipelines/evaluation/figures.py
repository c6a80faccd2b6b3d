"""Figures people look at: a UMAP per model and a scib-style summary of all metrics."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cite_bench.pipelines.modelling.nodes import first_seed

from .nodes import AGGREGATES, BATCH_METRICS, BIO_METRICS, METRICS, summarise_over_seeds

# Enough distinguishable colours for BMMC's 45 cell types.
_PALETTE = [
    *plt.get_cmap("tab20").colors,
    *plt.get_cmap("tab20b").colors,
    *plt.get_cmap("tab20c").colors,
]


def compute_umap(embedding: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Two UMAP coordinates per cell from the kNN graph of the first seed's embedding (one
    picture per model; the spread over seeds is in the metrics)."""
    import anndata as ad
    import scanpy as sc

    embedding = first_seed(embedding)
    adata = ad.AnnData(obs=pd.DataFrame(index=embedding.index))
    adata.obsm["X_emb"] = embedding.to_numpy(dtype=np.float32)
    sc.pp.neighbors(
        adata, use_rep="X_emb", n_neighbors=params["n_neighbors"], random_state=params["seed"]
    )
    sc.tl.umap(adata, random_state=params["seed"])
    return pd.DataFrame(adata.obsm["X_umap"], index=embedding.index, columns=["umap_1", "umap_2"])


def plot_umaps(
    cells: pd.DataFrame, columns: dict[str, str], **umaps_by_model: pd.DataFrame
) -> Figure:
    """One row per model, coloured by cell type and by batch (columns that exist)."""
    keys = [columns[key] for key in ("label", "batch") if columns[key] in cells]
    n_cells = len(cells)
    point_size = float(np.clip(30_000 / max(n_cells, 1), 0.5, 20))
    figure, axes = plt.subplots(
        len(umaps_by_model),
        len(keys),
        figsize=(5.5 * len(keys) + 3, 4.5 * len(umaps_by_model)),
        squeeze=False,
        layout="constrained",
    )
    for row, (model, umap) in enumerate(umaps_by_model.items()):
        coordinates = umap.loc[cells.index].to_numpy()
        for column, key in enumerate(keys):
            axis = axes[row, column]
            values = cells[key].astype("category")
            colours = np.array(_PALETTE * (len(values.cat.categories) // len(_PALETTE) + 1))
            order = np.random.default_rng(0).permutation(n_cells)  # no batch drawn on top
            codes = values.cat.codes.to_numpy()[order]
            axis.scatter(
                *coordinates[order].T,
                s=point_size,
                c=[colours[code] if code >= 0 else (0.8, 0.8, 0.8) for code in codes],
                linewidths=0,
                rasterized=True,
            )
            axis.set(xticks=[], yticks=[], title=f"{model}: {key}")
            axis.set_xlabel("UMAP 1")
            axis.set_ylabel("UMAP 2")
            if row == 0:  # one legend per column is enough
                handles = [
                    plt.Line2D([], [], marker="o", ls="", color=colours[i], label=str(name))
                    for i, name in enumerate(values.cat.categories)
                ]
                axis.legend(
                    handles=handles,
                    loc="center left",
                    bbox_to_anchor=(1.0, 0.5),
                    fontsize=6 if len(handles) > 20 else 8,
                    ncol=int(np.ceil(len(handles) / 25)),
                    frameon=False,
                    markerscale=0.8,
                    handletextpad=0.1,
                )
    return figure


def plot_metric_summary(metrics: pd.DataFrame) -> Figure:
    """The scib results table as a figure: models ranked by the overall score, metrics grouped
    into bio conservation and batch correction as circles, the aggregates as bars. With
    several seeds, values are means and the standard deviation is printed under them."""
    summary = summarise_over_seeds(metrics)
    wide = summary.pivot(index="model", columns="metric", values="mean")
    wide = wide.sort_values("overall", ascending=False, na_position="last")
    spread = summary.pivot(index="model", columns="metric", values="sd").loc[wide.index]
    n_seeds = int(summary["n_seeds"].max())
    groups = [
        ("Bio conservation", [k for k in BIO_METRICS if k in wide]),
        ("Batch correction", [k for k in BATCH_METRICS if k in wide]),
        ("Aggregate scores", [k for k in AGGREGATES if k in wide]),
    ]
    columns = [key for _, keys in groups for key in keys]
    n_rows, n_columns = len(wide), len(columns)
    figure, axis = plt.subplots(
        figsize=(1.1 * n_columns + 3, 0.6 * n_rows + 2.2), layout="constrained"
    )
    colour_map = plt.get_cmap("viridis")
    for column, key in enumerate(columns):
        for row, (value, sd) in enumerate(zip(wide[key], spread[key], strict=True)):
            y = n_rows - 1 - row
            if np.isnan(value):
                axis.text(column, y, "n/a", ha="center", va="center", fontsize=8, color="grey")
                continue
            if key in AGGREGATES:
                axis.barh(y, value * 0.9, left=column - 0.45, height=0.5, color=colour_map(value))
            else:
                axis.scatter(column, y, s=80 + 520 * value, color=colour_map(value))
            label = f"{value:.2f}" + (f"±{sd:.2f}" if n_seeds > 1 else "")
            axis.text(column, y - 0.38, label, ha="center", va="center", fontsize=7)
    start = 0
    for title, keys in groups:
        if keys:
            axis.text(
                start + (len(keys) - 1) / 2, n_rows + 0.35, title, ha="center", fontweight="bold"
            )
            if start:
                axis.axvline(start - 0.5, color="black", linewidth=0.8)
            start += len(keys)
    axis.set_xticks(range(n_columns), [METRICS[key] for key in columns], rotation=45, ha="right")
    axis.set_yticks(range(n_rows), [f"{i + 1}. {m}" for i, m in enumerate(wide.index)][::-1])
    axis.set_xlim(-0.6, n_columns - 0.4)
    axis.set_ylim(-0.8, n_rows + 0.7)
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    seeds = f", mean ± SD over {n_seeds} seeds" if n_seeds > 1 else ""
    axis.set_title(f"Integration benchmark (ranked by overall score{seeds})", pad=24)
    return figure
