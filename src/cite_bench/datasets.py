"""Kedro datasets for scverse containers and trained models.

Every dataset that writes does so atomically: the object is written to a hidden temporary path
beside the target and renamed over it only once the write has finished, so a crash or a kill
never leaves a half-written artifact under the final name. Paths are local (AnnData and MuData
write through h5py, which needs a real file).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import fsspec
import kedro_datasets.json
import kedro_datasets.matplotlib
import kedro_datasets.pandas
import kedro_datasets.text
import mudata as md
import numpy as np
import pandas as pd
from kedro.io.core import (
    AbstractDataset,
    AbstractVersionedDataset,
    DatasetError,
    Version,
)
from kedro_datasets._typing import TablePreview

from cite_bench.simulation import simulate_cite_seq

_LOCAL = fsspec.filesystem("file")


def _temporary_sibling(target: Path, directory: bool = False) -> Path:
    """A new hidden file or folder beside ``target``, on the same filesystem."""
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    handle, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
    os.close(handle)
    return Path(name)


def _publish(temporary: Path, target: Path) -> None:
    """Move a finished temporary into place in one rename."""
    # mkstemp/mkdtemp create private entries: give the artifact the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod((0o777 if temporary.is_dir() else 0o666) & ~umask)
    if temporary.is_dir() and target.exists():
        # A directory cannot be renamed over a non-empty one: swap via a second rename.
        stale = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(stale)
        temporary.rename(target)
        shutil.rmtree(stale)
    else:
        os.replace(temporary, target)


def _discard(temporary: Path) -> None:
    if temporary.is_dir():
        shutil.rmtree(temporary)
    else:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` and move it into place only on success."""
    temporary = _temporary_sibling(target, directory)
    try:
        yield temporary
        _publish(temporary, target)
    finally:
        if temporary.exists():
            _discard(temporary)


class _AtomicSave:
    """Make a kedro-datasets file dataset write atomically on the local filesystem.

    While ``save`` runs, the dataset's save path points at a temporary sibling; the finished
    file is renamed into place before Kedro checks versions, and discarded on failure.
    """

    _staged: tuple[Path, Path] | None = None
    _saving: bool = False

    def save(self, data: Any) -> None:
        self._saving = True
        try:
            super().save(data)
            self._commit()
        finally:
            self._saving = False
            if self._staged is not None:
                _discard(self._staged[0])
                self._staged = None

    def _get_save_path(self) -> PurePosixPath:
        path = super()._get_save_path()
        if not self._saving or getattr(self, "_protocol", "file") != "file":
            return path
        if self._staged is None:
            final = Path(path)
            self._staged = (_temporary_sibling(final), final)
        return PurePosixPath(self._staged[0])

    def _invalidate_cache(self) -> None:
        # kedro-datasets call this at the end of a successful write.
        self._commit()
        super()._invalidate_cache()

    def _commit(self) -> None:
        if self._staged is not None:
            temporary, final = self._staged
            self._staged = None
            _publish(temporary, final)


class ParquetDataset(_AtomicSave, kedro_datasets.pandas.ParquetDataset):
    """``kedro_datasets.pandas.ParquetDataset`` with atomic local writes."""


class JSONDataset(_AtomicSave, kedro_datasets.json.JSONDataset):
    """``kedro_datasets.json.JSONDataset`` with atomic local writes."""


class TextDataset(_AtomicSave, kedro_datasets.text.TextDataset):
    """``kedro_datasets.text.TextDataset`` with atomic local writes."""


class MatplotlibDataset(_AtomicSave, kedro_datasets.matplotlib.MatplotlibDataset):
    """``kedro_datasets.matplotlib.MatplotlibDataset`` (one figure) with atomic local writes."""


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


