"""Weighted nearest neighbours (muon's implementation of Seurat's WNN) of RNA and protein.

Per-cell modality weights combine a kNN graph of the RNA (PCA of the log-normalised HVGs) with
one of the protein (PCA of the CLR values). Its output is the weighted cell graph, not an
embedding: each cell's ``n_neighbors`` nearest cells by WNN distance (``cite_bench.knn_graph``).
"""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from pydantic import PositiveInt

from cite_bench.knn_graph import graph_frame

from ._common import dense
from ._spec import Hyperparameters, Method, Trained
from .model_artifacts import RecipeModel


class WnnHyperparameters(Hyperparameters):
    n_pcs_rna: PositiveInt = 30  # PCA of the log-normalised HVGs
    n_pcs_protein: PositiveInt = 18  # PCA of the CLR protein values (Seurat's WNN vignette)
    n_neighbors_per_modality: PositiveInt = 20  # each modality's kNN graph (Seurat's k.nn)
    n_neighbors: PositiveInt = 90  # neighbours per cell in the WNN graph, as evaluation's search


def train(
    mdata: md.MuData, settings: WnnHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    import muon as mu
    import scanpy as sc

    cells = mdata["rna"].obs_names
    modalities = {}
    for name, source, n_pcs in (
        ("rna", mdata["rna"], settings.n_pcs_rna),
        ("prot", mdata["adt"][cells], settings.n_pcs_protein),
    ):
        modality = ad.AnnData(X=dense(source.X).astype(np.float32), obs=pd.DataFrame(index=cells))
        n_comps = min(n_pcs, modality.n_vars - 1, modality.n_obs - 1)
        sc.pp.pca(modality, n_comps=n_comps, random_state=seed)
        sc.pp.neighbors(
            modality,
            n_neighbors=settings.n_neighbors_per_modality,
            use_rep="X_pca",
            random_state=seed,
        )
        modalities[name] = modality
    joint = md.MuData(modalities)
    n_neighbors = min(settings.n_neighbors, joint.n_obs - 1)
    mu.pp.neighbors(joint, n_neighbors=n_neighbors, key_added="wnn", random_state=seed)
    graph = graph_frame(joint.obsp["wnn_distances"], joint.obs_names, n_neighbors)
    weights = {
        name: round(float(joint.obs[f"{name}:mod_weight"].mean()), 4)
        for name in modalities
        if f"{name}:mod_weight" in joint.obs
    }
    recipe = {**settings.model_dump(), "seed": seed, "mean_modality_weights": weights}
    return Trained(
        model=RecipeModel(recipe), output=graph, details={"mean_modality_weights": weights}
    )


METHOD = Method(
    name="wnn",
    role="integrated",
    train=train,
    hyperparameters=WnnHyperparameters,
    description="Weighted nearest neighbours (muon, as Seurat's WNN) of RNA and protein: a graph",
    model_class="cite_bench.methods.model_artifacts.RecipeModel",
    output="graph",
)
