"""The metric registry: presets, aggregates, and adding a metric in one place."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cite_bench import metrics
from cite_bench.evaluate import score_embedding
from cite_bench.metrics import (
    LABELS,
    METRICS,
    PRESETS,
    Metric,
    aggregate,
    display_name,
    isolated_label_f1,
    isolated_labels,
    select_metrics,
)
from cite_bench.reporting import format_metrics_table, tabulate_metrics
from cite_bench.reporting.figures import plot_metric_summary
from cite_bench.seeds import stack_seeds
from cite_bench.tracking import metric_values
from tests.builders import SCORING_PARAMS as PARAMS
from tests.builders import clustered_embedding as _embedding
from tests.builders import labelled_cells as _cells


def test_every_metric_is_described_once():
    assert len({metric.name for metric in METRICS.values()}) == len(METRICS)
    assert {metric.group for metric in METRICS.values()} == {"bio", "batch"}
    for metric in METRICS.values():
        assert metric.needs <= set(metrics.REQUIREMENTS)
        assert metric.compute.__doc__, f"{metric.key} needs a docstring saying what it measures"
    # The published table's five come first, in its order.
    assert list(METRICS)[:5] == list(PRESETS["published"])


def test_presets_and_lists_select_metrics():
    assert [m.key for m in select_metrics("scib")] == list(METRICS)
    assert "kbet" not in [m.key for m in select_metrics("fast")]
    assert [m.key for m in select_metrics(["nmi", "ari"])] == ["ari", "nmi"]  # registry order
    with pytest.raises(ValueError, match="unknown preset 'all'"):
        select_metrics("all")
    with pytest.raises(ValueError, match=r"unknown metrics \['nmi2'\]"):
        select_metrics(["nmi2"])


def test_aggregates_follow_scib_weights():
    values = {"ari": 0.8, "nmi": 0.6, "ilisi": 0.5, "kbet": 0.3}
    scores = aggregate(values, excluded={})
    assert scores["bio_conservation"][0] == pytest.approx(0.7)
    assert scores["batch_correction"][0] == pytest.approx(0.4)
    assert scores["overall"][0] == pytest.approx(0.6 * 0.7 + 0.4 * 0.4)


def test_a_failed_metric_counts_as_zero_and_an_excluded_one_not_at_all():
    values = {"ari": 0.8, "nmi": np.nan, "ilisi": 0.5, "kbet": np.nan}
    scores = aggregate(values, excluded={"kbet": "skipped: only one batch"})
    assert scores["bio_conservation"][0] == pytest.approx(0.4)  # (0.8 + 0) / 2
    assert "NMI could not be computed" in scores["bio_conservation"][1]
    assert scores["batch_correction"] == (0.5, "")


def test_a_metric_added_to_the_registry_reaches_table_tracking_and_figure(monkeypatch, columns):
    """Adding a metric is one function and one registry entry: scoring, the tables, the
    tracking keys and the summary figure pick it up with no other change."""

    def label_count_ratio(data) -> float:
        """Toy metric: distinct labels per 100 cells."""
        return len(set(data.labels)) / data.n_cells * 100

    toy = Metric("toy", "Toy ratio", "bio", label_count_ratio, frozenset({LABELS}))
    monkeypatch.setitem(metrics.METRICS, "toy", toy)
    monkeypatch.setitem(metrics.PRESETS, "toy_only", ("nmi", "toy"))
    params = {**PARAMS, "metrics": "toy_only"}
    cells = _cells()
    scored = score_embedding(_embedding(cells, 5), None, cells, params, columns)
    assert list(scored["metric"]) == ["nmi", "toy"]
    assert scored.set_index("metric").loc["toy", "value"] == pytest.approx(4 / 240 * 100)

    def method_scores(embedding: pd.DataFrame) -> pd.DataFrame:
        return score_embedding(embedding, None, cells, params, columns).assign(seed=0)

    table = tabulate_metrics(
        params,
        random_gaussian=method_scores(_embedding(cells, 0.0, seed=3)),
        cell_type_embedding=method_scores(_embedding(cells, 50)),
        totalvi=method_scores(_embedding(cells, 3)),
    )
    assert "| Toy ratio |" in format_metrics_table(table, params)
    logged = metric_values(table[table["method"] == "totalvi"])
    assert {"toy", "toy_scaled", "bio_conservation"} <= set(logged)
    figure = plot_metric_summary(table, params)
    labels = [tick.get_text() for tick in figure.get_axes()[0].get_xticklabels()]
    assert display_name("toy") in labels
    assert stack_seeds({}).empty


def test_a_metric_that_fails_numerically_is_reported_and_counts_as_zero(monkeypatch, columns):
    from cite_bench.metrics import MetricNotComputable

    def diverges(data) -> float:
        """Toy metric whose computation fails."""
        raise MetricNotComputable("the diffusion map did not converge")

    monkeypatch.setitem(
        metrics.METRICS, "ilisi", Metric("ilisi", "Graph iLISI", "batch", diverges, frozenset())
    )
    cells = _cells()
    params = {**PARAMS, "metrics": ["nmi", "ilisi"]}
    scored = score_embedding(_embedding(cells, 5), None, cells, params, columns)
    ilisi = scored.set_index("metric").loc["ilisi"]
    assert np.isnan(ilisi["value"])
    assert ilisi["note"] == "not computable: the diffusion map did not converge"
    table = tabulate_metrics(params, totalvi=scored.assign(seed=0)).set_index("metric")
    assert table.loc["batch_correction", "value"] == 0
    assert table.loc["batch_correction", "note"].startswith("incomplete: Graph iLISI")


def test_isolated_label_f1_is_the_best_cluster_match_over_resolutions():
    """A family function on plain arrays: label B is in one batch of two (isolated); a cluster
    holding B's three cells and one A cell has precision 3/4 and recall 1 (F1 6/7); a
    clustering that separates B exactly reaches 1, and the best resolution counts."""
    obs = pd.DataFrame(
        {
            "label": ["A", "A", "A", "A", "B", "B", "B"],
            "batch": ["1", "2", "1", "2", "1", "1", "1"],
        }
    )
    assert isolated_labels(obs, "label", "batch") == ["B"]
    loose = np.array([1, 1, 1, 0, 0, 0, 0])
    exact = np.array([1, 1, 1, 1, 0, 0, 0])
    assert isolated_label_f1(obs, "label", "batch", [loose]) == pytest.approx(6 / 7)
    assert isolated_label_f1(obs, "label", "batch", [loose, exact]) == pytest.approx(1.0)
    everywhere = obs.assign(batch=["1", "2"] * 3 + ["2"])
    assert everywhere.groupby("label")["batch"].nunique().min() == 2
    assert np.isnan(isolated_label_f1(everywhere, "label", "batch", [exact]))