class CiteSeqFilesDataset(AbstractDataset[None, md.MuData]):
    """Separate RNA and ADT ``.h5ad`` files of the same cells, read as one ``MuData`` with
    modalities ``rna`` and ``adt``. Read-only: raw inputs are never written."""

    def __init__(
        self, *, rna_filepath: str, adt_filepath: str, metadata: dict[str, Any] | None = None
    ) -> None:
        self._paths = {"rna": Path(rna_filepath), "adt": Path(adt_filepath)}
        self.metadata = metadata

    def load(self) -> md.MuData:
        modalities = {}
        for name, path in self._paths.items():
            _require_file(path, f"{name.upper()} AnnData (.h5ad)")
            try:
                modalities[name] = ad.read_h5ad(path)
            except OSError as exc:
                raise DatasetError(f"'{path}' is not a readable .h5ad file: {exc}") from exc
        # Keep each modality's own cells: matching barcodes is checked by the pipeline, which
        # can say how many differ.
        return md.MuData(modalities, axis=0)

    def save(self, data: md.MuData) -> None:
        raise DatasetError("CiteSeqFilesDataset is read-only: raw inputs are never written.")

    def _describe(self) -> dict[str, Any]:
        return {name: str(path) for name, path in self._paths.items()}

    def _exists(self) -> bool:
        return all(path.is_file() for path in self._paths.values())


class SimulatedCiteSeqDataset(AbstractDataset[None, ad.AnnData]):
    """The built-in demo: simulated CITE-seq counts in the GEO file's layout, generated on load
    (no network, no file). Read-only; see ``cite_bench.simulation``."""

    def __init__(self, *, metadata: dict[str, Any] | None = None, **simulation_args: Any) -> None:
        self._simulation_args = simulation_args
        self.metadata = metadata

    def load(self) -> ad.AnnData:
        return simulate_cite_seq(**self._simulation_args)

    def save(self, data: ad.AnnData) -> None:
        raise DatasetError("SimulatedCiteSeqDataset is read-only: it is generated on load.")

    def _describe(self) -> dict[str, Any]:
        return dict(self._simulation_args)


class ModelDataset(AbstractVersionedDataset[Any, Any]):
    """A trained model, or several by name (one per seed: ``{"seed_0": model, ...}``), saved as
    a directory by each model's own ``save(dir_path, overwrite=...)`` and loaded by its class's
    ``load(dir_path)`` (the scvi-tools convention, which MultiVAE shares). The class is
    recorded beside each model so that loading needs no configuration. The whole directory is
    replaced at once, so models of seeds no longer asked for do not linger."""

    _CLASS_FILE = "model_class.json"
    _INDEX_FILE = "models.json"

    def __init__(
        self,
        *,
        filepath: str,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._save_args = dict(save_args or {})
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(filepath),
            version=version,
            exists_function=_LOCAL.exists,
            glob_function=_LOCAL.glob,
        )

    def load(self) -> Any:
        path = Path(self._get_load_path())
        index = path / self._INDEX_FILE
        if index.is_file():
            return {name: self._load_one(path / name) for name in json.loads(index.read_text())}
        return self._load_one(path)

    def save(self, data: Any) -> None:
        path = Path(self._get_save_path())
        with atomic_path(path, directory=True) as temporary:
            if isinstance(data, dict):
                for name, model in data.items():
                    self._save_one(model, temporary / name)
                (temporary / self._INDEX_FILE).write_text(json.dumps(list(data)))
            else:
                self._save_one(data, temporary)

    def _load_one(self, path: Path) -> Any:
        class_file = path / self._CLASS_FILE
        if not class_file.is_file():
            raise DatasetError(f"No saved model in '{path}' (missing {self._CLASS_FILE}).")
        class_path = json.loads(class_file.read_text())["class"]
        module, _, name = class_path.rpartition(".")
        model_class: Callable[..., Any] = getattr(importlib.import_module(module), name)
        saved_data = path / "adata.h5ad"
        if not saved_data.is_file():
            return model_class.load(str(path))
        adata = ad.read_h5ad(saved_data)
        # h5ad turns lists in uns into arrays; Multigrate's MultiVAE insists on lists.
        for key, value in adata.uns.items():
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iuf":
                adata.uns[key] = value.tolist()
        return model_class.load(str(path), adata=adata)

    def _save_one(self, model: Any, path: Path) -> None:
        save_args = dict(self._save_args)
        if "save_anndata" in inspect.signature(model.save).parameters:
            # Keep the training data with the model so that it loads without arguments.
            save_args.setdefault("save_anndata", True)
        model.save(str(path), overwrite=True, **save_args)
        model_class = type(model)
        (path / self._CLASS_FILE).write_text(
            json.dumps({"class": f"{model_class.__module__}.{model_class.__qualname__}"})
        )

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}

    def _exists(self) -> bool:
        try:
            path = Path(self._get_load_path())
            return (path / self._CLASS_FILE).is_file() or (path / self._INDEX_FILE).is_file()
        except DatasetError:
            return False
