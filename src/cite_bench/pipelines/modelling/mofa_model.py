"""A trained MOFA+ model in the form mofapy2 writes it: one HDF5 file.

The file is the standard MOFA model format, so it opens in ``mofax`` or R's ``MOFA2`` for
downstream analysis. The class gives it the ``save``/``load`` interface of scvi-tools models so
that one catalog dataset stores every model.
"""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np


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
