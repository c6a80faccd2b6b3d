"""The work that several metrics share, done once per embedding and only when a metric asks.

``ScoringData`` holds one embedding with its cell annotations and computes, on first use, what
the metrics of ``cite_bench.metrics`` read: one exact nearest-neighbour search (which feeds the
Leiden graph, graph connectivity, LISI and kBET), Leiden clusterings at every resolution (shared
by ARI, NMI and isolated-label F1) and the three silhouettes from one pass over the distances
(``pipelines/evaluation/silhouette.py``). ``pipelines/evaluation/reference.py`` keeps scib's own
code path, against which tests check the values.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from cite_bench.knn_graph import neighbours_of, subset_neighbours
from cite_bench.leiden import LeidenRunner, Task, processes_for
from cite_bench.neighbours import exact_neighbours, search_device

logger = logging.getLogger(__name__)
# Each scoring step's wall time, at DEBUG level (the benchmark collects them).
step_logger = logging.getLogger(f"{__name__}.steps")

EMBEDDING_KEY = "X_emb"
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


class MetricNotApplicable(Exception):  # noqa: N818 - reads as what it is: a reason, not a fault
    """A metric that does not apply to these data; the message says why."""


class MetricNotComputable(Exception):  # noqa: N818
    """A metric that applies but failed numerically on this embedding (e.g. a diffusion map
    that does not converge on a degenerate geometry); the message says why. It counts as a
    failure: 0 in the aggregates."""


def embedding_anndata(embedding: pd.DataFrame, cells: pd.DataFrame) -> ad.AnnData:
    """Pair an embedding with the cell annotations, refusing any mismatch of barcodes."""
    missing = embedding.index.difference(cells.index)
    if missing.size or embedding.shape[0] != cells.shape[0]:
        raise ValueError(
            f"Embedding ({embedding.shape[0]} cells) and cell metadata ({cells.shape[0]} cells) "
            f"do not describe the same cells ({missing.size} embedding barcodes unknown)."
        )
    values = embedding.to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("The embedding contains NaN or infinite values.")
    constant = values.std(axis=0) == 0
    if constant.all():
        raise ValueError("Every dimension of the embedding is constant.")
    if constant.any():
        # e.g. MOFA factors switched off by its sparsity priors: they carry no information and
        # break regression-based scores (PCR).
        logger.info("Dropping %d constant embedding dimensions.", constant.sum())
        values = values[:, ~constant]
    adata = ad.AnnData(obs=cells.loc[embedding.index].copy())
    adata.obsm[EMBEDDING_KEY] = values
    return adata


def graph_anndata(graph: pd.DataFrame, cells: pd.DataFrame) -> tuple[ad.AnnData, Any]:
    """Pair a graph-output method's graph table (``cite_bench.knn_graph``) with the cell
    annotations; returns the cells and the graph as neighbour search results."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    missing = graph.index.difference(cells.index)
    if missing.size or graph.shape[0] != cells.shape[0]:
        raise ValueError(
            f"Graph ({graph.shape[0]} cells) and cell metadata ({cells.shape[0]} cells) do not "
            f"describe the same cells ({missing.size} graph barcodes unknown)."
        )
    indices, distances = neighbours_of(graph)
    adata = ad.AnnData(obs=cells.loc[graph.index].copy())
    return adata, NeighborsResults(indices=indices, distances=distances)


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
        return isolated_labels(self.adata.obs, self.columns["label"], self.columns["batch"])

    @cached_property
    def silhouettes(self) -> dict[str, float]:
        """Cell-type, batch (with two batches or more) and isolated-label silhouettes."""
        from cite_bench.pipelines.evaluation.silhouette import silhouette_metrics

        with self.profile("silhouettes"):
            return silhouette_metrics(
                self.embedding,
                self.labels,
                self.batches if self.n_batches > 1 else None,
                self.isolated_labels,
            )


