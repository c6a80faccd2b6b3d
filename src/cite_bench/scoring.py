"""The work that several metrics share, done once per embedding and only when a metric asks.

``ScoringData`` holds one embedding (or a method's cell graph) with its cell annotations and
computes, on first use, what the metrics of ``cite_bench.metrics`` read: one exact
nearest-neighbour search (``cite_bench.neighbours``; it feeds the Leiden graph, graph
connectivity, LISI and kBET), Leiden clusterings at every resolution (``cite_bench.leiden``;
shared by ARI, NMI and isolated-label F1) and the three silhouettes from one pass over the
distances (``cite_bench.metrics._silhouette``). No metric's maths lives here: the metrics are
in ``cite_bench.metrics``, the scoring of one embedding in ``cite_bench.evaluate``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from cite_bench.knn_graph import subset_neighbours
from cite_bench.leiden import leiden_clusterer, processes_for
from cite_bench.neighbours import PrecomputedNeighbors, nearest_neighbours, search_device
from cite_bench.outputs import EMBEDDING_KEY, MethodOutput

logger = logging.getLogger(__name__)
# Each scoring step's wall time, at DEBUG level (the benchmark collects them).
step_logger = logging.getLogger(f"{__name__}.steps")

CLUSTER_KEY = "leiden_optimal"
# Times (or otherwise watches) each step of the scoring; the benchmark passes one.
Profiler = Callable[[str], AbstractContextManager[Any]]


@contextlib.contextmanager
def logged_step(step: str) -> Iterator[None]:
    """Time a scoring step and log it on ``step_logger``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        wall = time.perf_counter() - started
        step_logger.debug("%s: %.1f s", step, wall, extra={"scoring_step": step, "wall_s": wall})


# Per Leiden seed: its clusterings, and the one that best matches the labels.
LeidenResult = tuple[dict[int, list[np.ndarray]], dict[int, np.ndarray]]


def embedding_anndata(embedding: pd.DataFrame, cells: pd.DataFrame) -> ad.AnnData:
    """Pair an embedding with the cell annotations, refusing any mismatch of barcodes
    (``MethodOutput``: finite values, constant dimensions dropped)."""
    return MethodOutput(embedding).to_anndata(cells)[0]


