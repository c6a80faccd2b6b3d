"""Versioned, atomic datasets of scverse containers (``.h5ad``, ``.h5mu``) on local files.

AnnData and MuData write through h5py, which needs a real file, so paths are local.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import fsspec
import h5py
import mudata as md
import pandas as pd
from anndata.io import read_elem, sparse_dataset
from kedro.io.core import AbstractVersionedDataset, DatasetError, Version
from kedro_datasets._typing import TablePreview

from cite_bench.io.atomic import atomic_path

_LOCAL = fsspec.filesystem("file")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DatasetError(f"{what} file not found: '{path}'. See the README for where to get it.")


class _H5Dataset(AbstractVersionedDataset[Any, Any]):
    """Shared logic of the AnnData and MuData datasets: versioned, atomic, local files."""

    _kind: str = ""

    def __init__(
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._load_args = dict(load_args or {})
        self._save_args = dict(save_args or {})
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(filepath),
            version=version,
            exists_function=_LOCAL.exists,
            glob_function=_LOCAL.glob,
        )

    def _read(self, path: Path) -> Any:
        raise NotImplementedError

    def _write(self, data: Any, path: Path) -> None:
        raise NotImplementedError

    def load(self) -> Any:
        path = Path(self._get_load_path())
        _require_file(path, self._kind)
        try:
            return self._read(path)
        except OSError as exc:
            raise DatasetError(f"'{path}' is not a readable {self._kind} file: {exc}") from exc

    def save(self, data: Any) -> None:
        path = Path(self._get_save_path())
        with atomic_path(path) as temporary:
            self._write(data, temporary)

    def preview(self) -> TablePreview:
        """Shapes and layers for kedro-viz, read in backed mode (the matrices stay on disk)."""
        path = Path(self._get_load_path())
        _require_file(path, self._kind)
        return TablePreview(self._overview(path).to_dict(orient="split"))

    def _overview(self, path: Path) -> pd.DataFrame:
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": str(self._filepath),
            "version": self._version,
            "load_args": self._load_args,
            "save_args": self._save_args,
        }

    def _exists(self) -> bool:
        try:
            return Path(self._get_load_path()).exists()
        except DatasetError:
            return False


class AnnDataDataset(_H5Dataset):
    """An ``AnnData`` object in an ``.h5ad`` file (``anndata.read_h5ad`` / ``write_h5ad``)."""

    _kind = "AnnData (.h5ad)"

    def _read(self, path: Path) -> ad.AnnData:
        return ad.read_h5ad(path, **self._load_args)

    def _write(self, data: ad.AnnData, path: Path) -> None:
        data.write_h5ad(path, **self._save_args)

    def _overview(self, path: Path) -> pd.DataFrame:
        return _modality_overview({"": ad.read_h5ad(path, backed="r")})


class MuDataDataset(_H5Dataset):
    """A ``MuData`` object in an ``.h5mu`` file (``mudata.read_h5mu`` / ``write_h5mu``)."""

    _kind = "MuData (.h5mu)"

    def _read(self, path: Path) -> md.MuData:
        return md.read_h5mu(path, **self._load_args)

    def _write(self, data: md.MuData, path: Path) -> None:
        data.write_h5mu(path, **self._save_args)

    def _overview(self, path: Path) -> pd.DataFrame:
        mdata = md.read_h5mu(path, backed=True)
        overview = _modality_overview(dict(mdata.mod))
        whole = {
            "modality": "(MuData)",
            "cells": mdata.n_obs,
            "features": mdata.n_vars,
            "layers": "",
            "obs columns": ", ".join(map(str, mdata.obs.columns)),
        }
        return pd.concat([pd.DataFrame([whole]), overview], ignore_index=True)


def _modality_overview(modalities: dict[str, ad.AnnData]) -> pd.DataFrame:
    rows = [
        {
            "modality": name or "(AnnData)",
            "cells": adata.n_obs,
            "features": adata.n_vars,
            "layers": ", ".join(str(layer) for layer in adata.layers if layer is not None),
            "obs columns": ", ".join(map(str, adata.obs.columns)),
        }
        for name, adata in modalities.items()
    ]
    return pd.DataFrame(rows)


_SPARSE_ENCODINGS = ("csr_matrix", "csc_matrix")


def read_h5ad_backed(path: Path, mode: str = "r") -> ad.AnnData:
    """``anndata.read_h5ad(path, backed=mode)``, but with the sparse layers left on disk too.

    anndata leaves a backed file's ``X`` on disk but loads every layer, and the GEO file's raw
    counts are a layer (1.9 GB at ~90,000 cells) that the pipeline needs only split into RNA
    and ADT: it reads them from disk a block of cells at a time. ``raw`` is not read (nothing
    uses it); files written before anndata 0.7 are read by anndata itself."""
    file = h5py.File(path, mode)
    if "encoding-type" not in file.attrs:
        file.close()
        return ad.read_h5ad(path, backed=mode)
    try:
        elements = {
            key: read_elem(file[key])
            for key in ("obs", "var", "obsm", "varm", "obsp", "varp", "uns")
            if key in file
        }
        layers = {
            name: sparse_dataset(element)
            if element.attrs.get("encoding-type") in _SPARSE_ENCODINGS
            else read_elem(element)
            for name, element in (file["layers"].items() if "layers" in file else ())
        }
        return ad.AnnData(filename=file, layers=layers, **elements)
    except BaseException:
        file.close()
        raise
