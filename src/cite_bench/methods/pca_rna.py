"""No integration: PCA of the log-normalised highly variable genes (the unintegrated reference)."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md
import numpy as np

from ._pca import pca_result, rna_matrix
from ._spec import LatentHyperparameters, Method, Trained


def train(
    mdata: md.MuData, settings: LatentHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    matrix = rna_matrix(mdata)
    scale = np.ones(matrix.shape[1])
    return pca_result(mdata, matrix, mdata["rna"].var_names, scale, settings.n_latent, seed)


METHOD = Method(
    name="pca_rna",
    role="baseline",
    train=train,
    hyperparameters=LatentHyperparameters,
    description="No integration: PCA of the log-normalised highly variable genes",
    model_class="cite_bench.methods.model_artifacts.PcaModel",
    unintegrated_reference=True,
)
