"""Time and peak memory of the pipelines at several dataset sizes: ``kedro benchmark``.

For each size, demo data with the GEO file's dimensions (13,953 genes, 134 proteins) is
simulated and written as ``.h5ad``. Then the project's own pipelines run on it through Kedro,
as ``kedro run --env geo`` runs them (the backed ``.h5ad`` reader, every cell), in a scratch
copy of the project's configuration, each stage in a fresh process so that its peak memory is
its own: ``data_processing``; each model's ``modelling`` namespace (a few epochs); and the
integrated models' ``compute_metrics`` nodes of ``evaluation``. ``TimedRunner`` (Kedro's
``SequentialRunner`` with a node-timing hook) records each node's wall time and the highest
resident memory sampled while it ran, and the scoring steps within ``compute_metrics`` (kNN,
Leiden, kBET, ...) come from ``cite_bench.scoring``'s step log.

At the sizes given by ``--reference-up-to``, the same embeddings are also scored by scib's own
code path (``evaluation/reference.py``), with igraph's Leiden (the same implementation as the
pipeline's: a like-for-like comparison) and with leidenalg (scib as shipped), beside the
pipeline's ``compute_metrics`` restricted to the metrics scib's path computes, one Leiden seed.

The table goes to ``data/08_reporting/benchmark/`` as parquet (one row per size, stage and
step) and markdown (with the machine it ran on), rewritten after each size. Timings depend on
the machine; the README's come from the machine named in its table.
"""

from .report import format_report, machine_description, summarise
from .run import run_benchmark, scratch_project
from .timing import EVALUATE, SCIB_METRICS_STAGE, NodeTimer, StepRecorder, TimedRunner

__all__ = [
    "EVALUATE",
    "SCIB_METRICS_STAGE",
    "NodeTimer",
    "StepRecorder",
    "TimedRunner",
    "format_report",
    "machine_description",
    "run_benchmark",
    "scratch_project",
    "summarise",
]
