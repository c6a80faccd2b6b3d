"""The metrics: a flat public API over one module per metric family and the registry.

Each family's maths is a plain function of arrays in a private module (``_silhouette``,
``_clustering``, ``_kbet``, ``_lisi``, ``_cell_cycle``, ``_pcr``, ``_graph``); the registry
(``_registry``) lists every metric once, with its group, needs and name, as a one-line wrapper
that takes its arrays from the shared work (``cite_bench.scoring.ScoringData``).
``cite_bench.reference`` keeps scib's own code path, against which tests and the benchmark
check the fast one.
"""

from ._cell_cycle import cell_cycle_conservation
from ._clustering import against_labels, isolated_label_f1, isolated_labels
from ._errors import MetricNotApplicable, MetricNotComputable
from ._graph import graph_connectivity
from ._kbet import kbet_acceptance, kbet_per_label
from ._lisi import clisi, ilisi
from ._pcr import pcr_comparison
from ._registry import (
    AGGREGATES,
    BATCHES,
    BIO_WEIGHT,
    EMBEDDING,
    GROUPS,
    LABELS,
    LEIDEN_NOTE,
    METRICS,
    PHASE,
    PRESETS,
    REFERENCE,
    REQUIREMENTS,
    SKIPPED,
    Group,
    Metric,
    aggregate,
    display_name,
    keys_in_order,
    select_metrics,
)
from ._silhouette import silhouette_metrics

__all__ = [
    "AGGREGATES",
    "BATCHES",
    "BIO_WEIGHT",
    "EMBEDDING",
    "GROUPS",
    "LABELS",
    "LEIDEN_NOTE",
    "METRICS",
    "PHASE",
    "PRESETS",
    "REFERENCE",
    "REQUIREMENTS",
    "SKIPPED",
    "Group",
    "Metric",
    "MetricNotApplicable",
    "MetricNotComputable",
    "against_labels",
    "aggregate",
    "cell_cycle_conservation",
    "clisi",
    "display_name",
    "graph_connectivity",
    "ilisi",
    "isolated_label_f1",
    "isolated_labels",
    "kbet_acceptance",
    "kbet_per_label",
    "keys_in_order",
    "pcr_comparison",
    "select_metrics",
    "silhouette_metrics",
]
