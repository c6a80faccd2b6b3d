"""Evaluation nodes on embeddings whose scores are known in advance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cite_bench.evaluate import score_embedding
from cite_bench.methods import METHODS
from cite_bench.metrics import AGGREGATES, METRICS, PRESETS
from cite_bench.pipelines.evaluation.nodes import compute_metrics
from cite_bench.reporting import (
    format_metrics_table,
    scale_by_controls,
    summarise_over_seeds,
    tabulate_metrics,
)
from tests.builders import CONTROLS
from tests.builders import SCORING_PARAMS as PARAMS
from tests.builders import clustered_embedding as _embedding
from tests.builders import labelled_cells as _cells


def _score(embedding: pd.DataFrame, cells: pd.DataFrame, columns) -> pd.DataFrame:
    """Score against a fixed random 'unintegrated' reference."""
    rng = np.random.default_rng(1)
    unintegrated = pd.DataFrame(rng.normal(size=(len(cells), 10)), index=cells.index)
    return score_embedding(embedding, unintegrated, cells, PARAMS, columns)


def _stacked(frames: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Embeddings by seed, stacked as the modelling pipeline writes them."""
    return pd.concat(frames, names=["seed"])


def test_separated_types_score_near_one(columns):
    cells = _cells()
    metrics = _score(_embedding(cells, separation=20), cells, columns)
    values = dict(zip(metrics["metric"], metrics["value"], strict=True))
    assert list(values) == list(METRICS)  # registry order, no aggregates per embedding
    assert values["ari"] > 0.99 and values["nmi"] > 0.99
    assert values["graph_connectivity"] == pytest.approx(1.0)
    assert values["asw_label"] > 0.8
    assert values["clisi"] > 0.99
    # Batches are spread evenly over types: well mixed.
    assert values["ilisi"] > 0.7 and values["asw_batch"] > 0.8


def test_random_embedding_scores_low(columns):
    cells = _cells()
    rng = np.random.default_rng(0)
    noise = pd.DataFrame(rng.normal(size=(len(cells), 10)), index=cells.index)
    values = _score(noise, cells, columns).set_index("metric")["value"]
    assert values["ari"] < 0.1 and values["nmi"] < 0.2
    assert values["asw_label"] < 0.55
    assert np.isnan(values["isolated_label_asw"])  # every label is in both batches
    assert np.isnan(values["isolated_label_f1"])
    scored = values.dropna()
    assert ((scored >= 0) & (scored <= 1)).all()


def test_isolated_label_asw_is_scored_when_a_label_is_in_one_batch(columns):
    cells = _cells()
    cells.loc[cells["cell_type"] == "type3", "batch"] = "s1d1"
    values = _score(_embedding(cells, 20), cells, columns)
    iso = values.set_index("metric").loc["isolated_label_asw", "value"]
    assert 0.5 < iso <= 1.0


def test_every_seed_is_scored_against_the_first_seed_of_the_baseline(columns):
    cells = _cells()
    embedding = _stacked({3: _embedding(cells, 20, seed=0), 7: _embedding(cells, 0.3, seed=1)})
    rng = np.random.default_rng(1)
    unintegrated = _stacked({0: pd.DataFrame(rng.normal(size=(len(cells), 10)), index=cells.index)})
    metrics = compute_metrics(
        METHODS["totalvi"], embedding, unintegrated, cells, PARAMS, columns, [3, 7], CONTROLS
    )
    assert list(metrics.columns) == ["seed", "metric", "value", "note"]
    assert metrics.groupby("seed").size().to_dict() == {3: len(METRICS), 7: len(METRICS)}
    nmi = metrics[metrics["metric"] == "nmi"].set_index("seed")["value"]
    assert nmi[3] > 0.95 > nmi[7]  # each seed's own embedding was scored
    alone = score_embedding(embedding.loc[3], unintegrated.loc[0], cells, PARAMS, columns)
    pd.testing.assert_series_equal(
        metrics[metrics["seed"] == 3]["value"].reset_index(drop=True), alone["value"]
    )


