"""Cell-cycle conservation (scib's definition, the annotated phase as covariate)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def cell_cycle_conservation(
    embedding: np.ndarray, unintegrated: np.ndarray, phases: pd.Series, batches: np.ndarray
) -> float:
    """scib's cell-cycle conservation, with the annotated phase as the covariate.

    In each batch, the variance that the phase explains through principal component
    regression is compared before (``unintegrated``) and after integration:
    ``max(0, 1 - |after - before| / before)``; the mean over batches. scib regresses on S and
    G2/M scores recomputed from marker genes, which a highly-variable-gene subset may lack;
    the phase call of the input (e.g. GEX_phase in the GEO file) carries the same signal.
    NaN where no batch has cell-cycle variance to conserve.
    """
    from scib_metrics.utils import principal_component_regression

    known = phases.notna().to_numpy()
    codes = phases.astype("category").cat.codes.to_numpy()
    scores = []
    for name in np.unique(batches[known]):
        cells = known & (batches == name)
        if np.unique(codes[cells]).size < 2 or cells.sum() < 3:
            continue  # no cell-cycle variance to conserve in this batch
        before, after = (
            float(principal_component_regression(matrix[cells], codes[cells], categorical=True))
            for matrix in (unintegrated, embedding)
        )
        if before > 0:
            scores.append(max(0.0, 1 - abs(after - before) / before))
    return float(np.mean(scores)) if scores else np.nan
