"""Separate RNA and ADT AnnData files of the same cells (``.h5ad``, or ``.zarr`` stores), read
as one ``MuData`` with modalities ``rna`` and ``adt``."""

from __future__ import annotations

from pathlib import Path

import mudata as md
from kedro.io.core import DatasetError

from cite_bench.io.readers import READERS, require_format

# Formats whose reader gives one AnnData: either can hold one modality of the pair.
ANNDATA_FORMATS = ("h5ad", "zarr")


def read_pair(rna: Path, adt: Path) -> md.MuData:
    """Each modality's own cells are kept: whether the barcodes match is checked by the
    pipeline, which can say how many differ."""
    modalities = {}
    for name, path in {"rna": rna, "adt": adt}.items():
        what = f"{name.upper()} AnnData (.h5ad)"
        found = require_format(path, ANNDATA_FORMATS, f"the {what} file")
        if found is None and path.is_dir():
            raise DatasetError(f"'{path}' is a folder, not the {what} file.")
        modalities[name] = READERS[found or "h5ad"].read(path, {})
    return md.MuData(modalities, axis=0)
