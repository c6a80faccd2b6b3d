"""The modelling node: a method's settings resolved from the parameters, then trained per seed."""

from __future__ import annotations

from typing import Any

import mudata as md
import pandas as pd

from cite_bench.methods import Method, overrides_of
from cite_bench.methods.training import train_over_seeds


def train(
    method: Method,
    mdata: md.MuData,
    modelling: dict[str, Any],
    training_length: str,
    seeds: int | str | list[int],
    columns: dict[str, str],
    controls: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train ``method`` once per seed with its defaults, the run's training length and the
    user's ``modelling.<method>.hyperparameters`` on top."""
    settings = method.settings(overrides_of(modelling, method.name), training_length)
    return train_over_seeds(method, mdata, settings, seeds, columns, controls)