def test_cell_cycle_is_scored_where_a_phase_column_exists(columns):
    cells = _cells()
    metrics = _score(_embedding(cells, 20), cells, columns).set_index("metric")
    assert np.isnan(metrics.loc["cell_cycle", "value"])
    assert metrics.loc["cell_cycle", "note"] == "skipped: no cell-cycle phase column 'phase' in obs"
    cells["phase"] = np.random.default_rng(0).choice(["G1", "S", "G2M"], len(cells))
    metrics = _score(_embedding(cells, 20), cells, columns).set_index("metric")
    assert 0 <= metrics.loc["cell_cycle", "value"] <= 1


def test_without_labels_every_label_metric_is_skipped_with_the_reason(columns):
    cells = _cells().drop(columns="cell_type")
    metrics = _score(_embedding(_cells(), 5), cells, columns).set_index("metric")
    label_free = ["ilisi", "pcr_comparison"]
    assert metrics.loc[label_free, "value"].notna().all()
    needs_labels = metrics.drop(index=[*label_free, "cell_cycle"])  # no phase column either
    assert needs_labels["value"].isna().all()
    assert needs_labels["note"].str.contains("no cell-type labels").all()


def test_unlabelled_cells_are_left_out_and_said_so(columns):
    cells = _cells()
    cells["cell_type"] = cells["cell_type"].astype(object)
    cells.iloc[:30, cells.columns.get_loc("cell_type")] = None
    cells["cell_type"] = cells["cell_type"].astype("category")
    metrics = _score(_embedding(cells, 20), cells, columns)
    values = metrics.set_index("metric")
    assert values.loc["nmi", "value"] > 0.95
    assert values.loc["nmi", "note"] == "on the 210 of 240 cells with a label"


def test_one_batch_skips_batch_metrics_with_the_reason(columns):
    cells = _cells(n_batches=1)
    metrics = _score(_embedding(cells, 20), cells, columns).set_index("metric")
    for key in ("graph_connectivity", "asw_batch", "ilisi", "kbet", "pcr_comparison"):
        assert np.isnan(metrics.loc[key, "value"])
        assert metrics.loc[key, "note"] == "skipped: only one batch in 'batch'"
    assert metrics.loc["nmi", "value"] > 0.95


def test_constant_dimensions_are_ignored(columns):
    """MOFA can switch a factor off entirely; a constant column must not break any metric."""
    cells = _cells()
    embedding = _embedding(cells, 20)
    embedding["latent_9"] = 0.0
    metrics = _score(embedding, cells, columns).set_index("metric")
    assert np.isfinite(metrics.loc["pcr_comparison", "value"])
    assert metrics.loc["nmi", "value"] > 0.95


def test_the_reference_is_not_scored_against_itself(columns):
    cells = _cells()
    cells["phase"] = np.random.default_rng(0).choice(["G1", "S", "G2M"], len(cells))
    embedding = _stacked({0: _embedding(cells, 5)})
    own = compute_metrics(
        METHODS["pca_rna"], embedding, embedding, cells, PARAMS, columns, [0], CONTROLS
    ).set_index("metric")
    for key in ("pcr_comparison", "cell_cycle"):
        assert np.isnan(own.loc[key, "value"])
        assert "unintegrated reference" in own.loc[key, "note"]
    other = compute_metrics(
        METHODS["pca_rna_adt"], embedding, embedding, cells, PARAMS, columns, [0], CONTROLS
    ).set_index("metric")
    assert other.loc[["pcr_comparison", "cell_cycle"], "value"].notna().all()


def test_a_skipped_method_gets_every_metric_as_not_applicable(columns):
    cells = _cells().drop(columns="cell_type")
    empty = pd.DataFrame(index=pd.MultiIndex.from_arrays([[], []], names=["seed", "barcode"]))
    metrics = compute_metrics(
        METHODS["cell_type_embedding"], empty, empty, cells, PARAMS, columns, [0, 1], CONTROLS
    )
    assert len(metrics) == 2 * len(METRICS)
    assert metrics["value"].isna().all()
    assert metrics["note"].str.contains("skipped: needs cell-type labels").all()


