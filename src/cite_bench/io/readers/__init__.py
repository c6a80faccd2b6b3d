"""The input readers, by format: a format is recognised from what a path holds, not its name.

Adding a format: a module here with a :class:`~cite_bench.io.readers.spec.Reader`, one line in
``READERS``, one test in ``tests/test_datasets.py``. The first reader that recognises a path
reads it, in the order below (a MuData file also looks like an AnnData one, so ``h5mu`` comes
first).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.io.core import DatasetError

from cite_bench.io.readers import h5ad, h5mu, tenx, zarr
from cite_bench.io.readers.spec import READ_COMMAND, Raw, Reader

READERS: dict[str, Reader] = {
    reader.name: reader
    for reader in (
        h5mu.READER,
        h5ad.READER,
        tenx.H5_READER,
        tenx.MTX_READER,
        zarr.READER,
    )
}

# Each format: what it is, and the command that reads it.
INPUT_FORMATS: dict[str, tuple[str, str]] = {
    name: (reader.description, READ_COMMAND) for name, reader in READERS.items()
}


def input_format(path: Path) -> str | None:
    """The format of a raw input by its content: a key of ``READERS``, or None when it is none
    of them (not HDF5, another HDF5 layout, a folder of something else)."""
    return next((name for name, reader in READERS.items() if reader.recognise(path)), None)


def _described() -> str:
    return "; ".join(reader.description for reader in READERS.values())


def _not_an_input(path: Path) -> DatasetError:
    """The error for a path that no reader recognises, worded for what it looks like."""
    if path.is_dir():
        return DatasetError(
            f"'{path}' is a folder, but none that an input reader knows ({_described()}): "
            "give the input file itself, or one of these folders. See the README's input table."
        )
    by_name = next(
        (reader for reader in READERS.values() if path.suffix.lower() in reader.suffixes), None
    )
    what = by_name.description.split(" ", 1)[1] if by_name else "input file"
    return DatasetError(
        f"'{path}' is not a readable {what}: its content is none of the input formats "
        f"({_described()}). See the README's input table."
    )


def reader_for(path: Path) -> Reader:
    """The reader of ``path`` by its content; a clear error naming the file where none fits."""
    if not path.exists():
        raise DatasetError(f"Input file not found: '{path}'. See the README for the input formats.")
    found = input_format(path)
    if found is None:
        raise _not_an_input(path)
    return READERS[found]


def read_input(path: Path, load_args: Mapping[str, Any] | None = None) -> Raw:
    """Read ``path`` with the reader of its format (see ``READERS``)."""
    return reader_for(path).read(path, dict(load_args or {}))


def require_format(path: Path, expected: tuple[str, ...], reader: str) -> str | None:
    """Refuse a missing input, and one of another known format with the command that reads it.
    Returns the format found (None: unknown, left to the reader to fail on)."""
    if not path.exists():
        raise DatasetError(f"{reader} not found: '{path}'. See the README for the input formats.")
    found = input_format(path)
    if found is None or found in expected:
        return found
    raise DatasetError(
        f"'{path}' is {READERS[found].description}, not {reader}: read it with "
        f"`{READ_COMMAND.format(path=path)}` (see the README's input table)."
    )


__all__ = [
    "INPUT_FORMATS",
    "READERS",
    "READ_COMMAND",
    "Reader",
    "input_format",
    "read_input",
    "reader_for",
    "require_format",
]
