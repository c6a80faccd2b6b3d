"""The PCA that the baselines fit and the shuffling controls permute, without densifying."""

from __future__ import annotations

import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from ._common import embedding_frame
from ._spec import Trained
from .model_artifacts import PcaModel


def fit_pca(
    matrix: sparse.csr_matrix, features: pd.Index, scale: np.ndarray, n_latent: int, seed: int
) -> tuple[PcaModel, np.ndarray]:
    """PCA of ``matrix`` (cells x features), centred and divided by ``scale``, that never
    densifies it: the scaling rescales the stored values and the centring stays implicit (ARPACK
    on a sparse matrix, as ``sc.pp.pca`` does), so 90,000 cells x 2,000 HVGs need the sparse
    matrix's memory, not 1.5 GB per dense copy. ARPACK starts from a vector drawn from the seed."""
    from sklearn.decomposition import PCA

    scale = np.where(scale == 0, 1.0, scale)
    scaled = matrix if np.all(scale == 1) else columns_divided(matrix, scale)
    n_components = min(n_latent, min(matrix.shape) - 1)  # ARPACK's limit
    pca = PCA(n_components=n_components, svd_solver="arpack", random_state=seed)
    pca.fit(scaled)
    del scaled
    mean = np.asarray(matrix.mean(axis=0)).ravel()
    model = PcaModel(features.to_numpy(), mean, scale, pca.components_)
    model.unexplained_variance = float(1 - pca.explained_variance_ratio_.sum())
    return model, model.transform(matrix)


def pca_result(
    mdata: md.MuData,
    matrix: sparse.csr_matrix,
    features: pd.Index,
    scale: np.ndarray,
    n_latent: int,
    seed: int,
) -> Trained:
    """A PCA baseline's result: fitted in one pass, its "loss" the share of variance left
    unexplained."""
    model, latent = fit_pca(matrix, features, scale, n_latent, seed)
    return Trained(
        model=model,
        output=embedding_frame(latent, mdata["rna"].obs_names),
        final_training_loss=model.unexplained_variance,
        n_epochs_trained=1,
    )


def columns_divided(matrix: sparse.csr_matrix, divisors: np.ndarray) -> sparse.csr_matrix:
    """A copy of ``matrix`` with each column divided by its divisor: scaling keeps zeros zero,
    so the copy stays as sparse as the original."""
    scaled = matrix.copy()
    scaled.data /= divisors[scaled.indices]
    return scaled


def rna_matrix(mdata: md.MuData) -> sparse.csr_matrix:
    return sparse.csr_matrix(mdata["rna"].X, dtype=np.float64)


def unintegrated_latent(mdata: md.MuData, n_latent: int, seed: int) -> np.ndarray:
    """The ``pca_rna`` baseline's embedding, which the shuffling controls permute."""
    matrix = rna_matrix(mdata)
    _, latent = fit_pca(matrix, mdata["rna"].var_names, np.ones(matrix.shape[1]), n_latent, seed)
    return embedding_frame(latent, mdata["rna"].obs_names).to_numpy()
