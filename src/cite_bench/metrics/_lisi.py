"""Graph LISI (scib-metrics) on the shared neighbour search: cLISI and iLISI."""

from __future__ import annotations

from typing import Any

import numpy as np


def clisi(neighbours: Any, labels: np.ndarray) -> float:
    """Graph cLISI: how pure each cell's neighbourhood is in cell types (1 = pure).

    ``neighbours``: scib-metrics' ``NeighborsResults`` of every cell, itself first."""
    import scib_metrics

    return float(scib_metrics.clisi_knn(neighbours, labels))


def ilisi(neighbours: Any, batches: np.ndarray) -> float:
    """Graph iLISI: how mixed each cell's neighbourhood is in batches (1 = evenly mixed)."""
    import scib_metrics

    return float(scib_metrics.ilisi_knn(neighbours, batches))
