"""The evaluation pipeline run in memory: one method scored, then the table of all, as Kedro
runs it (``SequentialRunner`` on a ``DataCatalog`` of ``MemoryDataset``s)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from cite_bench.methods import METHODS, methods_with_role, unintegrated_reference
from cite_bench.metrics import AGGREGATES, PRESETS
from cite_bench.pipelines.evaluation.pipeline import create_pipeline
from tests.builders import run_in_memory, stacked


@pytest.fixture(scope="module")
def one_method_run(simulated_cells, evaluation_params, columns):
    cells, embedding, unintegrated = simulated_cells
    name = methods_with_role("integrated")[0]
    pipeline = create_pipeline(methods={name: METHODS[name]})
    inputs = {
        f"modelling.{name}.embedding": stacked(embedding),
        f"modelling.{unintegrated_reference()}.embedding": stacked(unintegrated),
        "cell_metadata": cells,
        "external_embeddings": {},
        "params:evaluation": evaluation_params,
        "params:columns": columns,
        "params:seeds": [0],
        "params:controls": {"enabled": True},
    }
    return name, run_in_memory(pipeline, inputs)


def test_one_method_is_scored_and_tabulated(one_method_run):
    name, catalog = one_method_run
    scores = catalog.load(f"evaluation.{name}.metrics").set_index("metric")
    assert list(scores.index) == list(PRESETS["fast"])
    # Every fast metric applies to these cells (labels, several batches, a reference that is
    # not the method itself), and none failed.
    applicable = scores.drop(index="cell_cycle")  # no phase column in the simulation
    assert applicable["value"].between(0, 1).all(), applicable
    assert scores.loc["cell_cycle", "note"].startswith("skipped: no cell-cycle phase column")
    assert scores.loc["ari", "note"] == ""  # one Leiden seed: no spread to report
    table = catalog.load("metrics_table")
    assert set(table["method"]) == {name}
    assert set(table["metric"]) == {*PRESETS["fast"], *AGGREGATES}
    overall = table.set_index("metric").loc["overall"]
    assert 0 < overall["value"] < 1
    # Nothing to scale against without controls, and the table says so.
    assert table["scaled"].isna().all()
    assert table["scaled_note"].str.startswith("uninformative").any()


def test_the_markdown_and_figures_show_the_method(one_method_run):
    name, catalog = one_method_run
    markdown = catalog.load("metrics_markdown")
    assert f"| Metric | {name} |" in markdown
    assert "| PCR comparison | " in markdown
    umap = catalog.load(f"evaluation.{name}.umap")
    assert list(umap.columns) == ["umap_1", "umap_2"]
    assert np.isfinite(umap.to_numpy()).all()
    assert isinstance(catalog.load("metrics_summary_figure"), Figure)
    titles = [axis.get_title() for axis in catalog.load("umap_figure").get_axes()]
    assert f"{name}: cell_type" in titles
    assert catalog.load("external_metrics").empty
