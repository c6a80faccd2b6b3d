"""An AnnData ``.zarr`` store (a folder; ``anndata.read_zarr``), with RNA and protein features
told apart by ``var["feature_types"]`` as in an ``.h5ad``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad

from cite_bench.io.readers.spec import Reader, unreadable

DESCRIPTION = "an AnnData .zarr store"


def _attributes(path: Path) -> dict[str, Any]:
    """The root group's attributes: ``zarr.json`` (format 3) or ``.zattrs`` (format 2)."""
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        if (path / name).is_file():
            try:
                content = json.loads((path / name).read_text())
            except (OSError, ValueError):
                return {}
            return dict(content.get(key, {}) if key else content)
    return {}


def recognise(path: Path) -> bool:
    return path.is_dir() and _attributes(path).get("encoding-type") == "anndata"


def read(path: Path, load_args: Mapping[str, Any]) -> ad.AnnData:
    try:
        return ad.read_zarr(path)
    except (OSError, KeyError, ValueError) as exc:
        raise unreadable(path, DESCRIPTION, exc) from exc


READER = Reader("zarr", DESCRIPTION, recognise, read, (".zarr",))
