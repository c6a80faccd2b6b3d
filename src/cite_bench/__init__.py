"""cite-bench: benchmark multimodal single-cell integration (CITE-seq) with scib's metrics.

The Kedro project runs the pipelines; for notebooks, the small API below scores embeddings of
an AnnData or MuData directly (``cite_bench.score``) and lists the registries. Its names
load on first use, so that Kedro's commands start without the scientific stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1"

# Public name -> the module that defines it.
_API = {
    "score": "cite_bench.api",
    "control_embeddings": "cite_bench.api",
    "score_embedding": "cite_bench.evaluate",
    "summarise_over_seeds": "cite_bench.reporting",
    "ranked_methods": "cite_bench.reporting",
    "METHODS": "cite_bench.methods",
    "METRICS": "cite_bench.metrics",
    "PRESETS": "cite_bench.metrics",
    "READERS": "cite_bench.io.readers",
}
__all__ = [  # noqa: F822 - defined lazily by __getattr__
    "METHODS",
    "METRICS",
    "PRESETS",
    "READERS",
    "control_embeddings",
    "ranked_methods",
    "score",
    "score_embedding",
    "summarise_over_seeds",
]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'cite_bench' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
