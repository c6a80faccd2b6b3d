"""Figures people look at: a UMAP per model, a scib-style summary of all metrics, and the
benchmark matrix's aggregates across datasets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cite_bench.methods import role_of
from cite_bench.metrics import AGGREGATES, GROUPS, METRICS, display_name
from cite_bench.outputs import MethodOutput
from cite_bench.seeds import first_seed, stack_seeds

from .tables import ranked_methods, ranking_column, summarise_matrix, summarise_over_seeds

# Enough distinguishable colours for BMMC's 45 cell types.
_PALETTE = [
    *plt.get_cmap("tab20").colors,
    *plt.get_cmap("tab20b").colors,
    *plt.get_cmap("tab20c").colors,
]


def compute_umap(embedding: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Two UMAP coordinates per cell from the kNN graph of the first seed's embedding, or from
    the method's own graph for a graph-output method (one picture per method; the spread over
    seeds is in the metrics)."""
    import scanpy as sc

    frame = first_seed(embedding)
    adata = MethodOutput.of(frame).knn_anndata(params["n_neighbors"], params["seed"])
    sc.tl.umap(adata, random_state=params["seed"])
    return pd.DataFrame(adata.obsm["X_umap"], index=frame.index, columns=["umap_1", "umap_2"])


def compute_umaps(
    embeddings: Mapping[str, pd.DataFrame], params: Mapping[str, Any]
) -> dict[str, pd.DataFrame]:
    """``compute_umap`` of each of several embeddings (indexed by barcode), e.g. external ones."""
    return {
        name: compute_umap(stack_seeds({0: frame}), params) for name, frame in embeddings.items()
    }


def plot_umaps(
    cells: pd.DataFrame,
    columns: Mapping[str, str],
    external_umaps: Mapping[str, pd.DataFrame] | None = None,
    **umaps_by_model: pd.DataFrame,
) -> Figure:
    """One row per method (external ones last), coloured by cell type and by batch (columns
    that exist)."""
    umaps_by_model = {**umaps_by_model, **(external_umaps or {})}
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


def plot_metric_summary(metrics: pd.DataFrame, params: Mapping[str, Any]) -> Figure:
    """The scib results table as a figure: methods ranked by the overall score (scaled
    between controls, or raw: ``rank_by``), the controls apart below them in grey, metrics
    grouped into bio conservation and batch correction as circles, the aggregates as bars.
    With several seeds, values are means and the standard deviation is printed under them."""
    summary = summarise_over_seeds(metrics)
    column = ranking_column(summary, params["rank_by"])
    spread_column = "scaled_sd" if column == "scaled_mean" else "sd"
    order = ranked_methods(summary, params["rank_by"])
    wide = summary.pivot(index="method", columns="metric", values=column).loc[order]
    spread = summary.pivot(index="method", columns="metric", values=spread_column).loc[order]
    n_seeds = int(summary["n_seeds"].max())
    groups = [
        *(
            (title, [k for k, m in METRICS.items() if m.group == group and k in wide])
            for group, title in GROUPS.items()
        ),
        ("Aggregate scores", [k for k in AGGREGATES if k in wide]),
    ]
    columns = [key for _, keys in groups for key in keys]
    n_rows, n_columns = len(wide), len(columns)
    is_control = [role_of(method) == "control" for method in wide.index]
    figure, axis = plt.subplots(
        figsize=(1.1 * n_columns + 3.5, 0.6 * n_rows + 2.4), layout="constrained"
    )
    _draw_scores(axis, wide[columns], spread[columns], is_control, n_seeds)
    start = 0
    for title, keys in groups:
        if keys:
            axis.text(
                start + (len(keys) - 1) / 2, n_rows + 0.35, title, ha="center", fontweight="bold"
            )
            if start:
                axis.axvline(start - 0.5, color="black", linewidth=0.8)
            start += len(keys)
    _label_methods(axis, list(wide.index), is_control)
    _label_columns(axis, [display_name(key) for key in columns], n_rows)
    kind = (
        "scaled scores: 0 = worst control, 1 = best control"
        if column == "scaled_mean"
        else "raw scores"
    )
    seeds = f"; mean ± SD over {n_seeds} seeds" if n_seeds > 1 else ""
    axis.set_title(f"Integration benchmark, ranked by overall score ({kind}{seeds})", pad=24)
    return figure


