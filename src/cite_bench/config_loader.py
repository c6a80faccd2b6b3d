"""The configuration loader: Kedro's, with the dataset's name following the input named on the
command line.

Every artifact path is ``data/<layer>/${globals:dataset}...`` and the run lock and tracking use
the same name, but Kedro's ``--params`` never reach ``globals.yml``. So ``--params
dataset=mine`` sets the name, and an input named only on the command line, where the environment
names none (``kedro run --params inputs.path=/x/pbmc.h5``), gets a name from its file
(``pbmc``), so that it never writes over the demo's artifacts. An environment that names its
files keeps its dataset's name for another copy of them (``--env geo --params inputs.path=...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

from cite_bench.artifacts import is_plain_name

# File and folder names that say nothing about the data: the name is taken from a folder above.
_GENERIC_NAMES = {
    "filtered_feature_bc_matrix",
    "raw_feature_bc_matrix",
    "sample_filtered_feature_bc_matrix",
    "outs",
    "count",
    "matrix",
    "rna",
    "data",
}
_SUFFIXES = (".gz", ".h5ad", ".h5mu", ".h5", ".zarr", ".mtx")


def dataset_name_from_path(path: str | Path) -> str:
    """A folder-safe dataset name from an input's path: its file name without the format's
    suffix, or the first folder above it whose name is not generic (``outs``, ...)."""
    path = Path(str(path))
    for part in (path, *path.parents):
        name = part.name
        while name.lower().endswith(_SUFFIXES):
            name = name[: name.rfind(".")]
        if name and name.lower() not in _GENERIC_NAMES:
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "input"
    return "input"


def _checked_name(name: str) -> str:
    """A dataset name from the command line: it becomes part of every artifact's path, so one
    plain name (no folder separators, no ``..``)."""
    if not is_plain_name(name):
        raise ValueError(
            f"--params dataset={name!r}: a dataset name is one plain name (letters, digits, "
            "'_', '-', '.'; no '/' and no '..'), since artifacts go to data/<layer>/<dataset>..."
        )
    return name


def dataset_name(
    runtime_params: Mapping[str, Any], globals_: Mapping[str, Any] | None = None
) -> str | None:
    """The dataset name the command line asks for, or None to keep ``globals.yml``'s."""
    if runtime_params.get("dataset"):
        return _checked_name(str(runtime_params["dataset"]))
    configured = (globals_ or {}).get("inputs") or {}
    if configured.get("path") or configured.get("samples"):
        return None  # the environment's dataset, perhaps from another copy of its files
    inputs = runtime_params.get("inputs") or {}
    if inputs.get("samples"):
        joined = "-".join(str(name) for name in inputs["samples"])[:80]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", joined).strip("._-") or "samples"
    if inputs.get("path"):
        return dataset_name_from_path(inputs["path"])
    return None


class ConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` whose ``globals["dataset"]`` follows ``--params dataset=...`` or a
    file named with ``--params inputs.path=...`` (see :func:`dataset_name`)."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if key == "globals":
            name = dataset_name(self.runtime_params or {}, value)
            if name is not None:
                value = {**value, "dataset": name}
        return value
