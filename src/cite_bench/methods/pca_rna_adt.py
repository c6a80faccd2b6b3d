"""No integration: PCA of standardised RNA and ADT side by side, each modality weighted to
carry the same total variance."""

from __future__ import annotations

from collections.abc import Mapping

import mudata as md
import numpy as np
from scipy import sparse

from ._pca import pca_result
from ._spec import LatentHyperparameters, Method, Trained


def train(
    mdata: md.MuData, settings: LatentHyperparameters, seed: int, columns: Mapping[str, str]
) -> Trained:
    from sklearn.utils.sparsefuncs import mean_variance_axis

    rna, adt = mdata["rna"], mdata["adt"][mdata["rna"].obs_names]
    # RNA stays sparse; the few ADT columns are dense-ish and are stored sparse beside it.
    matrix = sparse.hstack(
        [sparse.csr_matrix(rna.X), sparse.csr_matrix(adt.X)], format="csr", dtype=np.float64
    )
    _, variance = mean_variance_axis(matrix, axis=0)
    # Standardised, a modality's total variance is its number of features: dividing each
    # feature by sqrt(n_features of its modality) more makes both totals 1.
    widths = np.repeat([rna.n_vars, adt.n_vars], [rna.n_vars, adt.n_vars])
    scale = np.sqrt(variance * widths)
    features = rna.var_names.append(adt.var_names)
    return pca_result(mdata, matrix, features, scale, settings.n_latent, seed)


METHOD = Method(
    name="pca_rna_adt",
    role="baseline",
    train=train,
    hyperparameters=LatentHyperparameters,
    description="No integration: PCA of standardised RNA and ADT, each modality weighted equally",
    model_class="cite_bench.methods.model_artifacts.PcaModel",
)
