"""Figures: the right panels, legends that hold many cell types, models ranked as the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cite_bench.reporting.figures import (
    compute_umap,
    plot_matrix_summary,
    plot_metric_summary,
    plot_umaps,
)
from tests.builders import summary_table as _summary_table


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
    rng = np.random.default_rng(1)
    embedding = pd.concat(
        {seed: pd.DataFrame(rng.normal(size=(200, 8)), index=cells.index) for seed in (4, 5)},
        names=["seed"],
    )
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


PARAMS = {"rank_by": "scaled"}


def test_summary_figure_ranks_methods_by_overall_score_with_controls_apart():
    figure = plot_metric_summary(_summary_table(), PARAMS)
    axis = figure.get_axes()[0]
    labels = [tick.get_text() for tick in axis.get_yticklabels()]
    # Drawn bottom-up: the control below the methods, whatever its score; best method on top.
    assert labels == ["random_gaussian (control)", "3. a", "2. c", "1. b"]
    assert axis.get_yticklabels()[0].get_color() == "grey"
    texts = [text.get_text() for text in axis.texts]
    assert "n/a" in texts and "Batch correction" in texts
    assert not any("±" in text for text in texts)
    assert "scaled scores: 0 = worst control, 1 = best control" in axis.get_title()


def test_summary_figure_shows_the_spread_over_seeds():
    figure = plot_metric_summary(_summary_table(seeds=(0, 1, 2)), PARAMS)
    texts = [text.get_text() for text in figure.get_axes()[0].texts]
    assert "0.82±0.02" in texts  # b's overall: 0.80, 0.82, 0.84
    assert "0.70±0.00" in texts
    assert "3 seeds" in figure.get_axes()[0].get_title()


def test_summary_figure_falls_back_to_raw_scores_without_controls():
    table = _summary_table().assign(scaled=np.nan)
    title = plot_metric_summary(table, PARAMS).get_axes()[0].get_title()
    assert "raw scores" in title


def test_matrix_figure_shows_each_datasets_aggregates_with_methods_ranked_across_them():
    first, second = _summary_table((0, 1)), _summary_table((0, 1))
    second.loc[second["method"] == "a", ["value", "scaled"]] += 0.8  # a is best on the second
    combined = pd.concat([first.assign(dataset="demo"), second.assign(dataset="starter")])
    figure = plot_matrix_summary(combined, "scaled")
    axis = figure.get_axes()[0]
    labels = [tick.get_text() for tick in axis.get_yticklabels()]
    # Mean overall across datasets: a (0.51, 1.31) > b (0.81, 0.81) > c; drawn bottom-up.
    assert labels == ["random_gaussian (control)", "3. c", "2. b", "1. a"]
    titles = {text.get_text() for text in axis.texts}
    assert {"demo", "starter"} <= titles
    assert len(axis.get_xticklabels()) == 2 * 3  # three aggregates per dataset
    figure.canvas.draw()
