"""The metric registry: each metric listed once with its group, needs and name.

In the style of scib-metrics' ``BioConservation`` / ``BatchCorrection``: every entry's function
is a one-line wrapper that takes the arrays it needs from one ``ScoringData`` (an embedding with
its cells, and the work metrics share: neighbours, Leiden clusterings, silhouettes) and calls
its family's function of arrays (``_silhouette``, ``_clustering``, ``_kbet``, ``_lisi``,
``_cell_cycle``, ``_pcr``, ``_graph``). Scoring, tables, the "skipped: ..." notes, tracking keys,
figures and the benchmark all read this registry; presets (``evaluation.metrics``) choose which
metrics run.

Adding a metric: write its maths as a function of arrays in its family's module (or a new
one), add one wrapper and one ``Metric`` here (and to a preset if it should be in one), and
test it in ``tests/test_metrics.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ._errors import MetricNotApplicable, MetricNotComputable

if TYPE_CHECKING:
    from cite_bench.scoring import ScoringData

from . import _cell_cycle, _clustering, _graph, _kbet, _lisi, _pcr

Group = Literal["bio", "batch"]
# What a metric can need; each missing requirement gives a "skipped: ..." note.
LABELS = "labels"  # cell-type labels (scored on the labelled cells)
BATCHES = "batches"  # two batches or more
PHASE = "phase"  # a cell-cycle phase column
REFERENCE = "reference"  # the unintegrated embedding to compare with (not the method itself)
EMBEDDING = "embedding"  # coordinates, not only a cell graph
# In the order their absence is reported: the first unmet one is named.
REQUIREMENTS = (EMBEDDING, LABELS, BATCHES, PHASE, REFERENCE)


@dataclass(frozen=True)
class Metric:
    key: str  # in tables and tracking
    name: str  # for people
    group: Group
    compute: Callable[[ScoringData], float]
    needs: frozenset[str]
    description: str = ""
    # Reads the Leiden clusterings: scoring starts them in the background first and computes
    # these metrics last, so that the others run meanwhile.
    uses_clusters: bool = False


# --- bio conservation ---------------------------------------------------------------------


def ari(data: ScoringData) -> float:
    """Adjusted Rand index of the labels and the Leiden clusters that best match them."""
    return data.mean_over_leiden_seeds("ari", lambda clusters: _against(data, "ari", clusters))


def nmi(data: ScoringData) -> float:
    """Normalised mutual information of the labels and the best-matching Leiden clusters."""
    return data.mean_over_leiden_seeds("nmi", lambda clusters: _against(data, "nmi", clusters))


def _against(data: ScoringData, name: str, clusters: np.ndarray) -> float:
    return _clustering.against_labels(data.graph, name, clusters, data.columns["label"])


def asw_label(data: ScoringData) -> float:
    """Cell-type silhouette, scaled to [0, 1] (scib's ``silhouette``)."""
    return data.silhouettes["asw_label"]


def isolated_label_asw(data: ScoringData) -> float:
    """Silhouette of the labels found in the fewest batches (scib's ``isolated_labels_asw``)."""
    _require_isolated_labels(data)
    return data.silhouettes["isolated_label_asw"]


def isolated_label_f1(data: ScoringData) -> float:
    """Best F1 of a Leiden cluster against each isolated label (scib's definition), over
    every resolution of the Leiden seeds that searched them all."""
    _require_isolated_labels(data)
    label, batch = data.columns["label"], data.columns["batch"]
    by_seed = data.full_sweeps
    with data.profile("isolated_label_f1"):
        scores = [
            _clustering.isolated_label_f1(data.adata.obs, label, batch, clusterings)
            for clusterings in by_seed.values()
        ]
    if len(scores) > 1:
        data.leiden_spread["isolated_label_f1"] = float(np.std(scores, ddof=1))
    return float(np.mean(scores))


def clisi(data: ScoringData) -> float:
    """Graph cLISI (scib-metrics): how pure each cell's neighbourhood is in cell types."""
    return _lisi.clisi(data.neighbours, data.labels)


def cell_cycle(data: ScoringData) -> float:
    """Cell-cycle conservation (scib's definition, the annotated phase as covariate)."""
    phases = data.adata.obs[data.columns["phase"]]
    with data.profile("cell_cycle"):
        value = _cell_cycle.cell_cycle_conservation(
            data.embedding, data.reference, phases, data.batches
        )
    if np.isnan(value):
        raise MetricNotApplicable("no batch has cells in two cell-cycle phases or more")
    return value


# --- batch correction ---------------------------------------------------------------------


def graph_connectivity(data: ScoringData) -> float:
    """How connected each cell type's kNN subgraph is (scib's ``graph_connectivity``)."""
    with data.profile("graph_connectivity"):
        return _graph.graph_connectivity(data.graph, data.columns["label"])


def asw_batch(data: ScoringData) -> float:
    """Batch silhouette within cell types, 1 - |ASW| (scib's ``silhouette_batch``)."""
    return data.silhouettes["asw_batch"]


def ilisi(data: ScoringData) -> float:
    """Graph iLISI (scib-metrics): how mixed each cell's neighbourhood is in batches."""
    with data.profile("ilisi"):
        return _lisi.ilisi(data.neighbours, data.batches)


def kbet(data: ScoringData) -> float:
    """kBET acceptance rate per cell type (scib-metrics' ``kbet_per_label``, computed as
    ``cite_bench.metrics._kbet`` explains)."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence

    with data.profile("kbet"):
        try:
            return _kbet.kbet_per_label(
                data.neighbours.knn_graph_connectivities,
                data.batches,
                data.labels,
                seed=data.params["seed"],
            )
        except (ArpackError, ArpackNoConvergence) as exc:
            # Its per-label diffusion map can fail on degenerate geometry (identical points).
            raise MetricNotComputable(f"kBET's diffusion map failed ({exc})") from exc


def pcr_comparison(data: ScoringData) -> float:
    """Batch variance explained by principal components, after against before integration."""
    with data.profile("pcr_comparison"):
        return _pcr.pcr_comparison(data.reference, data.embedding, data.batches)


def _require_isolated_labels(data: ScoringData) -> None:
    if not data.isolated_labels:
        raise MetricNotApplicable("every label occurs in the same number of batches")


def _needs(*requirements: str) -> frozenset[str]:
    return frozenset(requirements)


# The published table's five first, in its order; then the rest of each group.
METRICS: dict[str, Metric] = {
    metric.key: metric
    for metric in (
        Metric("ari", "ARI", "bio", ari, _needs(LABELS), uses_clusters=True),
        Metric("nmi", "NMI", "bio", nmi, _needs(LABELS), uses_clusters=True),
        Metric("asw_label", "ASW", "bio", asw_label, _needs(LABELS, EMBEDDING)),
        Metric(
            "graph_connectivity",
            "Graph connectivity",
            "batch",
            graph_connectivity,
            # With one batch there is no batch effect to correct: it would stand alone for
            # batch correction and read as a batch score.
            _needs(LABELS, BATCHES),
        ),
        Metric(
            "isolated_label_asw",
            "Isolated label ASW",
            "bio",
            isolated_label_asw,
            _needs(LABELS, EMBEDDING),
        ),
        Metric(
            "isolated_label_f1",
            "Isolated label F1",
            "bio",
            isolated_label_f1,
            _needs(LABELS),
            uses_clusters=True,
        ),
        Metric("clisi", "Graph cLISI", "bio", clisi, _needs(LABELS)),
        Metric(
            "cell_cycle",
            "Cell-cycle conservation",
            "bio",
            cell_cycle,
            _needs(PHASE, REFERENCE, EMBEDDING),
        ),
        Metric("asw_batch", "Batch ASW", "batch", asw_batch, _needs(LABELS, BATCHES, EMBEDDING)),
        Metric("ilisi", "Graph iLISI", "batch", ilisi, _needs(BATCHES)),
        Metric("kbet", "kBET", "batch", kbet, _needs(LABELS, BATCHES)),
        Metric(
            "pcr_comparison",
            "PCR comparison",
            "batch",
            pcr_comparison,
            _needs(BATCHES, REFERENCE, EMBEDDING),
        ),
    )
}

# Which metrics run (``evaluation.metrics``): a preset's name or a list of metric keys.
PRESETS: dict[str, tuple[str, ...]] = {
    # The five of the published NeurIPS 2021 table.
    "published": ("ari", "nmi", "asw_label", "graph_connectivity", "isolated_label_asw"),
    # scib's full set (as far as it applies to embeddings of CITE-seq data).
    "scib": tuple(METRICS),
    # Without kBET and LISI, the slowest at scale.
    "fast": tuple(key for key in METRICS if key not in {"kbet", "ilisi", "clisi"}),
}

GROUPS: dict[Group, str] = {"bio": "Bio conservation", "batch": "Batch correction"}
BIO_WEIGHT = 0.6  # scib: overall = 0.6 bio conservation + 0.4 batch correction
AGGREGATES: dict[str, str] = {
    "bio_conservation": "Bio conservation",
    "batch_correction": "Batch correction",
    "overall": "Overall (0.6 bio + 0.4 batch)",
}
SKIPPED = "skipped: "  # notes of metrics that do not apply, which aggregates leave out
# Notes on values that were computed (spread over Leiden seeds), kept in the table but not
# repeated under the markdown.
LEIDEN_NOTE = "mean over"


def select_metrics(selection: str | Sequence[str]) -> list[Metric]:
    """The metrics a preset name or a list of keys names, in registry order."""
    if isinstance(selection, str):
        if selection not in PRESETS:
            raise ValueError(
                f"evaluation.metrics: unknown preset '{selection}' (presets: "
                f"{', '.join(PRESETS)}; or a list of metric keys)"
            )
        keys = PRESETS[selection]
    else:
        keys = list(selection)
        unknown = [key for key in keys if key not in METRICS]
        if unknown or not keys:
            raise ValueError(
                f"evaluation.metrics: unknown metrics {unknown} (known: {', '.join(METRICS)})"
            )
    return [metric for key, metric in METRICS.items() if key in keys]


def display_name(key: str) -> str:
    """A metric's or an aggregate's name for people."""
    if key in METRICS:
        return METRICS[key].name
    return AGGREGATES.get(key, key)


def keys_in_order(keys: Iterable[str]) -> list[str]:
    """Metric and aggregate keys in table order: registry order, aggregates last."""
    present = set(keys)
    ordered = [key for key in [*METRICS, *AGGREGATES] if key in present]
    return ordered + sorted(present - set(ordered))


def aggregate(values: Mapping[str, float], excluded: Mapping[str, str]) -> dict[str, tuple]:
    """scib's aggregates: the mean of each group, and 0.6 bio + 0.4 batch.

    Metrics in ``excluded`` (those that do not apply, with the reason) are left out. A metric
    that applies but has no value (NaN) counts as 0, the worst score, so that a failure can
    never raise an aggregate above a method whose metrics were all computed; the note says so.
    Returns ``{aggregate key: (value, note)}``.
    """
    result: dict[str, tuple] = {}
    group_scores = {}
    for group, aggregate_key in (("bio", "bio_conservation"), ("batch", "batch_correction")):
        keys = [k for k in values if k in METRICS and METRICS[k].group == group]
        counted = [k for k in keys if k not in excluded]
        if not counted:
            group_scores[group] = np.nan
            result[aggregate_key] = (np.nan, f"{SKIPPED}no {GROUPS[group].lower()} metric applies")
            continue
        missing = [k for k in counted if not np.isfinite(values[k])]
        scores = [0.0 if k in missing else float(values[k]) for k in counted]
        group_scores[group] = float(np.mean(scores))
        note = (
            f"incomplete: {', '.join(display_name(k) for k in missing)} could not be computed "
            "and count as 0"
            if missing
            else ""
        )
        result[aggregate_key] = (group_scores[group], note)
    overall = BIO_WEIGHT * group_scores["bio"] + (1 - BIO_WEIGHT) * group_scores["batch"]
    notes = [result[k][1] for k in ("bio_conservation", "batch_correction") if result[k][1]]
    result["overall"] = (overall, "; ".join(notes))
    return result