def test_metric_presets_choose_what_runs(columns):
    cells = _cells()
    fast = score_embedding(
        _embedding(cells, 5), None, cells, {**PARAMS, "metrics": "fast"}, columns
    )
    assert list(fast["metric"]) == list(PRESETS["fast"])
    assert not {"kbet", "ilisi", "clisi"} & set(fast["metric"])
    published = score_embedding(
        _embedding(cells, 5), None, cells, {**PARAMS, "metrics": "published"}, columns
    )
    assert list(published["metric"]) == list(PRESETS["published"])


def _rows(method: str, values: dict[str, float], seed: int = 0, note: str = "") -> pd.DataFrame:
    return pd.DataFrame(
        {"seed": seed, "metric": list(values), "value": list(values.values()), "note": note}
    )


def _benchmark_table(**more: pd.DataFrame) -> pd.DataFrame:
    """Raw scores of two controls, a baseline and two methods on two metrics."""
    frames = {
        "random_gaussian": _rows("random_gaussian", {"nmi": 0.1, "ilisi": 0.9}),
        "cell_type_embedding": _rows("cell_type_embedding", {"nmi": 0.9, "ilisi": 0.5}),
        "pca_rna": _rows("pca_rna", {"nmi": 0.5, "ilisi": 0.1}),
        "totalvi": _rows("totalvi", {"nmi": 0.7, "ilisi": 0.5}),
        "mofa": _rows("mofa", {"nmi": 0.3, "ilisi": 0.3}),
        **more,
    }
    return tabulate_metrics(PARAMS, **frames)


def test_scores_are_scaled_between_the_worst_and_best_control():
    table = _benchmark_table()
    scaled = table.pivot(index="metric", columns="method", values="scaled")
    # nmi: controls span 0.1 (random) .. 0.9 (labels); ilisi: 0.1 (pca_rna) .. 0.9 (random).
    assert scaled.loc["nmi", "totalvi"] == pytest.approx(0.75)
    assert scaled.loc["nmi", "random_gaussian"] == pytest.approx(0)
    assert scaled.loc["nmi", "cell_type_embedding"] == pytest.approx(1)
    assert scaled.loc["ilisi", "mofa"] == pytest.approx(0.25)
    raw = table.pivot(index="metric", columns="method", values="value")
    assert raw.loc["nmi", "totalvi"] == pytest.approx(0.7)  # the raw value is kept
    roles = table.drop_duplicates("method").set_index("method")["role"]
    assert roles["random_gaussian"] == "control" and roles["totalvi"] == "integrated"
    # Aggregates of both: bio = nmi, batch = ilisi here.
    assert raw.loc["overall", "totalvi"] == pytest.approx(0.6 * 0.7 + 0.4 * 0.5)
    assert scaled.loc["overall", "totalvi"] == pytest.approx(0.6 * 0.75 + 0.4 * 0.5)


def test_uninformative_and_far_outside_scaled_values_are_reported():
    table = pd.DataFrame(
        {
            "method": ["random_gaussian", "cell_type_embedding", "totalvi", "mofa"],
            "role": ["control", "control", "integrated", "integrated"],
            "seed": 0,
            "metric": "nmi",
            "value": [0.5, 0.505, 0.9, 0.2],
            "note": "",
        }
    )
    flat = scale_by_controls(table, PARAMS["scaling"])
    assert flat["scaled"].isna().all()  # no division by a near-zero range
    assert flat["scaled_note"].str.startswith("uninformative: the controls differ by").all()
    spread = table.assign(value=[0.4, 0.6, 0.9, 0.45])
    scaled = scale_by_controls(spread, PARAMS["scaling"]).set_index("method")
    assert scaled.loc["totalvi", "scaled"] == pytest.approx(2.5)
    assert scaled.loc["totalvi", "scaled_note"].startswith("flagged: scaled value 2.50")
    assert scaled.loc["mofa", "scaled_note"] == ""


