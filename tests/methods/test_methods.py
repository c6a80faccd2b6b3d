"""Every method honours the shared contract: a saveable model, a finite output with one row per
cell, and a training summary; the same seed gives the same output. Methods come from the
registry, with their own short (``fast``) settings."""

from __future__ import annotations

from typing import Any

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import sparse

from cite_bench.datasets import ModelDataset
from cite_bench.knn_graph import neighbours_of
from cite_bench.methods import FAST_LENGTH, METHODS, MODEL_CLASSES, Trained, registry
from cite_bench.methods.training import train_once, train_over_seeds
from cite_bench.seeds import parse_seeds, split_by_seed

CONTROLS_ON = {"enabled": True}


def _settings(method: str, **overrides: Any):
    """The method's fast settings on the CPU, with ``overrides``."""
    spec = METHODS[method]
    if "accelerator" in spec.hyperparameters.model_fields:
        overrides.setdefault("accelerator", "cpu")
    return spec.settings(overrides, FAST_LENGTH)


def _train(mdata: md.MuData, method: str, columns: dict, seed: int = 0, **overrides) -> Trained:
    return METHODS[method].train(mdata, _settings(method, **overrides), seed, columns)


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, small_mudata, columns):
    method = request.param
    settings = _settings(method)
    return method, settings, train_once(METHODS[method], small_mudata, settings, 0, columns)


def test_registry_refuses_a_name_declared_twice():
    with pytest.raises(ValueError, match="Two method modules declare the name 'mofa'"):
        registry(["mofa", "mofa"])


def test_model_store_allow_list_is_every_declared_class():
    assert {method.model_class for method in METHODS.values()} == MODEL_CLASSES
    assert "scvi.model.SCVI" in MODEL_CLASSES  # scvi_rna: declared in its module only


def test_a_model_class_that_cannot_be_loaded_is_named_at_start_up():
    from dataclasses import replace

    from cite_bench.methods import unresolvable_model_classes

    assert unresolvable_model_classes(METHODS) == []
    broken = {
        "a": replace(METHODS["pca_rna"], model_class="cite_bench.methods.model_artifacts.Nope"),
        "b": replace(METHODS["totalvi"], model_class="not_installed_pkg.Model"),
    }
    assert unresolvable_model_classes(broken) == [
        "a: model_class 'cite_bench.methods.model_artifacts.Nope' cannot be loaded",
        "b: model_class 'not_installed_pkg.Model' cannot be loaded",
    ]


def test_typos_in_settings_are_refused():
    with pytest.raises(ValidationError, match="max_epoch"):
        METHODS["totalvi"].settings({"max_epoch": 3})
    with pytest.raises(ValidationError, match="seeds"):
        METHODS["totalvi"].settings({"seed": 3})


def test_training_lengths_apply_in_order():
    """Defaults, then the training length, then the user's overrides."""
    totalvi = METHODS["totalvi"]
    assert totalvi.settings().max_epochs == totalvi.hyperparameters().max_epochs
    assert totalvi.settings(length="starter").max_epochs == 400
    assert totalvi.settings({"max_epochs": 7}, "starter").max_epochs == 7
    assert totalvi.settings(length="starter").batch_size == 128
    assert METHODS["pca_rna"].settings(length="starter") == METHODS["pca_rna"].settings()


def test_embedding_contract(trained, small_mudata):
    model, settings, (result, summary) = trained
    embedding = result.output
    assert embedding.shape[0] == small_mudata.n_obs
    assert list(embedding.index) == list(small_mudata.obs_names)
    assert np.isfinite(embedding.to_numpy()).all()
    if METHODS[model].output == "graph":
        check_graph_layout(embedding, settings.n_neighbors)
        return
    width = getattr(settings, "n_latent", getattr(settings, "n_factors", None))
    if width is not None:  # a cell-type embedding has one dimension per type
        assert embedding.shape[1] == width
    assert embedding.to_numpy().std(axis=0).min() > 0
    assert summary["model"] == model
    assert summary["n_cells"] == small_mudata.n_obs
    assert summary["training_time_s"] >= 0
    assert summary["device"] == "cpu"
    if METHODS[model].role != "control":  # controls train nothing
        assert summary["training_time_s"] > 0
        assert summary["n_epochs_trained"] >= 1
        assert np.isfinite(summary["final_training_loss"])


