"""What a method declares about itself (``Method``), its typed settings and what training returns.

Each method module (``cite_bench/methods/<name>.py``) defines one ``Method``: the registry, the
pipelines, the parameter schema, the model store, the docs and the tests read everything about a
method from it, so adding one touches that module and one line of the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import mudata as md
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

Role = Literal["integrated", "baseline", "control", "external"]
Output = Literal["embedding", "graph"]
ROLES: tuple[Role, ...] = ("integrated", "baseline", "external", "control")
# The methods scores are scaled between: controls and the no-integration baselines.
SCALING_ROLES: tuple[Role, ...] = ("control", "baseline")
# Training lengths every method has: ``demo`` is the hyperparameters' defaults (sized for the
# built-in demo on 2 CPU cores), ``fast`` the method's ``fast`` settings (tests, smoke runs).
DEFAULT_LENGTH = "demo"
FAST_LENGTH = "fast"


class Hyperparameters(BaseModel):
    """A method's settings. Defaults are the demo's; a typo in a key fails at start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_seed(cls, values: Any) -> Any:
        if isinstance(values, Mapping) and "seed" in values:
            raise ValueError("set the top-level 'seeds' list instead of a seed per model")
        return values


class TrainedHyperparameters(Hyperparameters):
    """Settings shared by the methods that train on torch or mofapy2."""

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"  # auto: the GPU when there is one
    deterministic: bool = True  # deterministic torch kernels: identical numbers on a rerun


class LatentHyperparameters(Hyperparameters):
    """Settings of the methods that only need an embedding width."""

    n_latent: PositiveInt = 20


class VaeHyperparameters(TrainedHyperparameters):
    """scvi-tools-style models (totalVI, scVI, Multigrate): size, length and early stopping."""

    n_latent: PositiveInt = 20
    max_epochs: PositiveInt = 60
    batch_size: PositiveInt = 256
    # Early stopping: training ends once the monitored validation loss (on the 1 - train_size
    # cells not trained on) has not improved for early_stopping_patience epochs; null leaves
    # the library's default.
    early_stopping: bool | None = True
    early_stopping_patience: PositiveInt | None = None
    train_size: float | None = Field(default=None, gt=0, le=1)  # null: the library's 0.9
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to the model class
    train_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to its train()


class ScviToolsHyperparameters(VaeHyperparameters):
    """scvi-tools' own models (totalVI, scVI), with its early-stopping defaults."""

    early_stopping_patience: PositiveInt | None = 45
    early_stopping_monitor: (
        Literal["elbo_validation", "reconstruction_loss_validation", "kl_local_validation"] | None
    ) = "elbo_validation"


H = TypeVar("H", bound=Hyperparameters)


@dataclass
class Trained:
    """What one training run returns: the model to store, its output and how training went."""

    model: Any
    # Cells x latent dimensions indexed by barcode, or a graph (``cite_bench.knn_graph``).
    output: pd.DataFrame
    device: str = "cpu"
    final_training_loss: float | None = None
    n_epochs_trained: int = 0
    stopped_early: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)  # method-specific read-outs


Trainer = Callable[[md.MuData, H, int, Mapping[str, str]], Trained]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Method[H: Hyperparameters]:
    """One method and everything the project needs to know about it."""

    name: str
    role: Role
    train: Trainer
    hyperparameters: type[H]
    description: str
    # The class ``ModelDataset`` stores and loads, by public import path: the model store's
    # allow-list is these, so a method's models load without a separate list to keep.
    model_class: str
    output: Output = "embedding"
    needs_labels: bool = False
    # The unintegrated embedding that reference-based metrics (PCR comparison, cell-cycle
    # conservation) compare every other embedding with.
    unintegrated_reference: bool = False
    # Trains faster on a GPU (``accelerator: auto``): its training node carries the tag ``gpu``,
    # which the Dask runner maps to a GPU worker resource (cluster.resources).
    uses_gpu: bool = False
    # Settings by training length (``training_length``) where a dataset needs other ones than
    # the defaults, e.g. ``{"starter": {"max_epochs": 400}}``.
    lengths: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Short settings for tests and smoke runs (``training_length: fast``).
    fast: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "lengths", _frozen({k: _frozen(v) for k, v in self.lengths.items()})
        )
        object.__setattr__(self, "fast", _frozen(self.fast))

    def settings(
        self, overrides: Mapping[str, Any] | None = None, length: str = DEFAULT_LENGTH
    ) -> H:
        """The hyperparameters for a training length, with the user's ``overrides`` on top."""
        base = self.fast if length == FAST_LENGTH else self.lengths.get(length, {})
        return self.hyperparameters.model_validate({**base, **(overrides or {})})

    def skip_reason(
        self, obs: pd.DataFrame, columns: Mapping[str, str], controls: Mapping[str, Any]
    ) -> str | None:
        """Why this method does not run on these cells with these settings, or ``None``."""
        if self.role == "control" and not controls.get("enabled", True):
            return "controls are switched off (controls.enabled=false)"
        if self.needs_labels:
            label = columns["label"]
            if label not in obs or not obs[label].notna().any():
                return f"needs cell-type labels (obs column '{label}'), and there are none"
        return None