def _draw_scores(
    axis: Any, wide: pd.DataFrame, spread: pd.DataFrame, is_control: list[bool], n_seeds: int
) -> None:
    """Metrics as circles and aggregates as bars, sized and coloured by the value (clipped to
    [0, 1]: scaled values can leave it); controls paler."""
    colour_map = plt.get_cmap("viridis")
    n_rows = len(wide)
    for column, key in enumerate(wide.columns):
        for row, (value, sd) in enumerate(zip(wide[key], spread[key], strict=True)):
            y = n_rows - 1 - row
            if np.isnan(value):
                axis.text(column, y, "n/a", ha="center", va="center", fontsize=8, color="grey")
                continue
            shown = float(np.clip(value, 0, 1))
            style = {"color": colour_map(shown), "alpha": 0.45 if is_control[row] else 1.0}
            if key in AGGREGATES:
                axis.barh(y, shown * 0.9, left=column - 0.45, height=0.5, **style)
            else:
                axis.scatter(column, y, s=80 + 520 * shown, **style)
            label = f"{value:.2f}" + (f"±{sd:.2f}" if n_seeds > 1 else "")
            axis.text(column, y - 0.38, label, ha="center", va="center", fontsize=7)


def _label_columns(axis: Any, names: list[str], n_rows: int) -> None:
    """Metric names under the columns, no frame."""
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_xlim(-0.6, len(names) - 0.4)
    axis.set_ylim(-0.8, n_rows + 0.7)
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)


def _label_methods(axis: Any, methods: list[str], is_control: list[bool]) -> None:
    """Methods numbered by rank, controls in grey below a dashed line."""
    n_rows, n_controls = len(methods), sum(is_control)
    if 0 < n_controls < n_rows:
        axis.axhline(n_controls - 0.5, color="grey", linewidth=0.8, linestyle="--")
    labels, rank = [], 0
    for method, control in zip(methods, is_control, strict=True):
        if control:
            labels.append(f"{method} (control)")
        else:
            rank += 1
            labels.append(f"{rank}. {method}")
    axis.set_yticks(range(n_rows), labels[::-1])
    for tick, control in zip(axis.get_yticklabels(), is_control[::-1], strict=True):
        tick.set_color("grey" if control else "black")


def plot_matrix_summary(combined: pd.DataFrame, rank_by: str) -> Figure:
    """The benchmark matrix at a glance: each method's aggregate scores (mean over seeds) on
    each dataset, methods ranked by their mean overall score across datasets, controls apart
    below them in grey. Scaled scores where every dataset has controls, raw ones otherwise."""
    matrix = summarise_matrix(combined, rank_by)
    column, order = matrix.column, matrix.order
    aggregates = [key for key in AGGREGATES if (combined["metric"] == key).any()]
    wide = pd.concat(
        {
            (dataset, key): summary[summary["metric"] == key].set_index("method")[column]
            for dataset, summary in matrix.summaries.items()
            for key in aggregates
        },
        axis=1,
    ).loc[order]
    is_control = [role_of(method) == "control" for method in order]
    n_rows, n_columns = wide.shape
    figure, axis = plt.subplots(
        figsize=(1.2 * n_columns + 3.5, 0.5 * n_rows + 2.4), layout="constrained"
    )
    _draw_scores(axis, wide, wide * 0, is_control, n_seeds=1)
    for start in range(0, n_columns, len(aggregates)):
        dataset = wide.columns[start][0]
        middle = start + (len(aggregates) - 1) / 2
        axis.text(middle, n_rows + 0.35, dataset, ha="center", fontweight="bold")
        if start:
            axis.axvline(start - 0.5, color="black", linewidth=0.8)
    _label_methods(axis, order, is_control)
    _label_columns(axis, [display_name(key) for _, key in wide.columns], n_rows)
    scaled = column == "scaled_mean"
    kind = "scaled: 0 = worst control, 1 = best control" if scaled else "raw scores"
    axis.set_title(f"Aggregate scores per dataset\n({kind}; means over seeds)", pad=28)
    return figure
