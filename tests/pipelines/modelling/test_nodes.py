"""Every trainer honours the shared contract: a saveable model, a finite embedding with one row
per cell, and a training summary; the same seed gives the same embedding."""

from __future__ import annotations

import numpy as np
import pytest

from cite_bench.datasets import ModelDataset
from cite_bench.pipelines.modelling.nodes import TRAINERS

HYPERPARAMETERS = {
    "mofa": {
        "n_factors": 4,
        "n_iterations": 10,
        "convergence_mode": "fast",
        "use_float32": True,
        "groups_key": None,
    },
    "totalvi": {"n_latent": 4, "max_epochs": 2, "batch_size": 128},
    "multigrate": {"n_latent": 4, "max_epochs": 2, "batch_size": 128},
    "pca_rna": {"n_latent": 4},
    "pca_rna_adt": {"n_latent": 4},
}


@pytest.fixture(scope="module", params=sorted(TRAINERS))
def trained(request, small_mudata, columns):
    model = request.param
    hyperparameters = {**HYPERPARAMETERS[model], "seed": 0, "accelerator": "cpu"}
    return model, hyperparameters, TRAINERS[model](small_mudata, hyperparameters, columns)


def test_every_model_has_test_hyperparameters():
    assert set(HYPERPARAMETERS) == set(TRAINERS)


def test_embedding_contract(trained, small_mudata):
    model, hyperparameters, (_, embedding, summary) = trained
    assert embedding.shape[0] == small_mudata.n_obs
    assert list(embedding.index) == list(small_mudata.obs_names)
    assert embedding.shape[1] == hyperparameters.get("n_latent", hyperparameters.get("n_factors"))
    assert np.isfinite(embedding.to_numpy()).all()
    assert embedding.to_numpy().std(axis=0).min() > 0
    assert summary["model"] == model
    assert summary["n_cells"] == small_mudata.n_obs
    assert summary["training_time_s"] > 0
    assert summary["n_epochs_trained"] >= 1
    assert np.isfinite(summary["final_training_loss"])
    assert summary["device"] == "cpu"


def test_model_saves_and_loads(trained, tmp_path):
    _, _, (trained_model, _, _) = trained
    dataset = ModelDataset(filepath=str(tmp_path / "model"))
    dataset.save(trained_model)
    loaded = dataset.load()
    assert type(loaded) is type(trained_model)
    assert not list(tmp_path.glob(".model.tmp-*"))


def test_same_seed_same_embedding(trained, small_mudata, columns):
    model, hyperparameters, (_, embedding, _) = trained
    _, again, _ = TRAINERS[model](small_mudata, hyperparameters, columns)
    np.testing.assert_array_equal(again.to_numpy(), embedding.to_numpy())


def test_pca_rna_adt_weights_both_modalities(small_mudata, columns):
    """Each modality carries the same total variance, so neither swamps the other."""
    hyperparameters = {"n_latent": 4, "seed": 0, "accelerator": "cpu"}
    model, _, _ = TRAINERS["pca_rna_adt"](small_mudata, hyperparameters, columns)
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
    hyperparameters = {**HYPERPARAMETERS["mofa"], "seed": 0, "accelerator": "gpu"}
    with pytest.raises(RuntimeError, match="no CUDA device"):
        TRAINERS["mofa"](small_mudata, hyperparameters, columns)
