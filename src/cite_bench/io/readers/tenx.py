"""10x Genomics Cell Ranger output of one CITE-seq run: ``filtered_feature_bc_matrix.h5`` or
the ``filtered_feature_bc_matrix`` folder. Counts are in ``X``; no batch column, so the cells are
one batch."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from kedro.io.core import DatasetError

from cite_bench.io.readers.spec import Reader, hdf5_header

logger = logging.getLogger(__name__)

H5_DESCRIPTION = "a 10x Cell Ranger HDF5 file (filtered_feature_bc_matrix.h5)"
MTX_DESCRIPTION = (
    "a 10x Cell Ranger matrix folder (matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz)"
)
READER_PHRASE = "a 10x Cell Ranger .h5 file or matrix folder"


def recognise_h5(path: Path) -> bool:
    header = hdf5_header(path)
    if header is None:
        return False
    encoding, keys, legacy = header
    if encoding in ("MuData", "anndata") or "mod" in keys or {"obs", "var"} <= keys:
        return False
    return "matrix" in keys or legacy


def recognise_mtx(path: Path) -> bool:
    return path.is_dir() and _matrix_file(path) is not None


def _matrix_file(folder: Path) -> Path | None:
    """The matrix of a Cell Ranger matrix folder (``matrix.mtx.gz``; uncompressed from older
    Cell Ranger versions and STARsolo)."""
    for name in ("matrix.mtx.gz", "matrix.mtx"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_cell_ranger(path: Path) -> ad.AnnData:
    """A Cell Ranger ``filtered_feature_bc_matrix.h5`` or matrix folder, every feature type kept
    (scanpy's 10x readers with ``gex_only=False``): counts in ``X``, ``var["feature_types"]``
    ``Gene Expression`` / ``Antibody Capture``. Gene symbols that the reference repeats are made
    unique within each feature type (an antibody may share its name with its gene)."""
    import scanpy as sc

    reader = READER_PHRASE
    if not path.exists():
        raise DatasetError(f"{reader} not found: '{path}'. See the README for the input formats.")
    found = "10x_h5" if recognise_h5(path) else "10x_mtx" if recognise_mtx(path) else None
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


def _read(path: Path, load_args: Mapping[str, Any]) -> ad.AnnData:
    return read_cell_ranger(path)


H5_READER = Reader("10x_h5", H5_DESCRIPTION, recognise_h5, _read, (".h5",))
MTX_READER = Reader("10x_mtx", MTX_DESCRIPTION, recognise_mtx, _read)
