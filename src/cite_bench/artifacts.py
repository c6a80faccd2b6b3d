"""The data catalog's artifact names, and what MLflow tracking logs of each, in one place.

Pipelines, the benchmark, the CLI and tracking name artifacts through this module, so that a
renamed catalog entry is renamed here and in ``conf/base/catalog.yml``, nowhere else. Each
method's artifacts live in its namespaces (``modelling.<method>.embedding``, ...): build those
names with the functions below rather than by formatting strings.

What tracking logs is declared in :data:`TRACKED`, one :class:`Tracked` line per artifact, and the
tracking hook only interprets the table. The declarations live here rather than as catalog
``metadata``: a Kedro environment replaces a catalog entry whole (``conf/geo`` replaces the
input, an environment may move the metrics table), so metadata there would be lost or copied
with every override, and tests that run pipelines on an in-memory ``DataCatalog`` would have to
repeat it; here it sits beside the names it refers to, typed and importable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# --- namespaces: one per method in each ---------------------------------------------------------
MODELLING = "modelling"
EVALUATION = "evaluation"

# --- shared artifacts -----------------------------------------------------------------------------
RAW_INPUT = "raw_cite_seq"
MUDATA = "cite_seq_mudata"
CELL_METADATA = "cell_metadata"
EXTERNAL_EMBEDDINGS = "external_embeddings"
EXTERNAL_METRICS = "external_metrics"
METRICS_TABLE = "metrics_table"
METRICS_MARKDOWN = "metrics_markdown"
METRICS_SUMMARY_FIGURE = "metrics_summary_figure"
UMAP_FIGURE = "umap_figure"

# A name that becomes one component of an artifact's path (a dataset, a saved model): letters,
# digits, '_', '-', '.'; no separator, no "..", not hidden.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_plain_name(name: object) -> bool:
    """Whether ``name`` can be joined into a path without leaving its folder."""
    return isinstance(name, str) and bool(_PLAIN_NAME.fullmatch(name)) and ".." not in name


# Where a method's name goes in a per-method name (patterns in TRACKED and catalog.yml).
METHOD = "{method}"


def modelling_namespace(method: str) -> str:
    return f"{MODELLING}.{method}"


def evaluation_namespace(method: str) -> str:
    return f"{EVALUATION}.{method}"


def trained_model(method: str) -> str:
    return f"{modelling_namespace(method)}.trained_model"


def embedding(method: str) -> str:
    return f"{modelling_namespace(method)}.embedding"


def training_summary(method: str) -> str:
    return f"{modelling_namespace(method)}.training_summary"


def metrics(method: str) -> str:
    return f"{evaluation_namespace(method)}.metrics"


def umap(method: str) -> str:
    return f"{evaluation_namespace(method)}.umap"


# --- what tracking logs -------------------------------------------------------------------------

LoggedAs = Literal[
    "table",  # a DataFrame, as a parquet file artifact
    "figure",  # a matplotlib figure, as an image artifact
    "text",  # a string, as a text artifact
    "metrics",  # a metrics table: each method's mean (and spread) over seeds, as metrics
    "training_summary",  # time, loss, epochs as metrics; device, cells, versions as tags
    "cell_count",  # a table of cells: its number of rows as the tag n_cells
    "source_files",  # external embeddings: each file's path and checksum as tags
]
Run = Literal[
    "parent",  # the run of the whole `kedro run`
    "method",  # the child run of the method named in the artifact's name
    "each method",  # each method's child run, with that method's part of the data
    "all",  # the parent and every child run
]


@dataclass(frozen=True)
class Tracked:
    """One thing tracking logs: from which artifact, as what, into which run(s).

    ``name`` is a catalog name, or a per-method pattern with ``{method}``. An artifact is logged
    after the catalog saved it; ``when_loaded`` ones also when a run loads them without having
    produced them (an evaluation-only run still records the embedding it scored). ``what`` names
    it in warnings and in the ``logging_incomplete`` tag when the store is out.
    """

    name: str
    logged_as: LoggedAs
    run: Run
    what: str
    file_name: str | None = None
    when_loaded: bool = False

    def match(self, dataset_name: str) -> str | None:
        """``""`` for this artifact's own name, the method's name where a pattern matches, else
        ``None``."""
        if METHOD not in self.name:
            return "" if dataset_name == self.name else None
        pattern = re.escape(self.name).replace(re.escape(METHOD), r"(?P<method>[^.]+)")
        found = re.fullmatch(pattern, dataset_name)
        return found["method"] if found else None


TRACKED: tuple[Tracked, ...] = (
    Tracked(CELL_METADATA, "cell_count", "all", "cell count", when_loaded=True),
    Tracked(METRICS_TABLE, "table", "parent", "metrics table", file_name="metrics.parquet"),
    # Every method's scores, raw and scaled between controls, once all are known.
    Tracked(METRICS_TABLE, "metrics", "each method", "{method} metrics"),
    Tracked(UMAP_FIGURE, "figure", "parent", UMAP_FIGURE, file_name="umap.png"),
    Tracked(
        METRICS_SUMMARY_FIGURE,
        "figure",
        "parent",
        METRICS_SUMMARY_FIGURE,
        file_name="metrics_summary.png",
    ),
    Tracked(METRICS_MARKDOWN, "text", "parent", "metrics markdown", file_name="metrics.md"),
    Tracked(training_summary(METHOD), "training_summary", "method", "{method} training summary"),
    Tracked(
        embedding(METHOD),
        "table",
        "method",
        "{method} embedding",
        file_name="{method}_embedding.parquet",
        when_loaded=True,
    ),
    # What was scored, exactly: the file and its checksum.
    Tracked(EXTERNAL_EMBEDDINGS, "source_files", "each method", "{method} file", when_loaded=True),
)


def tracked(dataset_name: str) -> list[tuple[Tracked, str]]:
    """The declarations that apply to ``dataset_name``, each with the method it names (or "")."""
    found = [(entry, entry.match(dataset_name)) for entry in TRACKED]
    return [(entry, method) for entry, method in found if method is not None]
