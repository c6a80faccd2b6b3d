"""What a reader of one input format declares, and the errors shared by the readers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import mudata as md
from kedro.io.core import DatasetError

Raw = ad.AnnData | md.MuData

# How a user reads a file of any registered format: the format is found from its content.
READ_COMMAND = "kedro run --params inputs.path={path}"


@dataclass(frozen=True)
class Reader:
    """One input format: how to recognise it from a path's content and how to read it.

    ``recognise`` must not read more than the file's header; ``read`` gets the dataset's
    ``load_args`` and takes those it understands (``backed`` for ``.h5ad``)."""

    name: str
    description: str  # for errors and docs: "a MuData (.h5mu) file"
    recognise: Callable[[Path], bool]
    read: Callable[[Path, Mapping[str, Any]], Raw]
    suffixes: tuple[str, ...] = field(default=())  # usual names, for error messages only


def hdf5_header(path: Path) -> tuple[str, set[str], bool] | None:
    """``(encoding-type, top-level keys, has a legacy 10x genome group)`` of an HDF5 file, or
    None when ``path`` is not one."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as handle:
            encoding = handle.attrs.get("encoding-type", "")
            encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
            legacy = any(
                isinstance(group, h5py.Group) and {"barcodes", "gene_names"} <= set(group.keys())
                for group in handle.values()
            )
            return encoding, set(handle.keys()), legacy
    except OSError:
        return None


def unreadable(path: Path, description: str, exc: Exception) -> DatasetError:
    """The error for a file that claims a format but cannot be read as it: ``description`` as
    the readers' ``DESCRIPTION`` ("an AnnData (.h5ad) file"), with the reader's own reason."""
    return DatasetError(f"'{path}' could not be read as {description}: {exc}")
