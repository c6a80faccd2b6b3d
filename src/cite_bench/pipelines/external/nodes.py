"""Users' own methods: embeddings read from files, checked, scored like a trained method's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from cite_bench.artifacts import EXTERNAL_METRICS
from cite_bench.evaluate import score_embeddings
from cite_bench.methods import METHODS
from cite_bench.outputs import MethodOutput, OutputError
from cite_bench.reporting.figures import compute_umaps
from cite_bench.seeds import first_seed

__all__ = [
    "ExternalEmbeddingError",
    "check_external_embeddings",
    "compute_umaps",
    "score_external_embeddings",
]
# Names an external method cannot take: the registered methods' and the table node's inputs.
RESERVED = {"params", EXTERNAL_METRICS}


class ExternalEmbeddingError(OutputError):
    """An external method's embedding cannot be scored; the message names the file."""


def check_external_embeddings(
    external: Mapping[str, Any], cells: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """Check each external method's embedding against the dataset's cells before any scoring
    (``MethodOutput.checked_against``), and that its name is its own. Returns the embeddings
    in the cells' order."""
    checked = {}
    for name, item in external.items():
        where = f"external method '{name}' ({item.path})"
        if name in METHODS or name in RESERVED:
            raise ExternalEmbeddingError(f"{where}: '{name}' is taken; choose another name.")
        try:
            checked[name] = MethodOutput(item.frame).checked_against(cells, where)
        except OutputError as exc:
            raise ExternalEmbeddingError(str(exc)) from exc
    return checked


def score_external_embeddings(
    embeddings: Mapping[str, pd.DataFrame],
    unintegrated: pd.DataFrame,
    cells: pd.DataFrame,
    params: dict[str, Any],
    columns: dict[str, str],
) -> pd.DataFrame:
    """Score each external embedding exactly as a trained method's (seed 0), against the
    unintegrated reference's first seed."""
    columns_out = ["method", "seed", "metric", "value", "note"]
    if not embeddings:
        return pd.DataFrame(columns=columns_out)
    table = score_embeddings(embeddings, first_seed(unintegrated), cells, params, columns)
    return table.assign(seed=0)[columns_out]
