"""The external pipeline run in memory: a user's embedding read from a file, checked, scored
beside a registered method's scores and drawn, as ``kedro run --pipeline external`` does."""

from __future__ import annotations

import pandas as pd
import pytest

from cite_bench.datasets import ExternalEmbeddingsDataset
from cite_bench.methods import METHODS, methods_with_role, unintegrated_reference
from cite_bench.metrics import PRESETS
from cite_bench.pipelines.external.nodes import ExternalEmbeddingError
from cite_bench.pipelines.external.pipeline import create_pipeline
from tests.builders import run_in_memory, stacked


def _inputs(tmp_path, simulated_cells, evaluation_params, columns, frame) -> dict:
    cells, embedding, unintegrated = simulated_cells
    path = tmp_path / "mine.parquet"
    frame.rename(columns=str).to_parquet(path)
    name = methods_with_role("integrated")[0]
    # The registered method's scores and UMAP as a finished run left them.
    table = {
        "metric": list(PRESETS["fast"]),
        "value": [0.5] * len(PRESETS["fast"]),
        "note": [""] * len(PRESETS["fast"]),
    }
    return {
        "external_embeddings": ExternalEmbeddingsDataset(methods={"mine": str(path)}).load(),
        "cell_metadata": cells,
        f"modelling.{unintegrated_reference()}.embedding": stacked(unintegrated),
        f"evaluation.{name}.metrics": pd.DataFrame(table).assign(seed=0),
        f"evaluation.{name}.umap": embedding.iloc[:, :2].set_axis(["umap_1", "umap_2"], axis=1),
        "params:evaluation": evaluation_params,
        "params:columns": columns,
    }, name


def test_an_external_embedding_is_scored_beside_the_methods(
    tmp_path, simulated_cells, evaluation_params, columns
):
    _, embedding, _ = simulated_cells
    inputs, name = _inputs(tmp_path, simulated_cells, evaluation_params, columns, embedding)
    catalog = run_in_memory(create_pipeline(methods={name: METHODS[name]}), inputs)
    scores = catalog.load("external_metrics").set_index("metric")
    assert set(scores["method"]) == {"mine"}
    assert list(scores.index) == list(PRESETS["fast"])
    assert scores.drop(index="cell_cycle")["value"].between(0, 1).all()
    table = catalog.load("metrics_table")
    assert set(table["method"]) == {name, "mine"}
    assert set(table.loc[table["method"] == "mine", "role"]) == {"external"}
    assert "| Metric |" in catalog.load("metrics_markdown")
    titles = [axis.get_title() for axis in catalog.load("umap_figure").get_axes()]
    assert "mine: batch" in titles


def test_an_embedding_missing_cells_stops_the_run_naming_the_file(
    tmp_path, simulated_cells, evaluation_params, columns
):
    _, embedding, _ = simulated_cells
    inputs, name = _inputs(
        tmp_path, simulated_cells, evaluation_params, columns, embedding.iloc[5:]
    )
    pipeline = create_pipeline(methods={name: METHODS[name]})
    with pytest.raises(ExternalEmbeddingError, match=r"mine.parquet\): 5 of the .* missing"):
        run_in_memory(pipeline, inputs)