def check_graph_layout(graph: pd.DataFrame, n_neighbors: int) -> None:
    """A graph-output method's table: each cell first among its neighbours, at distance 0,
    then its neighbours by increasing distance, as many as asked for."""
    indices, distances = neighbours_of(graph)
    assert indices.shape == (len(graph), n_neighbors + 1)
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(graph)))
    assert (distances[:, 0] == 0).all() and (distances[:, 1:] > 0).all()
    assert (np.diff(distances, axis=1) >= 0).all()
    assert ((indices >= 0) & (indices < len(graph))).all()


def test_model_saves_and_loads(trained, tmp_path):
    trained_model = trained[2][0].model
    dataset = ModelDataset(filepath=str(tmp_path / "model"))
    dataset.save(trained_model)
    loaded = dataset.load()
    assert type(loaded) is type(trained_model)
    assert not list(tmp_path.glob(".model.tmp-*"))


def test_same_seed_same_embedding(trained, small_mudata, columns):
    model, settings, (result, _) = trained
    again = METHODS[model].train(small_mudata, settings, 0, columns).output
    np.testing.assert_array_equal(again.to_numpy(), result.output.to_numpy())


def test_pca_rna_adt_weights_both_modalities(small_mudata, columns):
    """Each modality carries the same total variance, so neither swamps the other."""
    model = _train(small_mudata, "pca_rna_adt", columns, n_latent=4).model
    n_genes = small_mudata["rna"].n_vars
    rna = small_mudata["rna"].X.toarray()
    adt = np.asarray(small_mudata["adt"].X.todense())
    scaled = (np.hstack([rna, adt]) - model.mean) / model.scale
    variance = scaled.var(axis=0)
    assert variance[:n_genes].sum() == pytest.approx(variance[n_genes:].sum(), rel=1e-6)
    assert 0 < model.unexplained_variance < 1


def test_gpu_request_without_gpu_is_a_clear_error(small_mudata, columns):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        _train(small_mudata, "mofa", columns, accelerator="gpu")


@pytest.mark.parametrize(
    ("value", "expected"), [([0, 1, 2], [0, 1, 2]), (3, [3]), ("0 1 2", [0, 1, 2]), ("5", [5])]
)
def test_seeds_from_yaml_or_the_command_line(value, expected):
    assert parse_seeds(value) == expected


@pytest.mark.parametrize("value", [[], [1, 1], [-1], "0,x", [0.5]])
def test_bad_seeds_are_refused(value):
    with pytest.raises(ValueError, match="seeds"):
        parse_seeds(value)


def test_one_model_per_seed_and_seeds_differ(small_mudata, columns, tmp_path):
    settings = _settings("totalvi")
    models, stacked, summary = train_over_seeds(
        METHODS["totalvi"], small_mudata, settings, [2, 5], columns, CONTROLS_ON
    )
    assert list(models) == ["seed_2", "seed_5"]
    embeddings = split_by_seed(stacked)
    assert list(embeddings) == [2, 5]
    assert list(embeddings[2].index) == list(small_mudata.obs_names)
    assert not np.allclose(embeddings[2].to_numpy(), embeddings[5].to_numpy())
    alone = METHODS["totalvi"].train(small_mudata, settings, 5, columns).output
    np.testing.assert_array_equal(embeddings[5].to_numpy(), alone.to_numpy())
    assert summary["seeds"] == [2, 5]
    assert [run["seed"] for run in summary["runs"]] == [2, 5]
    times = [run["training_time_s"] for run in summary["runs"]]
    assert summary["training_time_s"] == pytest.approx(np.mean(times), abs=1e-6)

    dataset = ModelDataset(filepath=str(tmp_path / "totalvi"))
    dataset.save(models)
    loaded = dataset.load()
    assert list(loaded) == ["seed_2", "seed_5"]
    assert type(loaded["seed_5"]) is type(models["seed_5"])
    dataset.save({"seed_2": models["seed_2"]})  # fewer seeds: none lingers
    assert list(dataset.load()) == ["seed_2"]
    assert not (tmp_path / "totalvi" / "seed_5").exists()


def test_split_by_seed_needs_the_seed_level(small_mudata):
    with pytest.raises(ValueError, match="'seed' index level"):
        split_by_seed(pd.DataFrame(index=small_mudata.obs_names))


