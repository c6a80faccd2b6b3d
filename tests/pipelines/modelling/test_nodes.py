"""Every method honours the shared contract: a saveable model, a finite embedding with one row
per cell, and a training summary; the same seed gives the same embedding. Methods come from the
registry and their settings from the shipped configuration, shortened for tests."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from scipy import sparse

from cite_bench.datasets import ModelDataset
from cite_bench.knn_graph import neighbours_of
from cite_bench.methods import METHODS
from cite_bench.pipelines.modelling.nodes import train_over_seeds
from cite_bench.pipelines.modelling.pipeline import create_pipeline
from cite_bench.seeds import parse_seeds, split_by_seed

from ...conftest import PROJECT_ROOT

# Shorter training than the shipped defaults; everything else comes from conf/base.
SHORTER = {
    "mofa": {"n_factors": 4, "n_iterations": 10},
    "totalvi": {"n_latent": 4, "max_epochs": 2, "batch_size": 128},
    "multigrate": {"n_latent": 4, "max_epochs": 2, "batch_size": 128},
    "wnn": {"n_neighbors": 30},
}
CONTROLS_ON = {"enabled": True}


def _shipped_hyperparameters() -> dict[str, dict]:
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base"
    )
    return {
        name: block["hyperparameters"] for name, block in loader["parameters"]["modelling"].items()
    }


SHIPPED = _shipped_hyperparameters()


def _hyperparameters(method: str, seed: int = 0) -> dict:
    return {**SHIPPED[method], **SHORTER.get(method, {}), "seed": seed, "accelerator": "cpu"}


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, small_mudata, columns):
    method = request.param
    hyperparameters = _hyperparameters(method)
    return method, hyperparameters, METHODS[method].train(small_mudata, hyperparameters, columns)


def test_every_registered_method_is_configured_and_wired():
    """The registry is the list: each method has its parameter block and its namespace."""
    assert set(SHIPPED) == set(METHODS)
    namespaces = {node.namespace for node in create_pipeline().nodes}
    assert namespaces == {f"modelling.{name}" for name in METHODS}


def test_embedding_contract(trained, small_mudata):
    model, hyperparameters, (_, embedding, summary) = trained
    assert embedding.shape[0] == small_mudata.n_obs
    assert list(embedding.index) == list(small_mudata.obs_names)
    assert np.isfinite(embedding.to_numpy()).all()
    if METHODS[model].output == "graph":
        check_graph_layout(embedding, hyperparameters["n_neighbors"])
        return
    width = hyperparameters.get("n_latent", hyperparameters.get("n_factors"))
    if width is not None:  # a cell-type embedding has one dimension per type
        assert embedding.shape[1] == width
    assert embedding.to_numpy().std(axis=0).min() > 0
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
    _, _, (trained_model, _, _) = trained
    dataset = ModelDataset(filepath=str(tmp_path / "model"))
    dataset.save(trained_model)
    loaded = dataset.load()
    assert type(loaded) is type(trained_model)
    assert not list(tmp_path.glob(".model.tmp-*"))


def test_same_seed_same_embedding(trained, small_mudata, columns):
    model, hyperparameters, (_, embedding, _) = trained
    _, again, _ = METHODS[model].train(small_mudata, hyperparameters, columns)
    np.testing.assert_array_equal(again.to_numpy(), embedding.to_numpy())


def test_pca_rna_adt_weights_both_modalities(small_mudata, columns):
    """Each modality carries the same total variance, so neither swamps the other."""
    hyperparameters = {"n_latent": 4, "seed": 0, "accelerator": "cpu"}
    model, _, _ = METHODS["pca_rna_adt"].train(small_mudata, hyperparameters, columns)
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
    hyperparameters = {**_hyperparameters("mofa"), "accelerator": "gpu"}
    with pytest.raises(RuntimeError, match="no CUDA device"):
        METHODS["mofa"].train(small_mudata, hyperparameters, columns)


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
    hyperparameters = _hyperparameters("totalvi")
    del hyperparameters["seed"]
    trainer = METHODS["totalvi"].train
    models, stacked, summary = train_over_seeds(
        METHODS["totalvi"], small_mudata, hyperparameters, [2, 5], columns, CONTROLS_ON
    )
    assert list(models) == ["seed_2", "seed_5"]
    embeddings = split_by_seed(stacked)
    assert list(embeddings) == [2, 5]
    assert list(embeddings[2].index) == list(small_mudata.obs_names)
    assert not np.allclose(embeddings[2].to_numpy(), embeddings[5].to_numpy())
    _, alone, _ = trainer(small_mudata, {**hyperparameters, "seed": 5}, columns)
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
    unintegrated = METHODS["pca_rna"].train(small_mudata, _hyperparameters("pca_rna"), columns)[1]
    labels = small_mudata.obs.loc[unintegrated.index, columns["label"]].astype(str)

    def embedding(method: str) -> pd.DataFrame:
        return METHODS[method].train(small_mudata, _hyperparameters(method), columns)[1]

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
        method, unlabelled, SHIPPED[method.name], [0], columns, CONTROLS_ON
    )
    assert models == {} and split_by_seed(stacked) == {}
    assert "needs cell-type labels" in summary["skipped"]
    _, stacked, summary = train_over_seeds(
        METHODS["random_gaussian"],
        small_mudata,
        SHIPPED["random_gaussian"],
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

    hyperparameters = {"n_latent": 4, "seed": 0, "accelerator": "cpu"}
    model, embedding, summary = METHODS[method].train(mdata, hyperparameters, {})
    np.testing.assert_allclose(model.mean, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.scale, scale, rtol=1e-10)
    latent = embedding.to_numpy().astype(np.float64)
    np.testing.assert_allclose(latent.var(axis=0, ddof=1), reference.explained_variance_, rtol=1e-6)
    expected = reference.transform((dense - mean) / scale)
    for axis in range(4):
        assert abs(np.corrcoef(latent[:, axis], expected[:, axis])[0, 1]) > 0.999
        same = np.abs(model.components[axis] @ reference.components_[axis])
        assert same == pytest.approx(1, abs=1e-8)
    assert summary["final_training_loss"] == pytest.approx(
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
        METHODS[method].train(mdata, {"n_latent": 10, "seed": 0, "accelerator": "cpu"}, {})
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
        **_hyperparameters(method),
        "early_stopping": True,
        "early_stopping_patience": 2,
        "max_epochs": 50,
        "train_kwargs": NEVER_IMPROVES,
    }
    _, embedding, summary = METHODS[method].train(small_mudata, stopping, columns)
    assert summary["n_epochs_trained"] == 3  # the first validation, then 2 without improvement
    assert summary["stopped_early"] is True
    _, again, rerun = METHODS[method].train(small_mudata, stopping, columns)
    assert rerun["n_epochs_trained"] == 3
    np.testing.assert_array_equal(again.to_numpy(), embedding.to_numpy())

    _, _, summary = METHODS[method].train(
        small_mudata, {**stopping, "early_stopping": False, "max_epochs": 5}, columns
    )
    assert summary["n_epochs_trained"] == 5
    assert summary["stopped_early"] is False


def test_early_stopping_settings_reach_train(monkeypatch):
    """One place passes the settings for both models; what a block leaves out (null) keeps the
    library's default, and ``train_kwargs`` overrides."""
    from cite_bench.pipelines.modelling import nodes

    calls = []

    class Model:
        def train(self, **kwargs):
            calls.append(kwargs)

    hyperparameters = {
        "max_epochs": 9,
        "accelerator": "cpu",
        "batch_size": 32,
        "early_stopping": True,
        "early_stopping_patience": 4,
        "early_stopping_monitor": "elbo_validation",
        "train_size": None,
        "train_kwargs": {"early_stopping_patience": 7},
    }
    nodes._fit(Model(), hyperparameters)
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
