"""The modelling pipeline run in memory: one namespace per method given to it, its settings
from the parameters (defaults, training length, overrides), one output per seed."""

from __future__ import annotations

import pytest

from cite_bench.methods import METHODS
from cite_bench.pipelines.modelling.pipeline import create_pipeline
from cite_bench.seeds import split_by_seed
from tests.builders import run_in_memory


def _inputs(mdata, columns, **params) -> dict:
    values = {
        "modelling": {},
        "training_length": "fast",
        "seeds": [0, 1],
        "columns": columns,
        "controls": {"enabled": True},
        **params,
    }
    return {"cite_seq_mudata": mdata, **{f"params:{key}": value for key, value in values.items()}}


def _run(methods, inputs) -> dict:
    pipeline = create_pipeline(methods=methods)
    catalog = run_in_memory(pipeline, inputs)
    return {name: catalog.load(name) for name in pipeline.outputs()}


def test_every_registered_method_has_its_namespace():
    namespaces = {node.namespace for node in create_pipeline().nodes}
    assert namespaces == {f"modelling.{name}" for name in METHODS}
    assert "gpu" in create_pipeline(methods={"totalvi": METHODS["totalvi"]}).nodes[0].tags


def test_the_methods_given_train_once_per_seed(small_mudata, columns):
    methods = {name: METHODS[name] for name in ("pca_rna", "mofa", "random_gaussian")}
    outputs = _run(methods, _inputs(small_mudata, columns))
    assert {name.split(".")[1] for name in outputs} == set(methods)
    for name in methods:
        embeddings = split_by_seed(outputs[f"modelling.{name}.embedding"])
        assert list(embeddings) == [0, 1]
        assert list(embeddings[0].index) == list(small_mudata.obs_names)
        assert list(outputs[f"modelling.{name}.trained_model"]) == ["seed_0", "seed_1"]
        summary = outputs[f"modelling.{name}.training_summary"]
        assert summary["method"] == name and summary["seeds"] == [0, 1]
    # fast MOFA: its own short settings, not the demo's 20 factors
    assert outputs["modelling.mofa.embedding"].shape[1] == METHODS["mofa"].fast["n_factors"]


def test_overrides_reach_the_trainer(small_mudata, columns):
    overrides = {"pca_rna": {"hyperparameters": {"n_latent": 3}}}
    outputs = _run(
        {"pca_rna": METHODS["pca_rna"]}, _inputs(small_mudata, columns, modelling=overrides)
    )
    assert outputs["modelling.pca_rna.embedding"].shape[1] == 3


def test_a_typo_in_the_overrides_stops_the_node(small_mudata, columns):
    overrides = {"pca_rna": {"hyperparameters": {"n_latnet": 3}}}
    with pytest.raises(Exception, match="n_latnet"):
        _run({"pca_rna": METHODS["pca_rna"]}, _inputs(small_mudata, columns, modelling=overrides))
