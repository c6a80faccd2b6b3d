"""The notebook API: embeddings of an AnnData or MuData scored as the pipelines score them,
with the controls that scale them, and mistakes named before any work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cite_bench.api import control_embeddings, score
from cite_bench.evaluate import score_embedding
from cite_bench.methods import METHODS
from cite_bench.parameters import Evaluation

ONE_SEED = {"leiden_seeds": [0], "metrics": "fast"}


@pytest.fixture(scope="module")
def scored(small_mudata, columns):
    """A PCA of the RNA as the unintegrated embedding, a copy of it and the protein values as
    users' embeddings."""

    rna = METHODS["pca_rna"].train(small_mudata, METHODS["pca_rna"].settings(), 0, columns)
    unintegrated = rna.output
    mdata = small_mudata.copy()
    mdata.obsm["X_copy"] = unintegrated.loc[mdata.obs_names].to_numpy()
    adt = pd.DataFrame(np.asarray(mdata["adt"].X.todense()), index=mdata["adt"].obs_names)
    table = score(
        mdata,
        {"copy": "X_copy", "protein": adt},
        unintegrated=unintegrated,
        label_key=columns["label"],
        batch_key=columns["batch"],
        **ONE_SEED,
    )
    return mdata, unintegrated, table


def test_every_embedding_and_control_is_scored(scored):
    _, _, table = scored
    roles = table.drop_duplicates("method").set_index("method")["role"].to_dict()
    assert roles == {
        "copy": "external",
        "protein": "external",
        "unintegrated": "baseline",
        "random_gaussian": "control",
        "cell_type_embedding": "control",
        "cell_type_embedding_jittered": "control",
        "shuffled_cells": "control",
        "shuffled_within_cell_types": "control",
    }
    assert {"bio_conservation", "batch_correction", "overall"} <= set(table["metric"])


def test_scores_are_the_pipelines(scored, small_mudata, columns):
    """The unintegrated row is what the evaluation's own scoring gives, and a copy of it scores
    the same on every metric that does not compare with it."""
    mdata, unintegrated, table = scored
    values = table.pivot(index="metric", columns="method", values="value")
    settings = Evaluation(**ONE_SEED).model_dump()
    cells = mdata.obs[[columns["label"], columns["batch"]]].astype("category")
    direct = score_embedding(
        unintegrated, unintegrated, cells, settings, columns, is_reference=True
    )
    direct = direct.set_index("metric")["value"]
    pd.testing.assert_series_equal(
        values.loc[direct.index, "unintegrated"], direct, check_names=False
    )
    same = direct.dropna().index
    np.testing.assert_allclose(values.loc[same, "copy"], values.loc[same, "unintegrated"])
    assert values.loc["nmi", "protein"] != pytest.approx(values.loc["nmi", "copy"])


def test_scaled_between_the_controls(scored):
    _, _, table = scored
    scaled = table.pivot(index="metric", columns="method", values="scaled")
    # The labels themselves near the top, noise near the bottom, the methods in between.
    assert scaled.loc["nmi", "cell_type_embedding_jittered"] > 0.9
    assert scaled.loc["nmi", "random_gaussian"] < 0.1
    assert 0.1 < scaled.loc["nmi", "unintegrated"] < 0.95


def test_controls_without_an_unintegrated_embedding_or_labels():
    labels = pd.Series(["a", "b", "a", "b"], index=[f"c{i}" for i in range(4)])
    assert set(control_embeddings(labels, None)) == {
        "random_gaussian",
        "cell_type_embedding",
        "cell_type_embedding_jittered",
    }
    unlabelled = pd.Series([np.nan] * 4, index=labels.index)
    assert set(control_embeddings(unlabelled, None)) == {"random_gaussian"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: score(m, ["X_nope"]), r"No obsm\[.X_nope.\].*obsm keys: .*X_copy"),
        (lambda m: score(m, {"a": "X_copy"}, label_key="kind"), "No obs column 'kind'"),
        (lambda m: score(m, {"totalvi": "X_copy"}), "names of the project's methods"),
        (lambda m: score(m, {"a": np.zeros((3, 2))}), "one row per cell"),
        (lambda m: score(m, {}), "No embedding to score"),
        (lambda m: score(m, {"a": "X_copy"}, metrics="most"), "unknown preset 'most'"),
    ],
)
def test_mistakes_are_named_before_any_work(scored, call, message):
    with pytest.raises((KeyError, ValueError), match=message):
        call(scored[0])


def test_the_flat_api_names_resolve():
    import importlib.util

    import cite_bench.benchmark.timing  # noqa: F401 - a subpackage import must not shadow a name

    for name in cite_bench.__all__:
        assert importlib.util.find_spec(f"cite_bench.{name}") is None, f"{name} is a module too"
        assert getattr(cite_bench, name) is not None
    assert callable(cite_bench.score)
    assert cite_bench.METHODS is METHODS
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cite_bench.nope  # noqa: B018


def test_evaluation_defaults_are_conf_base(tmp_path):
    """The API's defaults are what `kedro run` uses: conf/base's evaluation block."""
    from kedro.config import OmegaConfigLoader

    from .conftest import PROJECT_ROOT

    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base"
    )
    shipped = Evaluation.model_validate(loader["parameters"]["evaluation"])
    assert shipped == Evaluation()
