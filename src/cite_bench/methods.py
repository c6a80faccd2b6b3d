"""The methods this benchmark runs, each listed once, with its role and what it outputs.

Everything that needs the list of methods reads ``METHODS``: the modelling and evaluation
pipelines (one namespace per method), the parameter schema, tables, figures, tracking, the
benchmark and the command line. Adding a method is a training function in
``pipelines/modelling/nodes.py``, an entry here and a parameter block in
``conf/base/parameters_modelling.yml``.

Roles:
- ``integrated``: the integration methods under test;
- ``baseline``: no integration (PCA), the floor an integration method has to beat;
- ``control``: embeddings whose scores are known in advance (Open Problems' controls), which
  bound every metric on every dataset, so that scores can be scaled between them;
- ``external``: embeddings computed outside the project (room for users' own methods).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from cite_bench.pipelines.modelling import nodes as trainers

Role = Literal["integrated", "baseline", "control", "external"]
Output = Literal["embedding", "graph"]
ROLES: tuple[Role, ...] = ("integrated", "baseline", "external", "control")
# The methods scores are scaled between: controls and the no-integration baselines.
SCALING_ROLES: tuple[Role, ...] = ("control", "baseline")


@dataclass(frozen=True)
class Method:
    name: str
    role: Role
    train: Callable[..., trainers.TrainingResult]
    description: str
    output: Output = "embedding"
    needs_labels: bool = False
    # The unintegrated embedding that reference-based metrics (PCR comparison, cell-cycle
    # conservation) compare every other embedding with.
    unintegrated_reference: bool = False
    # Trains faster on a GPU (``accelerator: auto``): its training node carries the tag ``gpu``,
    # which the Dask runner maps to a GPU worker resource (cluster.resources).
    uses_gpu: bool = False

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


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "mofa",
            "integrated",
            trainers.train_mofa,
            "MOFA+ (mofapy2 via muon) on log-normalised RNA and CLR ADT",
        ),
        Method(
            "totalvi",
            "integrated",
            trainers.train_totalvi,
            "totalVI (scvi-tools) on raw RNA and protein counts, batch-aware",
            uses_gpu=True,
        ),
        Method(
            "multigrate",
            "integrated",
            trainers.train_multigrate,
            "Multigrate (MultiVAE) on raw RNA counts and CLR ADT, batch-aware",
            uses_gpu=True,
        ),
        Method(
            "wnn",
            "integrated",
            trainers.train_wnn,
            "Weighted nearest neighbours (muon, as Seurat's WNN) of RNA and protein: a graph",
            output="graph",
        ),
        Method(
            "pca_rna",
            "baseline",
            trainers.train_pca_rna,
            "No integration: PCA of the log-normalised highly variable genes",
            unintegrated_reference=True,
        ),
        Method(
            "pca_rna_adt",
            "baseline",
            trainers.train_pca_rna_adt,
            "No integration: PCA of standardised RNA and ADT, each modality weighted equally",
        ),
        Method(
            "random_gaussian",
            "control",
            trainers.train_random_gaussian,
            "Negative control: standard normal coordinates, blind to the data",
        ),
        Method(
            "shuffled_cells",
            "control",
            trainers.train_shuffled_cells,
            "Negative control: the unintegrated embedding with its cells shuffled",
        ),
        Method(
            "cell_type_embedding",
            "control",
            trainers.train_cell_type_embedding,
            "Positive control for bio conservation: the cell-type labels, one-hot encoded",
            needs_labels=True,
        ),
        Method(
            "cell_type_embedding_jittered",
            "control",
            trainers.train_cell_type_embedding,
            "Positive control for bio conservation: one-hot cell types plus uniform jitter",
            needs_labels=True,
        ),
        Method(
            "shuffled_within_cell_types",
            "control",
            trainers.train_shuffled_within_cell_types,
            "Positive control for batch removal: the unintegrated embedding shuffled within "
            "each cell type, so batches mix perfectly while types keep their place",
            needs_labels=True,
        ),
    )
}


def methods_with_role(*roles: Role) -> list[str]:
    """Names of the methods in ``roles``, in registry order."""
    return [name for name, method in METHODS.items() if method.role in roles]


def unintegrated_reference() -> str:
    """The method whose embedding the reference-based metrics compare the others with."""
    (name,) = (name for name, method in METHODS.items() if method.unintegrated_reference)
    return name


def role_of(name: str) -> Role:
    """The role of a method; names outside the registry are users' external embeddings."""
    return METHODS[name].role if name in METHODS else "external"
