"""The methods this benchmark runs: one module each, listed once in ``_MODULES``.

A method module (``cite_bench/methods/<name>.py``) holds its trainer, its typed hyperparameters
(whose defaults are the demo's) and its ``METHOD`` spec: role, output, the model class the model
store keeps, GPU use, training lengths per dataset and the short settings tests use. Everything
that needs the list of methods reads ``METHODS``: the pipelines (one namespace per method), the
parameter schema, the model store, tables, figures, tracking, the benchmark, the docs and the CLI.
Adding a method is a module and one line in ``_MODULES``.

Roles:
- ``integrated``: the integration methods under test;
- ``baseline``: no integration (PCA), the floor an integration method has to beat;
- ``control``: embeddings whose scores are known in advance (Open Problems' controls), which
  bound every metric on every dataset, so that scores can be scaled between them;
- ``external``: embeddings computed outside the project (room for users' own methods).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Mapping
from typing import Any

from ._spec import (
    DEFAULT_LENGTH,
    FAST_LENGTH,
    ROLES,
    SCALING_ROLES,
    Hyperparameters,
    Method,
    Output,
    Role,
    Trained,
)

__all__ = [
    "DEFAULT_LENGTH",
    "FAST_LENGTH",
    "METHODS",
    "MODEL_CLASSES",
    "ROLES",
    "SCALING_ROLES",
    "Hyperparameters",
    "Method",
    "Output",
    "Role",
    "Trained",
    "methods_with_role",
    "resolved_settings",
    "role_of",
    "training_lengths",
    "unresolvable_model_classes",
    "unintegrated_reference",
]

# One line per method, in the order tables list them.
_MODULES = (
    "mofa",
    "totalvi",
    "multigrate",
    "wnn",
    "scvi_rna",
    "pca_rna",
    "pca_rna_adt",
    "random_gaussian",
    "shuffled_cells",
    "cell_type_embedding",
    "cell_type_embedding_jittered",
    "shuffled_within_cell_types",
)


def registry(modules: Iterable[str]) -> dict[str, Method]:
    """The ``METHOD`` of each module by name; a name given twice is a mistake."""
    methods: dict[str, Method] = {}
    for module in modules:
        method = importlib.import_module(f"{__name__}.{module}").METHOD
        if method.name in methods:
            raise ValueError(f"Two method modules declare the name {method.name!r}.")
        methods[method.name] = method
    if sum(method.unintegrated_reference for method in methods.values()) > 1:
        raise ValueError("More than one method is marked as the unintegrated reference.")
    return methods


def unresolvable_model_classes(methods: Mapping[str, Method]) -> list[str]:
    """The methods whose ``model_class`` could not be loaded: a project class that its module
    lacks, or a package that is not installed. Checked at start-up, so that a model is not
    found unstorable only after its training."""
    problems = []
    for name, method in methods.items():
        module, _, attribute = method.model_class.rpartition(".")
        if module.startswith(f"{__name__}."):
            found = hasattr(importlib.import_module(module), attribute)
        else:  # the package alone: importing scvi-tools takes seconds
            found = importlib.util.find_spec(module.split(".")[0]) is not None
        if not found:
            problems.append(f"{name}: model_class {method.model_class!r} cannot be loaded")
    return problems


METHODS: dict[str, Method] = registry(_MODULES)
# The model store's allow-list: the classes the methods declare.
MODEL_CLASSES: frozenset[str] = frozenset(method.model_class for method in METHODS.values())


def methods_with_role(*roles: Role) -> list[str]:
    """Names of the methods in ``roles``, in registry order."""
    return [name for name, method in METHODS.items() if method.role in roles]


def unintegrated_reference(methods: Mapping[str, Method] | None = None) -> str:
    """The method whose embedding the reference-based metrics compare the others with: the one
    ``methods`` marks, else the registry's (a subset of methods is still compared with it)."""
    for candidates in (methods or {}, METHODS):
        marked = [name for name, method in candidates.items() if method.unintegrated_reference]
        if marked:
            return marked[0]
    raise ValueError("No method is marked as the unintegrated reference.")


def role_of(name: str) -> Role:
    """The role of a method; names outside the registry are users' external embeddings."""
    return METHODS[name].role if name in METHODS else "external"


def training_lengths(methods: Mapping[str, Method] = METHODS) -> list[str]:
    """Every ``training_length`` a run may ask for."""
    named = {length for method in methods.values() for length in method.lengths}
    return [DEFAULT_LENGTH, FAST_LENGTH, *sorted(named - {DEFAULT_LENGTH, FAST_LENGTH})]


def overrides_of(modelling: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """The user's ``modelling.<name>.hyperparameters`` (none: the method's defaults)."""
    block = (modelling or {}).get(name) or {}
    return dict(block.get("hyperparameters") or {})


def resolved_settings(params: Mapping[str, Any], name: str) -> Hyperparameters:
    """The settings ``name`` trains with under these parameters: its defaults, the run's
    ``training_length`` and the user's overrides, in that order."""
    return METHODS[name].settings(
        overrides_of(params.get("modelling"), name),
        params.get("training_length", DEFAULT_LENGTH),
    )
