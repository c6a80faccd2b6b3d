"""Principal component regression: batch variance explained, after against before."""

from __future__ import annotations

import numpy as np


def pcr_comparison(unintegrated: np.ndarray, embedding: np.ndarray, batches: np.ndarray) -> float:
    """scib-metrics' ``pcr_comparison`` (scaled, batches as categories): how much less of the
    variance the batches explain in ``embedding`` than in ``unintegrated``."""
    import scib_metrics

    return float(
        scib_metrics.pcr_comparison(unintegrated, embedding, batches, scale=True, categorical=True)
    )
