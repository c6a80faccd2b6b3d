"""Evaluation nodes on embeddings whose scores are known in advance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cite_bench.pipelines.evaluation.nodes import (
    BATCH_METRICS,
    BIO_METRICS,
    METRICS,
    aggregate_scores,
    cell_cycle_conservation,
    collect_metrics,
    compute_metrics,
    embedding_anndata,
    format_metrics_table,
    isolated_label_f1,
    leiden_arguments,
    leiden_clusterings,
    score_embedding,
    summarise_over_seeds,
)

PARAMS = {
    "n_neighbors": 15,
    "lisi_neighbors": 30,
    "seed": 0,
    "leiden_resolutions": [0.1, 2.0, 5],
    "leiden_flavor": "igraph",
}


def _cells(n_types: int = 4, per_type: int = 60, n_batches: int = 2) -> pd.DataFrame:
    labels = np.repeat([f"type{i}" for i in range(n_types)], per_type)
    batches = np.tile([f"s1d{j + 1}" for j in range(n_batches)], n_types * per_type // n_batches)
    index = [f"cell{i}" for i in range(labels.size)]
    return pd.DataFrame(
        {"cell_type": pd.Categorical(labels), "batch": pd.Categorical(batches)}, index=index
    )


def _embedding(cells: pd.DataFrame, separation: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    codes = cells["cell_type"].cat.codes.to_numpy()
    centres = rng.normal(0, 1, (codes.max() + 1, 10)) * separation
    values = centres[codes] + rng.normal(0, 1, (codes.size, 10))
    return pd.DataFrame(values, index=cells.index, columns=[f"latent_{i}" for i in range(10)])


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
    assert list(values) == list(METRICS)
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


def test_embedding_must_match_the_cells(columns):
    cells = _cells()
    embedding = _embedding(cells, 5).iloc[:-3]
    with pytest.raises(ValueError, match="same cells"):
        embedding_anndata(embedding, cells)
    broken = _embedding(cells, 5)
    broken.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embedding_anndata(broken, cells)


def test_every_seed_is_scored_against_the_first_seed_of_the_baseline(columns):
    cells = _cells()
    embedding = _stacked({3: _embedding(cells, 20, seed=0), 7: _embedding(cells, 0.3, seed=1)})
    rng = np.random.default_rng(1)
    unintegrated = _stacked({0: pd.DataFrame(rng.normal(size=(len(cells), 10)), index=cells.index)})
    metrics = compute_metrics(embedding, unintegrated, cells, PARAMS, columns)
    assert list(metrics.columns) == ["seed", "metric", "value", "note"]
    assert metrics.groupby("seed").size().to_dict() == {3: len(METRICS), 7: len(METRICS)}
    nmi = metrics[metrics["metric"] == "nmi"].set_index("seed")["value"]
    assert nmi[3] > 0.95 > nmi[7]  # each seed's own embedding was scored
    alone = score_embedding(embedding.loc[3], unintegrated.loc[0], cells, PARAMS, columns)
    pd.testing.assert_series_equal(
        metrics[metrics["seed"] == 3]["value"].reset_index(drop=True), alone["value"]
    )


def test_cell_cycle_conservation_rewards_keeping_the_phase_signal():
    rng = np.random.default_rng(0)
    n = 600
    phases = pd.Series(rng.choice(["G1", "S", "G2M"], n))
    batches = np.repeat(["s1d1", "s1d2"], n // 2)
    codes = phases.astype("category").cat.codes.to_numpy()
    signal = np.eye(3)[codes] * 3
    unintegrated = np.hstack([signal, rng.normal(size=(n, 7))])
    kept = np.hstack([signal, rng.normal(size=(n, 7))])
    lost = rng.normal(size=(n, 10))
    assert cell_cycle_conservation(kept, unintegrated, phases, batches) > 0.9
    assert cell_cycle_conservation(lost, unintegrated, phases, batches) < 0.2
    one_phase = pd.Series(["G1"] * n)
    assert np.isnan(cell_cycle_conservation(kept, unintegrated, one_phase, batches))


def test_cell_cycle_is_scored_where_a_phase_column_exists(columns):
    cells = _cells()
    metrics = _score(_embedding(cells, 20), cells, columns).set_index("metric")
    assert np.isnan(metrics.loc["cell_cycle", "value"])
    assert metrics.loc["cell_cycle", "note"] == "skipped: no cell-cycle phase column 'phase' in obs"
    cells["phase"] = np.random.default_rng(0).choice(["G1", "S", "G2M"], len(cells))
    metrics = _score(_embedding(cells, 20), cells, columns).set_index("metric")
    assert 0 <= metrics.loc["cell_cycle", "value"] <= 1


def test_table_and_markdown_layout():
    metric_rows = pd.DataFrame(
        {"seed": 0, "metric": list(METRICS)[:5], "value": [0.5, 0.6, 0.7, 0.8, 0.9], "note": ""}
    )
    better = metric_rows.assign(value=metric_rows["value"] + 0.05)
    table = collect_metrics(mofa=metric_rows, totalvi=better)
    assert list(table.columns) == ["model", "seed", "metric", "value", "note"]
    assert len(table) == 10
    markdown = format_metrics_table(table)
    lines = markdown.strip().splitlines()
    assert lines[0] == "| Metric | mofa | totalvi |"
    assert lines[2] == "| ARI | 0.500 | **0.550** |"
    assert len(lines) == 2 + 5


def test_several_seeds_give_mean_and_standard_deviation():
    rows = [
        {"model": model, "seed": seed, "metric": "nmi", "value": value, "note": ""}
        for model, values in (("mofa", [0.5, 0.7]), ("totalvi", [0.8, 0.8]))
        for seed, value in zip((0, 1), values, strict=True)
    ]
    table = pd.DataFrame(rows)
    summary = summarise_over_seeds(table).set_index("model")
    assert summary.loc["mofa", "mean"] == pytest.approx(0.6)
    assert summary.loc["mofa", "sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert summary.loc["totalvi", "sd"] == 0
    assert (summary["n_seeds"] == 2).all()
    markdown = format_metrics_table(table)
    assert "| NMI | 0.600 ± 0.141 | **0.800 ± 0.000** |" in markdown
    assert "Mean ± standard deviation over seeds 0, 1." in markdown
    single = format_metrics_table(table[table["seed"] == 0])
    assert "| NMI | 0.500 | **0.800** |" in single and "±" not in single


def test_markdown_shows_missing_values_as_na():
    table = pd.DataFrame(
        {
            "model": ["a", "b"],
            "seed": [0, 0],
            "metric": ["isolated_label_asw"] * 2,
            "value": [np.nan, np.nan],
            "note": ["skipped: no isolated label"] * 2,
        }
    )
    markdown = format_metrics_table(table)
    assert "| Isolated label ASW | n/a | n/a |" in markdown
    assert "- Isolated label ASW: skipped: no isolated label" in markdown


def test_without_labels_every_label_metric_is_skipped_with_the_reason(columns):
    cells = _cells().drop(columns="cell_type")
    metrics = _score(_embedding(_cells(), 5), cells, columns).set_index("metric")
    label_free = ["ilisi", "pcr_comparison", "batch_correction"]
    assert metrics.loc[label_free, "value"].notna().all()
    needs_labels = metrics.drop(index=[*label_free, "overall"])
    assert needs_labels["value"].isna().all()
    skipped = needs_labels.drop(index=["bio_conservation", "cell_cycle"])  # label-free
    assert skipped["note"].str.contains("no cell-type labels").all()


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
    for key in ("asw_batch", "ilisi", "kbet", "pcr_comparison"):
        assert np.isnan(metrics.loc[key, "value"])
        assert metrics.loc[key, "note"] == "skipped: only one batch in 'batch'"
    assert metrics.loc["graph_connectivity", "value"] == pytest.approx(1.0)


def test_aggregates_follow_scib_weights():
    values = dict.fromkeys([*BIO_METRICS, *BATCH_METRICS], np.nan)
    values.update(ari=0.8, nmi=0.6, ilisi=0.5, kbet=0.3)
    scores = aggregate_scores(values)
    assert scores["bio_conservation"] == pytest.approx(0.7)
    assert scores["batch_correction"] == pytest.approx(0.4)
    assert scores["overall"] == pytest.approx(0.6 * 0.7 + 0.4 * 0.4)


def test_isolated_label_f1_matches_scib(columns):
    """With leidenalg, the one-clustering-per-resolution F1 equals scib's own."""
    import scanpy as sc
    import scib

    cells = _cells()
    cells.loc[cells["cell_type"] == "type3", "batch"] = "s1d1"
    adata = embedding_anndata(_embedding(cells, 3, seed=2), cells)
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=15)
    resolutions = [0.2, 0.5, 1.0, 1.5]
    params = {**PARAMS, "leiden_flavor": "leidenalg"}
    clusterings = leiden_clusterings(adata, resolutions, leiden_arguments(params))
    ours = isolated_label_f1(adata.obs, "cell_type", "batch", clusterings)
    theirs = scib.me.isolated_labels_f1(
        adata.copy(), "cell_type", "batch", embed=None, resolutions=resolutions, verbose=False
    )
    assert ours == pytest.approx(theirs)


def test_constant_dimensions_are_ignored(columns):
    """MOFA can switch a factor off entirely; a constant column must not break any metric."""
    cells = _cells()
    embedding = _embedding(cells, 20)
    embedding["latent_9"] = 0.0
    metrics = _score(embedding, cells, columns).set_index("metric")
    assert np.isfinite(metrics.loc["pcr_comparison", "value"])
    assert metrics.loc["nmi", "value"] > 0.95


def test_igraph_clusterings_are_scanpys(columns):
    """Converting the graph once gives exactly the clusters of sc.tl.leiden(flavor="igraph")."""
    import scanpy as sc

    cells = _cells(n_types=5, per_type=80)
    adata = embedding_anndata(_embedding(cells, 2, seed=4), cells)
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=15)
    arguments = leiden_arguments(PARAMS)
    ours = leiden_clusterings(adata, [0.3, 1.0, 2.5], arguments)
    for resolution, clusters in zip([0.3, 1.0, 2.5], ours, strict=True):
        sc.tl.leiden(adata, resolution=resolution, key_added="expected", **arguments)
        np.testing.assert_array_equal(clusters, adata.obs["expected"].to_numpy().astype(str))
    assert len(set(ours[2])) > len(set(ours[0]))
