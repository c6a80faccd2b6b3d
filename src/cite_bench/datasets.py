"""Kedro datasets for scverse containers and trained models.

Every dataset that writes does so atomically: the object is written to a hidden temporary path
beside the target and renamed over it only once the write has finished, so a crash or a kill
never leaves a half-written artifact under the final name. Paths are local (AnnData and MuData
write through h5py, which needs a real file).
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import inspect
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import fsspec
import h5py
import kedro_datasets.json
import kedro_datasets.matplotlib
import kedro_datasets.pandas
import kedro_datasets.text
import mudata as md
import numpy as np
import pandas as pd
from anndata.io import read_elem, sparse_dataset
from kedro.io.core import (
    AbstractDataset,
    AbstractVersionedDataset,
    DatasetError,
    Version,
)
from kedro_datasets._typing import TablePreview

from cite_bench.simulation import simulate_cite_seq

logger = logging.getLogger(__name__)
_LOCAL = fsspec.filesystem("file")


# Hidden names beside a target: ".<name>.tmp-*" while it is written, ".<name>.old-*" for the
# replaced folder during a folder swap. A kill can leave either; see recover_interrupted_writes.
_TEMPORARY_MARK = ".tmp-"
_REPLACED_MARK = ".old-"


def _temporary_sibling(target: Path, directory: bool = False) -> Path:
    """A new hidden file or folder beside ``target``, on the same filesystem."""
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}{_TEMPORARY_MARK}"
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
        # A directory cannot be renamed over a non-empty one: swap via a second rename. A kill
        # between the two leaves only the hidden old folder, which the next run puts back.
        stale = target.with_name(f".{target.name}{_REPLACED_MARK}{uuid.uuid4().hex[:12]}")
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


def recover_interrupted_writes(target: Path) -> list[str]:
    """Clear what a killed write left beside ``target``; return what was done, for the log.

    A kill during a write leaves a hidden ``.<name>.tmp-*`` (never under the final name): it is
    removed. A kill between the two renames of a folder swap leaves the previous folder as
    ``.<name>.old-*`` and nothing under the final name: it is put back, so the artifact that
    went with the other outputs of its node is restored; with the final name present, it is
    removed. Call only while no other process writes ``target`` (the run lock).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    actions = []
    hidden = f".{glob.escape(target.name)}"
    for temporary in sorted(target.parent.glob(f"{hidden}{_TEMPORARY_MARK}*")):
        _discard(temporary)
        actions.append(f"removed the unfinished '{temporary}'")
    replaced = sorted(
        target.parent.glob(f"{hidden}{_REPLACED_MARK}*"), key=lambda path: path.stat().st_mtime
    )
    for previous in reversed(replaced):
        if not target.exists():
            previous.rename(target)
            actions.append(f"restored '{target}' from '{previous}' (killed while replacing it)")
        else:
            _discard(previous)
            actions.append(f"removed the replaced '{previous}'")
    return actions


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
            _require_input(path, ("h5ad",), f"the {name.upper()} AnnData (.h5ad) file")
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


# --- raw inputs in the common CITE-seq formats -----------------------------------------------
# Read-only, and each reader checks what a file holds (not its name) before reading it, so that a
# file given to the wrong input setting is named with the setting that reads it.

# Each format: what it is, and the command that reads it.
INPUT_FORMATS: dict[str, tuple[str, str]] = {
    "h5ad": ("an AnnData (.h5ad) file", "kedro run --env h5ad --params inputs.h5ad={path}"),
    "h5mu": ("a MuData (.h5mu) file", "kedro run --env h5mu --params inputs.h5mu={path}"),
    "10x_h5": (
        "a 10x Cell Ranger HDF5 file (filtered_feature_bc_matrix.h5)",
        "kedro run --env tenx --params inputs.tenx={path}",
    ),
    "10x_mtx": (
        "a 10x Cell Ranger matrix folder (matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz)",
        "kedro run --env tenx --params inputs.tenx={path}",
    ),
}


