"""Figures: the right panels, legends that hold many cell types, models ranked as the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cite_bench.pipelines.evaluation.figures import compute_umap, plot_metric_summary, plot_umaps
from cite_bench.pipelines.evaluation.nodes import METRICS


def _cells(n_cells: int = 900, n_types: int = 45) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type {i % n_types}" for i in range(n_cells)]),
            "batch": pd.Categorical(rng.choice(["s1d1", "s1d2", "s2d1"], n_cells)),
        },
        index=[f"c{i}" for i in range(n_cells)],
    )


def test_umap_has_two_coordinates_per_cell():
    cells = _cells(200)
    embedding = pd.DataFrame(np.random.default_rng(1).normal(size=(200, 8)), index=cells.index)
    umap = compute_umap(embedding, {"n_neighbors": 10, "seed": 0})
    assert umap.shape == (200, 2)
    assert list(umap.index) == list(cells.index)
    assert np.isfinite(umap.to_numpy()).all()


def test_umap_figure_has_a_panel_per_model_and_key_and_all_legend_entries(columns):
    cells = _cells()
    rng = np.random.default_rng(2)
    umaps = {
        model: pd.DataFrame(rng.normal(size=(len(cells), 2)), index=cells.index)
        for model in ("mofa", "totalvi", "pca_rna")
    }
    figure = plot_umaps(cells, columns, **umaps)
    assert isinstance(figure, Figure)
    axes = figure.get_axes()
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:2]] == ["mofa: cell_type", "mofa: batch"]
    legend = axes[0].get_legend()
    assert len(legend.get_texts()) == 45  # every cell type is named
    assert len(axes[1].get_legend().get_texts()) == 3
    figure.canvas.draw()  # renders without error


def test_summary_figure_ranks_models_by_overall_score():
    rows = []
    for model, overall in (("a", 0.5), ("b", 0.8), ("c", 0.6)):
        for metric in METRICS:
            value = overall if metric == "overall" else 0.7
            rows.append({"model": model, "metric": metric, "value": value, "note": ""})
    rows.append({"model": "c", "metric": "kbet", "value": np.nan, "note": "skipped"})
    table = pd.DataFrame(rows).drop_duplicates(["model", "metric"], keep="last")
    figure = plot_metric_summary(table)
    labels = [tick.get_text() for tick in figure.get_axes()[0].get_yticklabels()]
    assert labels == ["3. a", "2. c", "1. b"]  # drawn bottom-up: best on top
    texts = [text.get_text() for text in figure.get_axes()[0].texts]
    assert "n/a" in texts and "Batch correction" in texts