def test_aggregates_leave_out_what_does_not_apply_and_never_reward_failure():
    skipped = _rows("mofa", {"nmi": 0.3, "ilisi": np.nan})
    skipped.loc[1, "note"] = "skipped: only one batch in 'batch'"
    failed = _rows("multigrate", {"nmi": 0.3, "ilisi": np.nan})
    failed.loc[1, "note"] = "not computable on this embedding"
    table = _benchmark_table(mofa=skipped, multigrate=failed)
    rows = table.set_index(["method", "metric"])
    assert np.isnan(rows.loc[("mofa", "batch_correction"), "value"])
    assert rows.loc[("mofa", "batch_correction"), "note"].startswith("skipped")
    assert rows.loc[("multigrate", "batch_correction"), "value"] == 0
    note = rows.loc[("multigrate", "batch_correction"), "note"]
    assert note == "incomplete: Graph iLISI could not be computed and count as 0"
    assert rows.loc[("multigrate", "overall"), "note"] == note


def test_markdown_shows_scaled_and_raw_scores_ranked_with_controls_last():
    markdown = format_metrics_table(_benchmark_table(), PARAMS)
    scaled, raw = markdown.split("### Raw scores")
    assert scaled.startswith("### Scaled scores (0 = worst control, 1 = best control)")
    # Methods by overall score, then the controls, likewise.
    header = "| Metric | totalvi | pca_rna | mofa | cell_type_embedding | random_gaussian |"
    assert header in scaled and header in raw
    # Controls are never the best: totalvi's 0.7 is bold, the labels' 0.9 is not.
    assert "| NMI | **0.700** | 0.500 | 0.300 | 0.900 | 0.100 |" in raw
    assert "Methods ranked by the overall scaled score" in markdown
    ranked_raw = format_metrics_table(_benchmark_table(), {**PARAMS, "rank_by": "raw"})
    assert ranked_raw.index("### Raw scores") < ranked_raw.index("### Scaled scores")


def test_several_seeds_give_mean_and_standard_deviation():
    frames = {
        "random_gaussian": pd.concat(
            [_rows("r", {"nmi": 0.1}, seed=0), _rows("r", {"nmi": 0.1}, seed=1)]
        ),
        "cell_type_embedding": pd.concat(
            [_rows("c", {"nmi": 0.9}, seed=0), _rows("c", {"nmi": 0.9}, seed=1)]
        ),
        "mofa": pd.concat([_rows("m", {"nmi": 0.5}, seed=0), _rows("m", {"nmi": 0.7}, seed=1)]),
    }
    table = tabulate_metrics(PARAMS, **frames)
    summary = summarise_over_seeds(table).set_index(["method", "metric"])
    assert summary.loc[("mofa", "nmi"), "mean"] == pytest.approx(0.6)
    assert summary.loc[("mofa", "nmi"), "sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert summary.loc[("mofa", "nmi"), "scaled_mean"] == pytest.approx(0.625)
    assert summary.loc[("cell_type_embedding", "nmi"), "sd"] == 0
    markdown = format_metrics_table(table, PARAMS)
    assert "| NMI | **0.600 ± 0.141** | 0.100 ± 0.000 | 0.900 ± 0.000 |" in markdown
    assert "Mean ± standard deviation over seeds 0, 1." in markdown


def test_markdown_names_why_values_are_missing():
    skipped = _rows("mofa", {"nmi": 0.3, "ilisi": np.nan})
    skipped.loc[1, "note"] = "skipped: only one batch in 'batch'"
    markdown = format_metrics_table(_benchmark_table(mofa=skipped), PARAMS)
    assert "- Graph iLISI: skipped: only one batch in 'batch' [mofa]" in markdown
    assert "| Graph iLISI |" in markdown and "n/a" in markdown
    assert set(AGGREGATES) <= set(_benchmark_table()["metric"])