class ScoringData:
    """One embedding (or, for a graph-output method, its cell graph as ``neighbours``), its
    cells' annotations and the unintegrated reference, with the work metrics share computed on
    first use. ``profile(step)`` wraps each step."""

    def __init__(
        self,
        adata: ad.AnnData,
        columns: Mapping[str, str],
        params: Mapping[str, Any],
        reference: np.ndarray | None = None,
        profile: Profiler | None = None,
        neighbours: Any | None = None,
    ) -> None:
        self.adata = adata
        self.columns = columns
        self.params = params
        self.reference = reference
        self.profile = profile or logged_step
        if neighbours is not None:  # a method's own graph: nothing to search
            self.__dict__["neighbours"] = neighbours

    @property
    def embedding(self) -> np.ndarray:
        if EMBEDDING_KEY not in self.adata.obsm:
            raise ValueError("This method output a cell graph, not an embedding.")
        return self.adata.obsm[EMBEDDING_KEY]

    @property
    def is_graph(self) -> bool:
        return EMBEDDING_KEY not in self.adata.obsm

    @property
    def n_cells(self) -> int:
        return self.adata.n_obs

    @cached_property
    def labels(self) -> np.ndarray:
        return self.adata.obs[self.columns["label"]].astype(str).to_numpy()

    @cached_property
    def batches(self) -> np.ndarray:
        return self.adata.obs[self.columns["batch"]].astype(str).to_numpy()

    @cached_property
    def has_labels(self) -> np.ndarray:
        """Which cells carry a cell-type label."""
        label = self.columns["label"]
        if label not in self.adata.obs:
            return np.zeros(self.n_cells, dtype=bool)
        return self.adata.obs[label].notna().to_numpy()

    @cached_property
    def n_batches(self) -> int:
        return int(self.adata.obs[self.columns["batch"]].nunique())

    @cached_property
    def labelled(self) -> ScoringData:
        """The cells with a label (this object itself when every cell has one): label-based
        metrics are scored on them."""
        if self.has_labels.all():
            return self
        subset = self.adata[self.has_labels].copy()
        label = self.columns["label"]
        subset.obs[label] = subset.obs[label].astype("category").cat.remove_unused_categories()
        reference = None if self.reference is None else self.reference[self.has_labels]
        neighbours = None
        if self.is_graph:  # the graph among the labelled cells
            from scib_metrics.nearest_neighbors import NeighborsResults

            indices, distances = subset_neighbours(
                self.neighbours.indices, self.neighbours.distances, self.has_labels
            )
            neighbours = NeighborsResults(indices=indices, distances=distances)
        return ScoringData(subset, self.columns, self.params, reference, self.profile, neighbours)

    @cached_property
    def neighbours(self) -> Any:
        device = search_device(self.params.get("device", "cpu"))
        with self.profile("knn" if device == "cpu" else f"knn ({device})"):
            return nearest_neighbours(self.embedding, self.params["lisi_neighbors"], device)

    @cached_property
    def graph(self) -> ad.AnnData:
        """The cells with scanpy's kNN graph (``obsp["connectivities"]``) built from the first
        ``n_neighbors`` of the shared neighbour search."""
        neighbours = self.neighbours
        with self.profile("knn_graph"):
            if self.is_graph:  # scanpy needs a representation; the transformer ignores it
                self.adata.obsm["_cells"] = np.zeros((self.n_cells, 1), dtype=np.float32)
            sc.pp.neighbors(
                self.adata,
                use_rep="_cells" if self.is_graph else EMBEDDING_KEY,
                transformer=PrecomputedNeighbors(neighbours, self.params["n_neighbors"]),
            )
        return self.adata

    @cached_property
    def leiden_seeds(self) -> list[int]:
        """Leiden is randomised: ARI, NMI and isolated-label F1 are means over these seeds."""
        return [int(seed) for seed in self.params.get("leiden_seeds") or [self.params["seed"]]]

    @cached_property
    def resolutions(self) -> list[float]:
        return np.linspace(*self.params["leiden_resolutions"]).round(3).tolist()

    def start_leiden(self) -> bool:
        """Start the Leiden search in a background thread that drives a pool of processes
        (``leiden_processes``), so that the metrics that need no clusters are computed
        meanwhile; the clustering metrics wait for it. Whether it started: only igraph's
        Leiden over two processes or more (leidenalg runs through scanpy on the shared
        AnnData, in this thread)."""
        if "_leiden_search" in self.__dict__ or self._leiden_future is not None:
            return False
        if self.params["leiden_flavor"] != "igraph" or self._leiden_processes < 2:
            return False
        from concurrent.futures import ThreadPoolExecutor

        self.graph  # noqa: B018 - built here, in this thread, before the search reads it
        executor = ThreadPoolExecutor(1, thread_name_prefix="leiden")
        self._leiden_future = executor.submit(self._search_leiden)
        executor.shutdown(wait=False)
        return True

    @cached_property
    def _leiden_processes(self) -> int:
        n_tasks = len(self.resolutions) * len(self.leiden_seeds)
        return processes_for(self.params.get("leiden_processes", 1), n_tasks)

    _leiden_future: Any = None

    @cached_property
    def _leiden_search(self) -> LeidenResult:
        if self._leiden_future is not None:
            return self._leiden_future.result()
        return self._search_leiden()

    def _search_leiden(self) -> LeidenResult:
        """Per Leiden seed, its clusterings and the one whose NMI with the labels is highest
        (the first of equals), as scib's ``cluster_optimal_resolution`` keeps it.

        The first seed clusters at every resolution. With ``leiden_seed_window: w``, each other
        seed clusters only at the resolutions within ``w`` steps of the first seed's best (a
        seed moves the clusters, hardly the resolution that fits the labels best); with
        ``null``, at every resolution too. The runs are spread over ``leiden_processes``.
        """
        seeds, resolutions = self.leiden_seeds, self.resolutions
        window = self.params.get("leiden_seed_window")
        graph, processes = self.graph, self._leiden_processes
        by_seed: dict[int, list[np.ndarray]] = {}
        best: dict[int, np.ndarray] = {}
        with self.profile("leiden"), leiden_clusterer(graph, self.params, processes) as cluster:
            by_seed[seeds[0]] = cluster([(seeds[0], r) for r in resolutions])
            first_best = self._most_informative(by_seed[seeds[0]])
            best[seeds[0]] = by_seed[seeds[0]][first_best]
            if window is not None:
                resolutions = resolutions[max(0, first_best - window) : first_best + window + 1]
            others = cluster([(seed, r) for seed in seeds[1:] for r in resolutions])
            for number, seed in enumerate(seeds[1:]):
                by_seed[seed] = others[number * len(resolutions) : (number + 1) * len(resolutions)]
                best[seed] = by_seed[seed][self._most_informative(by_seed[seed])]
        return by_seed, best

    def _most_informative(self, clusterings: list[np.ndarray]) -> int:
        """The position of the clustering with the highest NMI with the labels (first of
        equals): scib's ``nmi`` (sklearn's, arithmetic mean), without writing to ``obs``,
        which other metrics read meanwhile."""
        from sklearn.metrics import normalized_mutual_info_score

        labels = self.adata.obs[self.columns["label"]].tolist()
        scores = [
            normalized_mutual_info_score(clusters.tolist(), labels, average_method="arithmetic")
            for clusters in clusterings
        ]
        return int(np.argmax(scores))

    @property
    def clusterings_by_seed(self) -> dict[int, list[np.ndarray]]:
        """Each Leiden seed's clusterings (see ``_leiden_search``)."""
        return self._leiden_search[0]

    @property
    def full_sweeps(self) -> dict[int, list[np.ndarray]]:
        """The seeds' clusterings at every resolution (only the first seed's when the others
        searched a window): what isolated-label F1, a best over all resolutions, reads."""
        n_resolutions = len(self.resolutions)
        return {
            seed: clusterings
            for seed, clusterings in self.clusterings_by_seed.items()
            if len(clusterings) == n_resolutions
        }

    @property
    def optimal_clusterings(self) -> dict[int, np.ndarray]:
        """Per Leiden seed, its clustering with the highest NMI with the labels."""
        return self._leiden_search[1]

    def mean_over_leiden_seeds(self, key: str, score: Callable[[np.ndarray], float]) -> float:
        """The mean of ``score(optimal clusters)`` over the Leiden seeds; the spread is kept in
        ``leiden_spread[key]`` (with two seeds or more) for the metric's note."""
        values = [score(clusters) for clusters in self.optimal_clusterings.values()]
        if len(values) > 1:
            self.leiden_spread[key] = float(np.std(values, ddof=1))
        return float(np.mean(values))

    @cached_property
    def leiden_spread(self) -> dict[str, float]:
        return {}

    @cached_property
    def isolated_labels(self) -> list[str]:
        from cite_bench.metrics._clustering import isolated_labels

        return isolated_labels(self.adata.obs, self.columns["label"], self.columns["batch"])

    @cached_property
    def silhouettes(self) -> dict[str, float]:
        """Cell-type, batch (with two batches or more) and isolated-label silhouettes."""
        from cite_bench.metrics._silhouette import silhouette_metrics

        with self.profile("silhouettes"):
            return silhouette_metrics(
                self.embedding,
                self.labels,
                self.batches if self.n_batches > 1 else None,
                self.isolated_labels,
            )