def test_controls_are_what_they_claim(small_mudata, columns):
    """Shuffles keep the unintegrated coordinates (only moved between cells: across all cells,
    or within each cell type), the cell-type embedding is the labels."""
    unintegrated = _train(small_mudata, "pca_rna", columns).output
    labels = small_mudata.obs.loc[unintegrated.index, columns["label"]].astype(str)

    def embedding(method: str) -> pd.DataFrame:
        return _train(small_mudata, method, columns).output

    shuffled = embedding("shuffled_cells")
    within = embedding("shuffled_within_cell_types")
    for frame in (shuffled, within):
        rows = {tuple(row) for row in np.round(frame.to_numpy(), 5)}
        assert rows == {tuple(row) for row in np.round(unintegrated.to_numpy(), 5)}
        assert not np.allclose(frame.to_numpy(), unintegrated.to_numpy())
    # Within cell types: each type keeps its own set of coordinates.
    for label in labels.unique():
        cells = labels.index[labels == label]
        assert np.allclose(
            np.sort(within.loc[cells].to_numpy(), axis=0),
            np.sort(unintegrated.loc[cells].to_numpy(), axis=0),
            atol=1e-5,
        )
    onehot = embedding("cell_type_embedding").to_numpy()
    assert set(np.unique(onehot)) == {0.0, 1.0}
    assert (onehot.sum(axis=1) == 1).all()
    assert onehot.shape[1] == labels.nunique()
    jittered = embedding("cell_type_embedding_jittered").to_numpy()
    assert 0 < np.abs(jittered - onehot).max() <= 0.01
    noise = embedding("random_gaussian").to_numpy()
    assert abs(noise.mean()) < 0.1 and noise.std() == pytest.approx(1, abs=0.1)


def test_controls_that_need_labels_are_skipped_with_the_reason(small_mudata, columns):
    unlabelled = small_mudata.copy()
    del unlabelled.obs[columns["label"]]
    method = METHODS["cell_type_embedding"]
    models, stacked, summary = train_over_seeds(
        method, unlabelled, method.settings(), [0], columns, CONTROLS_ON
    )
    assert models == {} and split_by_seed(stacked) == {}
    assert "needs cell-type labels" in summary["skipped"]
    _, stacked, summary = train_over_seeds(
        METHODS["random_gaussian"],
        small_mudata,
        METHODS["random_gaussian"].settings(),
        [0],
        columns,
        {"enabled": False},
    )
    assert split_by_seed(stacked) == {} and "switched off" in summary["skipped"]


# --- PCA baselines on sparse input ------------------------------------------------------------


def _cite_mudata(rna: sparse.csr_matrix, adt: np.ndarray) -> md.MuData:
    cells = pd.Index([f"cell{i}" for i in range(rna.shape[0])])

    def modality(matrix, prefix: str) -> ad.AnnData:
        features = pd.DataFrame(index=[f"{prefix}{j}" for j in range(matrix.shape[1])])
        return ad.AnnData(matrix, obs=pd.DataFrame(index=cells), var=features)

    return md.MuData({"rna": modality(rna, "gene"), "adt": modality(adt, "protein")})


def _structured_cite(n_cells: int = 300, n_genes: int = 80, n_proteins: int = 10) -> md.MuData:
    """Log counts of a few latent factors of distinct strengths, so that the leading principal
    axes are well separated and comparable one by one; most RNA values are zero."""
    rng = np.random.default_rng(3)
    factors = rng.normal(size=(n_cells, 4)) * [3.0, 2.2, 1.6, 1.2]
    rates = np.exp(0.4 * factors @ rng.normal(size=(4, n_genes)) - 2.0)
    rna = sparse.csr_matrix(np.log1p(rng.poisson(rates)).astype(np.float32))
    adt = factors @ rng.normal(size=(4, n_proteins)) + rng.normal(size=(n_cells, n_proteins))
    return _cite_mudata(rna, adt.astype(np.float32))


