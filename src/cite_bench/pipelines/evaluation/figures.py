"""Moved to ``cite_bench.reporting.figures``; this name stays until cli.py and the notebook
import it from there (delete at merge)."""

from cite_bench.reporting.figures import (  # noqa: F401
    compute_umap,
    compute_umaps,
    plot_matrix_summary,
    plot_metric_summary,
    plot_umaps,
)