def input_format(path: Path) -> str | None:
    """The format of a raw input by its content: a key of ``INPUT_FORMATS``, or None when it is
    none of them (not HDF5, or another HDF5 layout)."""
    if path.is_dir():
        return "10x_mtx" if _matrix_file(path) is not None else None
    try:
        with h5py.File(path, "r") as handle:
            encoding = handle.attrs.get("encoding-type", "")
            encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
            keys = set(handle.keys())
            if encoding == "MuData" or "mod" in keys:
                return "h5mu"
            if encoding == "anndata" or {"obs", "var"} <= keys:
                return "h5ad"
            legacy = any(
                isinstance(group, h5py.Group) and {"barcodes", "gene_names"} <= set(group.keys())
                for group in handle.values()
            )
            if "matrix" in keys or legacy:
                return "10x_h5"
    except OSError:
        return None
    return None


def _matrix_file(folder: Path) -> Path | None:
    """The matrix of a Cell Ranger matrix folder (``matrix.mtx.gz``; uncompressed from older
    Cell Ranger versions and STARsolo)."""
    for name in ("matrix.mtx.gz", "matrix.mtx"):
        if (folder / name).is_file():
            return folder / name
    return None


def _require_input(path: Path, expected: tuple[str, ...], reader: str) -> str | None:
    """Refuse a missing input, and one of another known format with the command that reads it.
    Returns the format found (None: unknown, left to the reader to fail on)."""
    if not path.exists():
        raise DatasetError(f"{reader} not found: '{path}'. See the README for the input formats.")
    found = input_format(path)
    if found is None or found in expected:
        return found
    description, command = INPUT_FORMATS[found]
    raise DatasetError(
        f"'{path}' is {description}, not {reader}: read it with "
        f"`{command.format(path=path)}` (see the README's input table)."
    )


def read_cell_ranger(path: Path) -> ad.AnnData:
    """A Cell Ranger ``filtered_feature_bc_matrix.h5`` or matrix folder, every feature type kept
    (scanpy's 10x readers with ``gex_only=False``): counts in ``X``, ``var["feature_types"]``
    ``Gene Expression`` / ``Antibody Capture``. Gene symbols that the reference repeats are made
    unique within each feature type (an antibody may share its name with its gene)."""
    import scanpy as sc

    reader = "a 10x Cell Ranger .h5 file or matrix folder"
    found = _require_input(path, ("10x_h5", "10x_mtx"), reader)
    if found is None:
        raise DatasetError(
            f"'{path}' is not {reader}: give Cell Ranger's filtered_feature_bc_matrix.h5, or its "
            "filtered_feature_bc_matrix folder with matrix.mtx.gz, features.tsv.gz and "
            "barcodes.tsv.gz."
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*names are not unique", UserWarning)
        try:
            if found == "10x_h5":
                adata = sc.read_10x_h5(path, gex_only=False)
            else:
                compressed = _matrix_file(path).suffix == ".gz"
                adata = sc.read_10x_mtx(
                    path, gex_only=False, make_unique=False, compressed=compressed
                )
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"'{path}' is not a readable {reader}: {exc}") from exc
        _unique_names_within_feature_types(adata)
    return adata


def _unique_names_within_feature_types(adata: ad.AnnData) -> None:
    if "feature_types" not in adata.var:
        adata.var_names_make_unique()
        return
    names = adata.var_names.to_numpy(dtype=object).copy()
    feature_types = adata.var["feature_types"].astype(str).to_numpy()
    for kind in np.unique(feature_types):
        of_kind = feature_types == kind
        before = pd.Index(names[of_kind])
        after = ad.utils.make_index_unique(before)
        renamed = after != before
        if renamed.any():
            logger.info(
                "Made %d repeated %s feature names unique (e.g. %s).",
                int(renamed.sum()),
                kind,
                list(after[renamed][:3]),
            )
        names[of_kind] = after.to_numpy()
    adata.var_names = pd.Index(names.astype(str))