@pytest.mark.parametrize("method", ["pca_rna", "pca_rna_adt"])
def test_sparse_pca_equals_the_dense_reference(method):
    """The implicitly centred sparse PCA gives the dense PCA (the baselines' definition) up to
    each axis's sign: same centring and scaling, variances and embedding."""
    from sklearn.decomposition import PCA

    mdata = _structured_cite()
    rna, adt = mdata["rna"].X.toarray().astype(np.float64), mdata["adt"].X.astype(np.float64)
    blocks = [rna] if method == "pca_rna" else [rna, adt]
    dense = np.hstack(blocks)
    mean = dense.mean(axis=0)
    scale = (
        np.ones(dense.shape[1])
        if method == "pca_rna"
        else np.concatenate([block.std(axis=0) * np.sqrt(block.shape[1]) for block in blocks])
    )
    scale = np.where(scale == 0, 1.0, scale)
    reference = PCA(n_components=4, svd_solver="full").fit((dense - mean) / scale)

    result = METHODS[method].train(mdata, METHODS[method].settings({"n_latent": 4}), 0, {})
    model, embedding = result.model, result.output
    np.testing.assert_allclose(model.mean, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.scale, scale, rtol=1e-10)
    latent = embedding.to_numpy().astype(np.float64)
    np.testing.assert_allclose(latent.var(axis=0, ddof=1), reference.explained_variance_, rtol=1e-6)
    expected = reference.transform((dense - mean) / scale)
    for axis in range(4):
        assert abs(np.corrcoef(latent[:, axis], expected[:, axis])[0, 1]) > 0.999
        same = np.abs(model.components[axis] @ reference.components_[axis])
        assert same == pytest.approx(1, abs=1e-8)
    assert result.final_training_loss == pytest.approx(
        1 - reference.explained_variance_ratio_.sum(), abs=1e-10
    )
    # The saved model maps dense and sparse input alike.
    np.testing.assert_allclose(model.transform(dense), model.transform(sparse.csr_matrix(dense)))


@pytest.mark.parametrize("method", ["pca_rna", "pca_rna_adt"])
def test_pca_baselines_never_densify_the_rna(method):
    """Memory, without timing anything: every numpy allocation while training stays far below
    one dense copy of the RNA matrix, so densifying it anywhere (a ``toarray``, an ``hstack``
    of dense blocks, centring a copy) fails this test."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n_cells, n_genes = 4000, 2000
    rna = sparse.random(n_cells, n_genes, density=0.02, format="csr", rng=rng, dtype=np.float32)
    mdata = _cite_mudata(rna, rng.normal(size=(n_cells, 20)).astype(np.float32))
    dense_bytes = n_cells * n_genes * 8
    tracemalloc.start()
    try:
        METHODS[method].train(mdata, METHODS[method].settings({"n_latent": 10}), 0, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < dense_bytes / 4, f"{peak / 1e6:.1f} MB; a dense copy: {dense_bytes / 1e6} MB"


# --- early stopping (totalVI, Multigrate) -----------------------------------------------------

# No validation loss can improve by this much: training stops after `patience` epochs without
# an improvement, whatever the data, which keeps the test short and its epoch count exact.
NEVER_IMPROVES = {"early_stopping_min_delta": 1e12}


@pytest.mark.parametrize("method", ["totalvi", "multigrate"])
def test_early_stopping_ends_training_and_the_summary_says_so(method, small_mudata, columns):
    stopping = {
        "early_stopping": True,
        "early_stopping_patience": 2,
        "max_epochs": 50,
        "train_kwargs": NEVER_IMPROVES,
    }
    first = _train(small_mudata, method, columns, **stopping)
    assert first.n_epochs_trained == 3  # the first validation, then 2 without improvement
    assert first.stopped_early is True
    rerun = _train(small_mudata, method, columns, **stopping)
    assert rerun.n_epochs_trained == 3
    np.testing.assert_array_equal(rerun.output.to_numpy(), first.output.to_numpy())

    stopping.update(early_stopping=False, max_epochs=5)
    _, summary = train_once(
        METHODS[method], small_mudata, _settings(method, **stopping), 0, columns
    )
    assert summary["n_epochs_trained"] == 5
    assert summary["stopped_early"] is False


def test_early_stopping_settings_reach_train(monkeypatch):
    """One place passes the settings for both models; what a block leaves out (null) keeps the
    library's default, and ``train_kwargs`` overrides."""
    from cite_bench.methods._scvi import fit

    calls = []

    class Model:
        def train(self, **kwargs):
            calls.append(kwargs)

    settings = METHODS["totalvi"].settings(
        {
            "max_epochs": 9,
            "accelerator": "cpu",
            "batch_size": 32,
            "early_stopping": True,
            "early_stopping_patience": 4,
            "early_stopping_monitor": "elbo_validation",
            "train_size": None,
            "train_kwargs": {"early_stopping_patience": 7},
        }
    )
    fit(Model(), settings)
    assert calls == [
        {
            "max_epochs": 9,
            "accelerator": "cpu",
            "batch_size": 32,
            "early_stopping": True,
            "early_stopping_patience": 7,
            "early_stopping_monitor": "elbo_validation",
        }
    ]
