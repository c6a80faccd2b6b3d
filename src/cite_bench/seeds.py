"""Seeds of repeated training: parsing the ``seeds`` parameter and the stacked embeddings.

Every method is trained once per seed; its embeddings are stacked under a ``seed`` index level
so that one catalog entry holds them all. Modelling writes them, evaluation, figures, tracking
and the benchmark read them: hence a module of its own.
"""

from __future__ import annotations

import pandas as pd

SEED_LEVEL = "seed"


def parse_seeds(seeds: int | str | list[int]) -> list[int]:
    """The ``seeds`` parameter as a list: a YAML list, one seed, or seeds separated by spaces
    (``kedro run --params "seeds=0 1 2"``: Kedro splits ``--params`` at commas)."""
    values = seeds.split() if isinstance(seeds, str) else seeds
    values = values if isinstance(values, list | tuple) else [values]
    if not all(
        (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, str) and value.strip().lstrip("-").isdigit())
        for value in values
    ):
        raise ValueError(f"seeds: expected whole numbers, got {seeds!r}")
    parsed = [int(value) for value in values]
    if not parsed or any(seed < 0 for seed in parsed) or len(set(parsed)) != len(parsed):
        raise ValueError(f"seeds: expected distinct non-negative whole numbers, got {seeds!r}")
    return parsed


def stack_seeds(embeddings: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per-seed embeddings (indexed by barcode) as one frame under a ``seed`` index level."""
    if not embeddings:
        index = pd.MultiIndex.from_arrays([[], []], names=[SEED_LEVEL, "barcode"])
        return pd.DataFrame(index=index)
    return pd.concat(list(embeddings.values()), keys=list(embeddings), names=[SEED_LEVEL])


def split_by_seed(embedding: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """The per-seed embeddings (indexed by barcode) of a stacked frame; empty for a method that
    was skipped."""
    if SEED_LEVEL not in embedding.index.names:
        raise ValueError(
            f"Expected an embedding with a '{SEED_LEVEL}' index level, got {embedding.index.names}."
        )
    return {
        int(seed): frame.droplevel(SEED_LEVEL)
        for seed, frame in embedding.groupby(level=SEED_LEVEL, sort=False)
    }


def first_seed(embedding: pd.DataFrame) -> pd.DataFrame | None:
    """The embedding of the first seed (the one drawn, and the unintegrated reference), or
    ``None`` for a method that was skipped."""
    return next(iter(split_by_seed(embedding).values()), None)
