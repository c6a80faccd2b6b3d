"""The parameter schema: the shipped configuration passes, mistakes are named at start-up."""

from __future__ import annotations

import copy

import pytest
from kedro.config import OmegaConfigLoader

from cite_bench.parameters import ParameterError, validate_parameters

from .conftest import PROJECT_ROOT, run_kedro


def _params(env: str | None = None) -> dict:
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"),
        base_env="base",
        default_run_env=env or "base",
        env=env,
        merge_strategy={"parameters": "soft", "globals": "soft"},
    )
    return loader["parameters"]


def _hp(params: dict, method: str) -> dict:
    """The user's overrides of ``method``'s hyperparameters, made if absent."""
    return params["modelling"].setdefault(method, {}).setdefault("hyperparameters", {})


@pytest.mark.parametrize("env", [None, "geo", "starter"])
def test_shipped_parameters_are_valid(env):
    validate_parameters(_params(env))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["modelling"].update(scvi={"hyperparameters": {}}),
            "modelling.scvi: unknown",
        ),
        (
            lambda p: _hp(p, "totalvi").update(max_epochs=0),
            "modelling.totalvi.hyperparameters.max_epochs: Input should be greater than 0",
        ),
        (
            lambda p: _hp(p, "multigrate").update(n_latent=-3),
            "multigrate.hyperparameters.n_latent: Input should be greater than 0",
        ),
        (
            lambda p: _hp(p, "mofa").update(accelerator="tpu"),
            "mofa.hyperparameters.accelerator: Input should be 'auto', 'cpu' or 'gpu'",
        ),
        (
            lambda p: p["data_processing"].update(n_top_genes=0),
            "data_processing.n_top_genes",
        ),
        (
            lambda p: _hp(p, "totalvi").update(train_size=1.5),
            "totalvi.hyperparameters.train_size: Input should be less than or equal to 1",
        ),
        (
            lambda p: _hp(p, "totalvi").update(early_stopping_monitor="elbo"),
            "totalvi.hyperparameters.early_stopping_monitor: Input should be 'elbo_validation'",
        ),
        (
            lambda p: _hp(p, "multigrate").update(early_stopping_monitor="elbo_validation"),
            "Multigrate's train\\(\\) always monitors reconstruction_loss_validation",
        ),
        (lambda p: p["data_processing"].update(clr_axis=2), "data_processing.clr_axis"),
        (lambda p: p["columns"].pop("batch"), "columns.batch: Field required"),
        (
            lambda p: _hp(p, "totalvi").update(seed=3),
            "set the top-level 'seeds' list instead of a seed per model",
        ),
        (lambda p: p.update(seeds=[1, 1]), "seeds: Value error, seeds: expected distinct"),
        (lambda p: p.update(seeds="0,1"), "seeds: Value error, seeds: expected whole numbers"),
        (
            lambda p: p.update(training_length="long"),
            "training_length: Value error, unknown training length 'long'; known: demo, fast",
        ),
        (
            lambda p: p["evaluation"].update(metrics="everything"),
            "evaluation.metrics: Value error, evaluation.metrics: unknown preset 'everything'",
        ),
        (
            lambda p: p["evaluation"].update(metrics=["nmi", "nmj"]),
            r"unknown metrics \['nmj'\]",
        ),
        (lambda p: p["evaluation"].update(rank_by="best"), "evaluation.rank_by"),
        (lambda p: p["controls"].update(enabled="maybe"), "controls.enabled"),
    ],
)
def test_mistakes_are_named(change, message):
    params = copy.deepcopy(_params())
    change(params)
    with pytest.raises(ParameterError, match=message):
        validate_parameters(params)


def test_bad_parameters_stop_the_run_before_any_work(project):
    with pytest.raises(ParameterError, match="max_epochs"):
        run_kedro(
            project,
            runtime_params={"modelling": {"totalvi": {"hyperparameters": {"max_epochs": -1}}}},
        )
    assert not [path for path in (project / "data").rglob("*") if path.is_file()]
