"""Reporting: the metrics table (scaling, aggregates, summaries, ranking), its markdown and
the figures. Library code: the pipelines, tracking, the CLI and the matrix import it from here.

The figures (``reporting.figures``) import matplotlib; they are not imported here, so that
the tables can be summarised without it.
"""

from .markdown import format_metrics_table
from .tables import (
    TABLE_COLUMNS,
    MatrixSummary,
    add_aggregates,
    ranked_methods,
    ranking_column,
    scale_by_controls,
    summarise_matrix,
    summarise_over_seeds,
    tabulate_metrics,
)

__all__ = [
    "TABLE_COLUMNS",
    "MatrixSummary",
    "add_aggregates",
    "format_metrics_table",
    "ranked_methods",
    "ranking_column",
    "scale_by_controls",
    "summarise_matrix",
    "summarise_over_seeds",
    "tabulate_metrics",
]
