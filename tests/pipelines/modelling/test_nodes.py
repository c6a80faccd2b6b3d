"""Every trainer honours the shared contract: a saveable model, a finite embedding with one row
per cell, and a training summary; the same seed gives the same embedding."""

from __future__ import annotations

import numpy as np
import pytest

from cite_bench.datasets import ModelDataset
from cite_bench.pipelines.modelling.nodes import (
    TRAINERS,
    parse_seeds,
    split_by_seed,
    train_over_seeds,
)

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
    hyperparameters = {**HYPERPARAMETERS["totalvi"], "accelerator": "cpu"}
    trainer = TRAINERS["totalvi"]
    models, stacked, summary = train_over_seeds(
        trainer, small_mudata, hyperparameters, [2, 5], columns
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
    import pandas as pd

    with pytest.raises(ValueError, match="'seed' index level"):
        split_by_seed(pd.DataFrame(index=small_mudata.obs_names))