def nearest_neighbours(matrix: np.ndarray, n_neighbors: int, device: str = "cpu") -> Any:
    """Exact nearest neighbours of every cell, itself first (``cite_bench.neighbours``): one
    search serves the Leiden graph, graph connectivity, LISI and kBET."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    indices, distances = exact_neighbours(matrix, n_neighbors, device)
    return NeighborsResults(indices=indices, distances=distances)


class PrecomputedNeighbors:
    """A kNN "transformer" (scanpy's ``transformer=`` protocol) that hands ``sc.pp.neighbors``
    the first ``n_neighbors`` columns of a search already done, instead of searching again."""

    def __init__(self, neighbours: Any, n_neighbors: int) -> None:
        self.neighbours = neighbours
        self.n_neighbors = min(n_neighbors, neighbours.indices.shape[1])

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"n_neighbors": self.n_neighbors}

    def fit_transform(self, matrix: Any) -> Any:
        from scipy import sparse

        indices = self.neighbours.indices[:, : self.n_neighbors]
        distances = self.neighbours.distances[:, : self.n_neighbors]
        n_cells = indices.shape[0]
        if matrix.shape[0] != n_cells:
            raise ValueError("The precomputed neighbours describe other cells.")
        pointers = np.arange(0, indices.size + 1, self.n_neighbors)
        return sparse.csr_matrix(
            (distances.ravel(), indices.ravel(), pointers), shape=(n_cells, n_cells)
        )


# igraph's Leiden as ``sc.tl.leiden(flavor="igraph")`` runs it (scanpy's coming default).
IGRAPH_ITERATIONS = 2


@contextlib.contextmanager
def leiden_clusterer(
    adata: ad.AnnData, params: Mapping[str, Any], processes: int = 1
) -> Iterator[Callable[[Sequence[Task]], list[np.ndarray]]]:
    """A function that clusters the kNN graph of ``adata`` at (seed, resolution) pairs.

    ``igraph`` (``params["leiden_flavor"]``): the graph is converted once per process and each
    pair gives exactly the clusters of ``sc.tl.leiden(flavor="igraph", n_iterations=2,
    directed=False)`` with that seed (``cite_bench.leiden``), over ``processes`` processes.
    ``leidenalg`` (what scib uses, ~10x slower): ``sc.tl.leiden(flavor="leidenalg")`` here,
    in this process.
    """
    if params["leiden_flavor"] == "igraph":
        with LeidenRunner(adata.obsp["connectivities"], IGRAPH_ITERATIONS, processes) as run:
            yield run
        return

    def leidenalg(tasks: Sequence[Task]) -> list[np.ndarray]:
        clusterings = []
        for seed, resolution in tasks:
            sc.tl.leiden(
                adata,
                resolution=resolution,
                key_added="_leiden",
                random_state=seed,
                flavor="leidenalg",
            )
            clusterings.append(adata.obs.pop("_leiden").to_numpy())
        return clusterings

    yield leidenalg


def isolated_labels(obs: pd.DataFrame, label: str, batch: str) -> list[str]:
    """Labels found in the fewest batches (scib's rule), none if all are in every batch."""
    batches_per_label = obs.groupby(label, observed=True)[batch].nunique()
    fewest = batches_per_label.min()
    if fewest == obs[batch].nunique():
        return []
    return batches_per_label.index[batches_per_label == fewest].tolist()


def isolated_label_f1(
    obs: pd.DataFrame, label: str, batch: str, clusterings: list[np.ndarray]
) -> float:
    """scib's isolated-label F1: for each isolated label, the best F1 of any Leiden cluster
    at any resolution against that label; the mean over isolated labels.

    Same definition as ``scib.me.isolated_labels_f1``, but from clusterings shared by all
    labels and metrics (scib reclusters per label with leidenalg: ~40x slower on the demo).
    """
    from sklearn.metrics import f1_score

    labels = isolated_labels(obs, label, batch)
    if not labels:
        return np.nan
    truth = obs[label].astype(str).to_numpy()
    scores = []
    for isolated in labels:
        is_label = truth == isolated
        scores.append(
            max(
                f1_score(is_label, clusters == cluster)
                for clusters in clusterings
                for cluster in np.unique(clusters[is_label])
            )
        )
    return float(np.mean(scores))


def cell_cycle_conservation(
    embedding: np.ndarray, unintegrated: np.ndarray, phases: pd.Series, batches: np.ndarray
) -> float:
    """scib's cell-cycle conservation, with the annotated phase as the covariate.

    In each batch, the variance that the phase explains through principal component
    regression is compared before (``unintegrated``) and after integration:
    ``max(0, 1 - |after - before| / before)``; the mean over batches. scib regresses on S and
    G2/M scores recomputed from marker genes, which a highly-variable-gene subset may lack;
    the phase call of the input (e.g. GEX_phase in the GEO file) carries the same signal.
    NaN where no batch has cell-cycle variance to conserve.
    """
    from scib_metrics.utils import principal_component_regression

    known = phases.notna().to_numpy()
    codes = phases.astype("category").cat.codes.to_numpy()
    scores = []
    for name in np.unique(batches[known]):
        cells = known & (batches == name)
        if np.unique(codes[cells]).size < 2 or cells.sum() < 3:
            continue  # no cell-cycle variance to conserve in this batch
        before, after = (
            float(principal_component_regression(matrix[cells], codes[cells], categorical=True))
            for matrix in (unintegrated, embedding)
        )
        if before > 0:
            scores.append(max(0.0, 1 - abs(after - before) / before))
    return float(np.mean(scores)) if scores else np.nan
