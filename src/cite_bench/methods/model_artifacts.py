"""Trained models that are not scvi-tools models, given their ``save``/``load`` interface so
that one catalog dataset (``cite_bench.datasets.ModelDataset``) stores every model.

MOFA+ is kept in the HDF5 file mofapy2 writes, the standard MOFA model format, so it opens in
``mofax`` or R's ``MOFA2`` for downstream analysis.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
from scipy import sparse


class MofaModel:
    """The bytes of a mofapy2 HDF5 model file, with a few read-outs for run summaries."""

    FILE_NAME = "model.hdf5"

    def __init__(self, hdf5: bytes) -> None:
        self.hdf5 = hdf5

    def save(self, dir_path: str, overwrite: bool = False) -> None:
        path = Path(dir_path)
        path.mkdir(parents=True, exist_ok=True)
        target = path / self.FILE_NAME
        if target.exists() and not overwrite:
            raise FileExistsError(f"'{target}' exists; pass overwrite=True to replace it.")
        target.write_bytes(self.hdf5)

    @classmethod
    def load(cls, dir_path: str) -> MofaModel:
        return cls((Path(dir_path) / cls.FILE_NAME).read_bytes())

    def _elbo(self) -> np.ndarray:
        with h5py.File(io.BytesIO(self.hdf5), "r") as handle:
            elbo = np.asarray(handle["training_stats/elbo"][()], dtype=float)
        return elbo[np.isfinite(elbo)]

    def final_elbo(self) -> float | None:
        """The evidence lower bound at the last iteration (higher is better)."""
        elbo = self._elbo()
        return float(elbo[-1]) if elbo.size else None

    def n_iterations(self) -> int:
        return int(self._elbo().size)

    def factors(self) -> np.ndarray:
        """Cells x factors, concatenated over groups in file order."""
        with h5py.File(io.BytesIO(self.hdf5), "r") as handle:
            groups = handle["expectations/Z"]
            return np.concatenate([groups[g][()].T for g in groups], axis=0)


class PcaModel:
    """A fitted PCA baseline: feature centring and scaling, and the principal axes."""

    FILE_NAME = "pca.npz"

    def __init__(
        self, features: np.ndarray, mean: np.ndarray, scale: np.ndarray, components: np.ndarray
    ) -> None:
        self.features = np.asarray(features, dtype=str)
        self.mean, self.scale, self.components = mean, scale, components

    def transform(self, matrix: np.ndarray | sparse.spmatrix) -> np.ndarray:
        """``((matrix - mean) / scale) @ components.T`` with the centring and scaling moved onto
        the components, so that a sparse matrix is never densified (nor copied)."""
        axes = (self.components / self.scale).T
        return np.asarray(matrix @ axes) - self.mean @ axes

    def save(self, dir_path: str, overwrite: bool = False) -> None:
        target = Path(dir_path) / self.FILE_NAME
        if target.exists() and not overwrite:
            raise FileExistsError(f"'{target}' exists; pass overwrite=True to replace it.")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            target,
            features=self.features,
            mean=self.mean,
            scale=self.scale,
            components=self.components,
        )

    @classmethod
    def load(cls, dir_path: str) -> PcaModel:
        with np.load(Path(dir_path) / cls.FILE_NAME) as saved:
            return cls(saved["features"], saved["mean"], saved["scale"], saved["components"])


class RecipeModel:
    """A method with nothing trained (a control, WNN): its settings are what is kept."""

    FILE_NAME = "recipe.json"

    def __init__(self, recipe: dict) -> None:
        self.recipe = dict(recipe)

    def save(self, dir_path: str, overwrite: bool = False) -> None:
        target = Path(dir_path) / self.FILE_NAME
        if target.exists() and not overwrite:
            raise FileExistsError(f"'{target}' exists; pass overwrite=True to replace it.")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.recipe, indent=2, default=str))

    @classmethod
    def load(cls, dir_path: str) -> RecipeModel:
        return cls(json.loads((Path(dir_path) / cls.FILE_NAME).read_text()))
