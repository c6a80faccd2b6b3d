"""Positive control for batch removal: the unintegrated embedding shuffled among the cells of
each cell type, so that batches mix perfectly within every type while the types keep their
place (Open Problems' "random integration by cell type")."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md

from ._pca import unintegrated_latent
from ._spec import LatentHyperparameters, Method, Trained
from .controls import control_result, shuffled_within


def train(
    mdata: md.MuData, settings: LatentHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    latent = unintegrated_latent(mdata, settings.n_latent, seed)
    labels = mdata.obs.loc[mdata["rna"].obs_names, columns["label"]].astype(str).to_numpy()
    return control_result(mdata, settings, seed, shuffled_within(latent, labels, seed))


METHOD = Method(
    name="shuffled_within_cell_types",
    role="control",
    train=train,
    hyperparameters=LatentHyperparameters,
    description="Positive control for batch removal: the unintegrated embedding shuffled within "
    "each cell type, so batches mix perfectly while types keep their place",
    model_class="cite_bench.methods.model_artifacts.RecipeModel",
    needs_labels=True,
)