class CellRangerDataset(AbstractDataset[None, ad.AnnData]):
    """One 10x Genomics Cell Ranger output of a CITE-seq run: ``filtered_feature_bc_matrix.h5``
    or the ``filtered_feature_bc_matrix`` folder. Counts are in ``X``; no batch column, so the
    cells are one batch. Read-only."""

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(filepath)
        self.metadata = metadata

    def load(self) -> ad.AnnData:
        return read_cell_ranger(self._path)

    def save(self, data: ad.AnnData) -> None:
        raise DatasetError("CellRangerDataset is read-only: raw inputs are never written.")

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}

    def _exists(self) -> bool:
        return self._path.exists()


_FEATURE_NAME = "feature_name"


class CellRangerSamplesDataset(AbstractDataset[None, ad.AnnData]):
    """Several Cell Ranger outputs (one run per donor or lane), each a ``.h5`` file or matrix
    folder under a sample name, as one AnnData: the sample name is the batch (``obs[
    sample_column]``) and is appended to each barcode (``AAACCCAAGAAACCAT-1-donor1``), which
    makes barcodes unique across samples. Only features found in every sample are kept (the
    log counts the others). Read-only."""

    def __init__(
        self,
        *,
        samples: dict[str, str] | None,
        sample_column: str = "batch",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._samples = {str(name): Path(path) for name, path in (samples or {}).items()}
        self._sample_column = sample_column
        self.metadata = metadata

    def load(self) -> ad.AnnData:
        if not self._samples:
            raise DatasetError(
                "No samples given: name each Cell Ranger output, e.g. "
                "`--params inputs.samples.donor1=/path/donor1.h5,"
                "inputs.samples.donor2=/path/donor2/filtered_feature_bc_matrix`."
            )
        parts = {}
        for name, path in self._samples.items():
            # Matched by feature ID: unique, where a gene and its antibody may share a name.
            adata = read_cell_ranger(path)
            adata.var[_FEATURE_NAME] = adata.var_names
            adata.var_names = adata.var["gene_ids"].astype(str)
            parts[name] = adata
        common = pd.Index(next(iter(parts.values())).var_names)
        for adata in parts.values():
            common = common.intersection(adata.var_names, sort=False)
        partial = {name: adata.n_vars - common.size for name, adata in parts.items()}
        if any(partial.values()):
            logger.warning(
                "Kept the %d features found in every sample; dropped those missing from some "
                "sample (%s).",
                common.size,
                ", ".join(f"{n} only in {name}" for name, n in partial.items() if n),
            )
        combined = ad.concat(
            parts, join="inner", merge="same", label=self._sample_column, index_unique="-"
        )
        combined.var_names = combined.var.pop(_FEATURE_NAME).astype(str)
        return combined

    def save(self, data: ad.AnnData) -> None:
        raise DatasetError("CellRangerSamplesDataset is read-only: raw inputs are never written.")

    def _describe(self) -> dict[str, Any]:
        return {
            "samples": {name: str(path) for name, path in self._samples.items()},
            "sample_column": self._sample_column,
        }

    def _exists(self) -> bool:
        return bool(self._samples) and all(path.exists() for path in self._samples.values())


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


class CiteSeqH5adDataset(AnnDataDataset):
    """One ``.h5ad`` with RNA and protein features told apart by ``var["feature_types"]`` (the
    GEO file, or your own). ``load_args`` go to ``anndata.read_h5ad``; with ``backed: r`` the
    file's ``X`` and its sparse layers stay on disk (:func:`read_h5ad_backed`). Read-only."""

    def load(self) -> ad.AnnData:
        _require_input(Path(self._get_load_path()), ("h5ad",), "an AnnData (.h5ad) file")
        return super().load()

    def _read(self, path: Path) -> ad.AnnData:
        backed = self._load_args.get("backed")
        if backed:
            return read_h5ad_backed(path, "r" if backed is True else backed)
        return super()._read(path)

    def save(self, data: ad.AnnData) -> None:
        raise DatasetError("CiteSeqH5adDataset is read-only: raw inputs are never written.")


class CiteSeqH5muDataset(MuDataDataset):
    """One ``.h5mu`` with an RNA modality ``rna`` and a protein modality ``prot`` or ``adt``
    (as scverse tools name them). Read-only."""

    def load(self) -> md.MuData:
        _require_input(Path(self._get_load_path()), ("h5mu",), "a MuData (.h5mu) file")
        return super().load()

    def save(self, data: md.MuData) -> None:
        raise DatasetError("CiteSeqH5muDataset is read-only: raw inputs are never written.")


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


# Model classes a saved model may name in its model_class.json: the classes the methods declare
# (``Method.model_class``, collected in ``cite_bench.methods.MODEL_CLASSES``), by public import
# path. Loading imports the class and runs its ``load``, so a model folder could otherwise make
# the project import and run any code.
# Folders saved before the methods had modules of their own name the old module.
_LEGACY_MODEL_MODULE = "cite_bench.pipelines.modelling.model_artifacts."
_MODEL_MODULE = "cite_bench.methods.model_artifacts."
# A model's name in models.json becomes a folder name: one plain path component, no "..".
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_model_name(name: object, source: str) -> str:
    """``name`` if it is a plain folder name; saved indexes are input, and joined into paths."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise DatasetError(
            f"{source}: model name {name!r} is not a plain folder name (letters, digits, '_', "
            "'-', '.'; no path separators, no '..'); refusing to use it as a path."
        )
    return name


def _package(dotted_name: str) -> str:
    return dotted_name.split(".", maxsplit=1)[0]


def _model_classes() -> list[str]:
    from cite_bench.methods import MODEL_CLASSES

    return sorted(MODEL_CLASSES)


def _allowed_model_class(recorded: object) -> type | None:
    """The class a saved model names, if it is one that a method declares."""
    if not isinstance(recorded, str):
        return None
    if recorded.startswith(_LEGACY_MODEL_MODULE):
        recorded = _MODEL_MODULE + recorded.removeprefix(_LEGACY_MODEL_MODULE)
    for public in _model_classes():
        if _package(recorded) != _package(public):
            continue  # import only the package the name claims
        public_module, _, public_name = public.rpartition(".")
        candidate = getattr(importlib.import_module(public_module), public_name)
        # Folders saved before public names were recorded name the defining module.
        if recorded in (public, f"{candidate.__module__}.{candidate.__qualname__}"):
            return candidate
    return None


def _class_name_to_record(model_class: type) -> str:
    """The public import path recorded for ``model_class``; refuses classes that could not be
    loaded again (a save that cannot be loaded is found out too late)."""
    own = f"{model_class.__module__}.{model_class.__qualname__}"
    for name in (*_model_classes(), own):
        if _package(name) == _package(own) and _allowed_model_class(name) is model_class:
            return name
    raise DatasetError(
        f"ModelDataset stores only the model classes the methods declare, not {own}: name it "
        "as the method's model_class in its module (cite_bench/methods/<method>.py)."
    )


# What scvi-tools' model.pt holds besides what torch itself allows in weights-only files
# (tensors, storages, OrderedDict, ...): plain containers, numpy arrays and the pandas frames of
# its data registry, by the names the pickle uses. All of them only build data.
TORCH_DATA_GLOBALS = frozenset(
    {
        "builtins.bytes",
        "builtins.dict",
        "builtins.frozenset",
        "builtins.list",
        "builtins.set",
        "builtins.slice",
        "builtins.tuple",
        "collections.defaultdict",
        "collections.OrderedDict",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy.dtype",
        "numpy.ndarray",
        *(f"numpy.dtypes.{type(np.dtype(code)).__name__}" for code in "?bhilqBHILQefdgFDGOUS"),
        "pandas._libs.internals._unpickle_block",
        "pandas.core.arrays.categorical.Categorical",
        "pandas.core.dtypes.dtypes.CategoricalDtype",
        "pandas.core.frame.DataFrame",
        "pandas.core.indexes.base.Index",
        "pandas.core.indexes.base._new_Index",
        "pandas.core.indexes.category.CategoricalIndex",
        "pandas.core.indexes.range.RangeIndex",
        "pandas.core.internals.managers.BlockManager",
        "pandas.core.series.Series",
    }
)


def _check_torch_files(folder: Path) -> None:
    """Refuse ``*.pt`` files that name anything but tensors and data.

    scvi-tools reads them with ``torch.load(weights_only=False)``, which calls whatever the
    pickle names; torch's weights-only reader cannot read them (it rejects the data registry's
    defaultdict). So every name the pickle refers to is listed first, without running it
    (torch's static scan, which rejects pickle instructions it does not know), and the file is
    loaded only if each is one torch allows in weights-only files or in ``TORCH_DATA_GLOBALS``.
    """
    files = sorted(folder.glob("*.pt"))
    if not files:
        return
    import torch

    for file in files:
        try:
            unexpected = sorted(
                set(torch.serialization.get_unsafe_globals_in_checkpoint(file)) - TORCH_DATA_GLOBALS
            )
        except (pickle.UnpicklingError, ValueError, RuntimeError, EOFError) as exc:
            unexpected = [f"unreadable: {type(exc).__name__}: {exc}"]
        if unexpected:
            raise DatasetError(
                f"'{file}' refers to {', '.join(unexpected)}, not only to tensors and data, "
                "and loading it would run that: refusing to load it. Model folders are trusted "
                "input; retrain the model instead."
            )


class ModelDataset(AbstractVersionedDataset[Any, Any]):
    """A trained model, or several by name (one per seed: ``{"seed_0": model, ...}``), saved as
    a directory by each model's own ``save(dir_path, overwrite=...)`` and loaded by its class's
    ``load(dir_path)`` (the scvi-tools convention, which MultiVAE shares). The class is
    recorded beside each model so that loading needs no configuration. The whole directory is
    replaced at once, so models of seeds no longer asked for do not linger.

    Loading accepts only the model classes the methods declare (``Method.model_class``),
    plain model names, and torch files without executable
    objects; model folders are still trusted input (a class's own ``load`` reads them)."""

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
            names = json.loads(index.read_text())
            if not isinstance(names, list):
                raise DatasetError(f"'{index}' must hold a list of model names, not {names!r}.")
            checked = [_check_model_name(name, str(index)) for name in names]
            return {name: self._load_one(path / name) for name in checked}
        return self._load_one(path)

    def save(self, data: Any) -> None:
        path = Path(self._get_save_path())
        with atomic_path(path, directory=True) as temporary:
            if isinstance(data, dict):
                for name, model in data.items():
                    self._save_one(model, temporary / _check_model_name(name, "ModelDataset.save"))
                (temporary / self._INDEX_FILE).write_text(json.dumps(list(data)))
            else:
                self._save_one(data, temporary)

    def _load_one(self, path: Path) -> Any:
        class_file = path / self._CLASS_FILE
        if not class_file.is_file():
            raise DatasetError(f"No saved model in '{path}' (missing {self._CLASS_FILE}).")
        try:
            recorded = json.loads(class_file.read_text())["class"]
        except (ValueError, TypeError, KeyError) as exc:
            raise DatasetError(f"'{class_file}' does not name a model class ({exc}).") from exc
        model_class = _allowed_model_class(recorded)
        if model_class is None:
            raise DatasetError(
                f"'{class_file}' names {recorded!r}, which is not one of the model classes the "
                f"methods declare ({', '.join(_model_classes())}): refusing to import it."
            )
        _check_torch_files(path)
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
        class_name = _class_name_to_record(type(model))
        model.save(str(path), overwrite=True, **save_args)
        (path / self._CLASS_FILE).write_text(json.dumps({"class": class_name}))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}

    def _exists(self) -> bool:
        try:
            path = Path(self._get_load_path())
            return (path / self._CLASS_FILE).is_file() or (path / self._INDEX_FILE).is_file()
        except DatasetError:
            return False


@dataclass(frozen=True)
class ExternalEmbedding:
    """An embedding computed outside the project, as read from its file."""

    frame: pd.DataFrame  # cells x dimensions, indexed by barcode
    path: str
    sha256: str


EXTERNAL_FORMATS = (".parquet", ".csv", ".h5ad")


class ExternalEmbeddingsDataset(AbstractDataset[None, dict[str, ExternalEmbedding]]):
    """Users' own methods' embeddings, one file per method name (``external`` in
    ``conf/base/globals.yml`` or ``--params external.<name>=<file>``): parquet or CSV with the
    cell barcodes as the index, or an ``.h5ad`` with the embedding in ``obsm[<obsm_key>]`` or in
    ``X`` and the barcodes as ``obs_names`` (Open Problems' prediction files). A method is given
    as a path, or as ``{path: ..., obsm_key: ...}``. Read-only; the file's SHA-256 is kept so
    that tracking can record exactly what was scored."""

    def __init__(
        self, *, methods: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        self._methods = dict(methods or {})
        self.metadata = metadata

    def load(self) -> dict[str, ExternalEmbedding]:
        return {name: self._read(name, spec) for name, spec in self._methods.items()}

    def _read(self, name: str, spec: Any) -> ExternalEmbedding:
        setting = f"external.{name}"
        if isinstance(spec, str):
            spec = {"path": spec}
        spec = dict(spec or {})
        if not spec.get("path"):
            raise DatasetError(f"{setting}: give the embedding's file (a path, or path: ...).")
        path = Path(str(spec["path"]))
        if not path.is_file():
            raise DatasetError(f"{setting}: embedding file '{path}' does not exist.")
        suffix = path.suffix.lower()
        if suffix not in EXTERNAL_FORMATS:
            raise DatasetError(
                f"{setting}: '{path}' is not a known embedding format (expected "
                f"{', '.join(EXTERNAL_FORMATS)})."
            )
        try:
            if suffix == ".parquet":
                frame = pd.read_parquet(path)
            elif suffix == ".csv":
                frame = pd.read_csv(path, index_col=0)
            else:
                frame = _embedding_from_h5ad(path, spec.get("obsm_key"), setting)
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"{setting}: '{path}' cannot be read as {suffix}: {exc}") from exc
        frame.index = frame.index.astype(str)
        frame.columns = [str(column) for column in frame.columns]
        return ExternalEmbedding(frame, str(path), file_sha256(path))

    def save(self, data: Any) -> None:
        raise DatasetError("ExternalEmbeddingsDataset is read-only: users' files stay as they are.")

    def _describe(self) -> dict[str, Any]:
        return {"methods": {name: str(spec) for name, spec in self._methods.items()}}


def _embedding_from_h5ad(path: Path, obsm_key: str | None, setting: str) -> pd.DataFrame:
    adata = ad.read_h5ad(path)
    if obsm_key is not None:
        if obsm_key not in adata.obsm:
            raise DatasetError(
                f"{setting}: '{path}' has no obsm['{obsm_key}'] (obsm keys: "
                f"{sorted(adata.obsm) or 'none'})."
            )
        values = adata.obsm[obsm_key]
    elif adata.X is not None and adata.n_vars > 0:
        values = adata.X
    elif "X_emb" in adata.obsm:
        values = adata.obsm["X_emb"]
    else:
        raise DatasetError(
            f"{setting}: '{path}' has no X; name the embedding with {setting}.obsm_key "
            f"(obsm keys: {sorted(adata.obsm) or 'none'})."
        )
    if hasattr(values, "toarray"):
        values = values.toarray()
    values = np.asarray(values)
    return pd.DataFrame(
        values, index=adata.obs_names, columns=[f"dim_{i}" for i in range(values.shape[1])]
    )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read a megabyte at a time."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
