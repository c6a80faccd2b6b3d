"""A schema for the project's parameters, checked when a run starts.

A typo in a model name or a zero epoch count should fail in the first second with the
parameter's full name, not after preprocessing or an hour of training.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    create_model,
    field_validator,
)

from cite_bench.methods import (
    DEFAULT_LENGTH,
    METHODS,
    Method,
    overrides_of,
    training_lengths,
    unresolvable_model_classes,
)
from cite_bench.metrics import PRESETS, select_metrics
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
    seed: int = Field(default=0, ge=0)


class DataProcessing(_Block):
    subsample: Subsample
    min_cells_per_batch: PositiveInt
    counts_layer: str
    max_adt_features: PositiveInt
    target_sum: PositiveFloat
    n_top_genes: PositiveInt
    clr_axis: Literal[0, 1]


def _method_block(method: Method) -> type[BaseModel]:
    """``modelling.<method>``: the method's own typed hyperparameters, every key optional (the
    defaults are the method's)."""
    return create_model(
        f"{method.name}_block",
        __config__=ConfigDict(extra="forbid"),
        hyperparameters=(method.hyperparameters, Field(default_factory=method.hyperparameters)),
    )


def modelling_schema(methods: Mapping[str, Method] = METHODS) -> type[BaseModel]:
    """The ``modelling`` block composed of each method's block (none is required)."""
    fields: dict[str, Any] = {
        name: (_method_block(method) | None, None) for name, method in methods.items()
    }
    return create_model("Modelling", __config__=ConfigDict(extra="forbid"), **fields)


Modelling = modelling_schema()


class Scaling(_Block):
    min_control_range: float = Field(default=0.01, ge=0)
    flag_outside: tuple[float, float] = (-0.5, 1.5)


class Controls(_Block):
    enabled: bool


class Evaluation(_Block):
    """The evaluation settings; the defaults are conf/base's (a test holds them equal), so the
    notebook API (``cite_bench.api``) scores as ``kedro run`` does."""

    metrics: str | list[str] = "scib"
    rank_by: Literal["scaled", "raw"] = "scaled"
    scaling: Scaling = Field(default_factory=Scaling)
    n_neighbors: int = Field(default=15, ge=2)
    lisi_neighbors: int = Field(default=90, ge=2)
    leiden_resolutions: tuple[PositiveFloat, PositiveFloat, PositiveInt] = (0.1, 2.0, 20)
    leiden_flavor: Literal["igraph", "leidenalg"] = "igraph"
    leiden_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    leiden_seed_window: NonNegativeInt | None = None
    leiden_processes: PositiveInt | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(default=0, ge=0)

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
    training_length: str = DEFAULT_LENGTH
    modelling: Modelling = Field(default_factory=Modelling)
    evaluation: Evaluation
    cluster: Cluster | None = None

    @field_validator("training_length")
    @classmethod
    def _length(cls, value: str) -> str:
        if value not in training_lengths():
            raise ValueError(
                f"unknown training length {value!r}; known: {', '.join(training_lengths())}"
            )
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> list[int]:
        return parse_seeds(value)


def validate_parameters(params: dict[str, Any]) -> None:
    """Raise :class:`ParameterError` listing every parameter that does not fit the schema,
    the settings each method will train with included (defaults, training length, overrides)."""
    modelling = params.get("modelling") or {}
    problems = [
        f"modelling.{name}: unknown method (known: {', '.join(sorted(METHODS))})"
        for name in sorted(set(modelling) - set(METHODS))
    ]
    problems += unresolvable_model_classes(METHODS)
    known = {**params, "modelling": {k: v for k, v in modelling.items() if k in METHODS}}
    try:
        checked = Parameters.model_validate(known)
    except ValidationError as exc:
        problems += [_problem(error) for error in exc.errors()]
    else:
        for name, method in METHODS.items():
            try:
                method.settings(overrides_of(modelling, name), checked.training_length)
            except ValidationError as exc:
                prefix = f"modelling.{name}.hyperparameters ({checked.training_length})"
                problems += [f"{prefix}: {_problem(error)}" for error in exc.errors()]
    if problems:
        raise ParameterError("Invalid parameters:\n  " + "\n  ".join(problems))


def _problem(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else str(error["msg"])


class ParameterValidationHook:
    """Check the merged parameters (files and ``--params``) before anything runs."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        validate_parameters(context.params)
