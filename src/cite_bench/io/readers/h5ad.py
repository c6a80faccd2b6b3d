"""One ``.h5ad`` with RNA and protein features told apart by ``var["feature_types"]`` (the GEO
file, or your own). With ``backed: r`` in ``load_args`` the file's ``X`` and its sparse layers
stay on disk (:func:`cite_bench.io.h5.read_h5ad_backed`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad

from cite_bench.io.h5 import read_h5ad_backed
from cite_bench.io.readers.spec import Reader, hdf5_header, unreadable

DESCRIPTION = "an AnnData (.h5ad) file"


def recognise(path: Path) -> bool:
    header = hdf5_header(path)
    if header is None:
        return False
    encoding, keys, _ = header
    is_mudata = encoding == "MuData" or "mod" in keys  # a MuData holds obs and var too
    return not is_mudata and (encoding == "anndata" or {"obs", "var"} <= keys)


def read(path: Path, load_args: Mapping[str, Any]) -> ad.AnnData:
    load_args = dict(load_args)
    backed = load_args.pop("backed", None)
    try:
        if backed:
            return read_h5ad_backed(path, "r" if backed is True else backed)
        return ad.read_h5ad(path, **load_args)
    except OSError as exc:
        raise unreadable(path, DESCRIPTION, exc) from exc


READER = Reader("h5ad", DESCRIPTION, recognise, read, (".h5ad",))
