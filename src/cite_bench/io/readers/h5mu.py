"""One ``.h5mu`` with an RNA modality ``rna`` and a protein modality ``prot`` or ``adt`` (as
scverse tools name them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mudata as md

from cite_bench.io.readers.spec import Reader, hdf5_header, unreadable

DESCRIPTION = "a MuData (.h5mu) file"


def recognise(path: Path) -> bool:
    header = hdf5_header(path)
    return header is not None and (header[0] == "MuData" or "mod" in header[1])


def read(path: Path, load_args: Mapping[str, Any]) -> md.MuData:
    try:
        return md.read_h5mu(path, **load_args)
    except OSError as exc:
        raise unreadable(path, DESCRIPTION, exc) from exc


READER = Reader("h5mu", DESCRIPTION, recognise, read, (".h5mu",))
