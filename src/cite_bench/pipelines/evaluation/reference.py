"""Moved to ``cite_bench.metrics.reference``; this name stays until benchmark.py imports it
from there (delete at merge)."""

from cite_bench.metrics.reference import (  # noqa: F401
    REFERENCE_KEYS,
    leiden_arguments,
    scib_graph,
    scib_reference_metrics,
)
