"""A schema for the project's parameters, checked when a run starts.

A typo in a model name or a zero epoch count should fail in the first second with the
parameter's full name, not after preprocessing or an hour of training.
"""

from __future__ import annotations

from typing import Any, Literal

from kedro.framework.hooks import hook_impl
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from cite_bench.methods import METHODS
from cite_bench.metrics import PRESETS, select_metrics
from cite_bench.pipelines.modelling.nodes import MULTIGRATE_MONITOR
from cite_bench.seeds import parse_seeds

Seed = Field(ge=0)


class ParameterError(ValueError):
    """Raised at start-up when parameters do not fit the schema."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Columns(_Block):
    batch: str
    label: str
    site: str
    donor: str
    phase: str


class Subsample(_Block):
    n_cells: PositiveInt | None
    seed: int = Seed


class DataProcessing(_Block):
    subsample: Subsample
    min_cells_per_batch: PositiveInt
    counts_layer: str
    max_adt_features: PositiveInt
    target_sum: PositiveFloat
    n_top_genes: PositiveInt
    clr_axis: Literal[0, 1]


class Hyperparameters(BaseModel):
    """Shared training settings; model-specific keys are allowed, and the usual ones checked."""

    model_config = ConfigDict(extra="allow")

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    deterministic: bool = True
    n_latent: PositiveInt | None = None
    n_factors: PositiveInt | None = None
    max_epochs: PositiveInt | None = None
    n_iterations: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    convergence_mode: Literal["fast", "medium", "slow"] | None = None
    # Early stopping (totalVI, Multigrate): null leaves the library's default.
    early_stopping: bool | None = None
    early_stopping_patience: PositiveInt | None = None
    early_stopping_monitor: (
        Literal["elbo_validation", "reconstruction_loss_validation", "kl_local_validation"] | None
    ) = None
    train_size: float | None = Field(default=None, gt=0, le=1)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    train_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_seed(cls, values: Any) -> Any:
        if isinstance(values, dict) and "seed" in values:
            raise ValueError("set the top-level 'seeds' list instead of a seed per model")
        return values


class Model(_Block):
    hyperparameters: Hyperparameters


class Scaling(_Block):
    min_control_range: float = Field(ge=0)
    flag_outside: tuple[float, float]


class Controls(_Block):
    enabled: bool


class Evaluation(_Block):
    metrics: str | list[str]
    rank_by: Literal["scaled", "raw"]
    scaling: Scaling
    n_neighbors: int = Field(ge=2)
    lisi_neighbors: int = Field(ge=2)
    leiden_resolutions: tuple[PositiveFloat, PositiveFloat, PositiveInt]
    leiden_flavor: Literal["igraph", "leidenalg"]
    leiden_seeds: list[int] = Field(min_length=1)
    leiden_seed_window: NonNegativeInt | None = None
    leiden_processes: PositiveInt | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Seed

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str | list[str]) -> str | list[str]:
        try:
            select_metrics(value)
        except ValueError as exc:
            raise ValueError(f"{exc}; presets: {', '.join(PRESETS)}") from None
        return value


class Cluster(_Block):
    """Read by cite_bench.runner.DaskRunner (which names the keys the same way)."""

    scheduler: str | None = None
    n_workers: PositiveInt = 2
    threads_per_worker: PositiveInt = 1
    memory_limit: str | None = None
    worker_resources: dict[str, PositiveFloat] = Field(default_factory=dict)
    resources: dict[str, dict[str, PositiveFloat]] = Field(default_factory=dict)
    dashboard_address: str | None = None


class Parameters(BaseModel):
    """The blocks this project reads; other top-level keys (e.g. ``demo``) pass through."""

    model_config = ConfigDict(extra="allow")

    columns: Columns
    data_processing: DataProcessing
    seeds: list[int]
    controls: Controls
    modelling: dict[str, Model]
    evaluation: Evaluation
    cluster: Cluster | None = None

    @field_validator("modelling")
    @classmethod
    def _multigrate_monitor(cls, value: dict[str, Model]) -> dict[str, Model]:
        block = value.get("multigrate")
        monitor = block.hyperparameters.early_stopping_monitor if block else None
        if monitor not in (None, MULTIGRATE_MONITOR):
            raise ValueError(
                "modelling.multigrate.hyperparameters.early_stopping_monitor: Multigrate's "
                f"train() always monitors {MULTIGRATE_MONITOR}; leave it out"
            )
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> list[int]:
        return parse_seeds(value)


def validate_parameters(params: dict[str, Any]) -> None:
    """Raise :class:`ParameterError` listing every parameter that does not fit the schema."""
    unknown = sorted(set(params.get("modelling") or {}) - set(METHODS))
    problems = [
        f"modelling.{name}: unknown method (known: {', '.join(sorted(METHODS))})"
        for name in unknown
    ]
    problems += [
        f"modelling.{name}: missing (every method in cite_bench.methods needs a block)"
        for name in METHODS
        if name not in (params.get("modelling") or {})
    ]
    known = {
        **params,
        "modelling": {k: v for k, v in (params.get("modelling") or {}).items() if k in METHODS},
    }
    try:
        Parameters.model_validate(known)
    except ValidationError as exc:
        for error in exc.errors():
            location = ".".join(str(part) for part in error["loc"])
            problems.append(f"{location}: {error['msg']}")
    if problems:
        raise ParameterError("Invalid parameters:\n  " + "\n  ".join(problems))


class ParameterValidationHook:
    """Check the merged parameters (files and ``--params``) before anything runs."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        validate_parameters(context.params)
