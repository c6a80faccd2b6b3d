"""Running a pipeline in memory, as the Kedro starters test theirs."""

from __future__ import annotations

from typing import Any

import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from cite_bench.seeds import stack_seeds


class KeptDataset(MemoryDataset):
    """A ``MemoryDataset`` the runner does not empty once its last reader ran, so that a test
    can read every intermediate result after the run."""

    def _release(self) -> None:
        pass


def run_in_memory(pipeline: Pipeline, inputs: dict[str, Any]) -> DataCatalog:
    """Run ``pipeline`` with ``SequentialRunner`` on a catalog of in-memory datasets holding
    ``inputs``; every dataset it writes stays readable in the returned catalog."""
    catalog = DataCatalog(
        {
            name: KeptDataset(inputs[name]) if name in inputs else KeptDataset()
            for name in pipeline.datasets()
        }
    )
    SequentialRunner().run(pipeline, catalog)
    return catalog


def stacked(frame: pd.DataFrame) -> pd.DataFrame:
    """A method's embedding as modelling stores it (seeds stacked), trained with seed 0."""
    return stack_seeds({0: frame})
