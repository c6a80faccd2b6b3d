"""Leiden clusterings of one kNN graph at many resolutions and seeds, spread over processes.

Leiden is most of the evaluation's time at scale (scib's 20 resolutions, per Leiden seed) and
igraph holds Python's GIL while it clusters, so threads do not help: each process of a pool
converts the graph once and then clusters it at the (seed, resolution) pairs it is given. A
pair gives the same clusters in any process and in any order, because igraph's random number
generator is seeded for each run as ``sc.tl.leiden(flavor="igraph")`` seeds it, with its
arguments (modularity, weighted, 2 iterations); the graph holds each edge once (``Edges.of``
says why). ``tests/test_scoring.py`` compares the clusters with scanpy's.

``leiden_clusterer`` chooses between this and scanpy's leidenalg (scib's). This module
imports only numpy and igraph at the top, so that a pool's processes start in a second.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Task = tuple[int, float]  # (seed, resolution)


@dataclass(frozen=True)
class Edges:
    """The graph as plain arrays (what travels to the pool's processes)."""

    n_vertices: int
    sources: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, adjacency: Any) -> Edges:
        """Each edge of a symmetric sparse adjacency matrix once, with its weight.

        scanpy's ``get_igraph_from_adjacency`` adds every stored entry, so each undirected
        edge twice: that doubles every weight, the total weight and every degree, which leaves
        modularity, hence what Leiden optimises, unchanged, and makes each run ~30% slower
        (1.2-1.7 s against 1.8-2.3 s at 90,000 cells). The clusters are as good as scanpy's
        (same objective) but not identical for a seed: the random choices meet the
        neighbours in another order.
        """
        from scipy import sparse

        upper = sparse.triu(adjacency, k=1).tocoo()
        return cls(adjacency.shape[0], upper.row, upper.col, upper.data)

    def igraph(self) -> Any:
        import igraph

        edges = np.column_stack([self.sources, self.targets])
        graph = igraph.Graph(n=self.n_vertices, edges=edges, directed=False)
        graph.es["weight"] = self.weights
        return graph


class _SeededRandom:
    """igraph's random number generator drawing from ``RandomState(seed)``, as scanpy's
    ``_RNGIgraph`` does, so that a seed gives scanpy's clusters."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)

    def getrandbits(self, k: int) -> int:
        return self._rng.tomaxint() & ((1 << k) - 1)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b + 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rng, "normal" if name == "gauss" else name)


def cluster(graph: Any, task: Task, n_iterations: int) -> np.ndarray:
    """Leiden (modularity, weighted) at one resolution with one seed; cluster codes."""
    import igraph

    seed, resolution = task
    igraph.set_random_number_generator(_SeededRandom(seed))
    try:
        partition = graph.community_leiden(
            objective_function="modularity",
            weights="weight",
            resolution=resolution,
            n_iterations=n_iterations,
        )
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(partition.membership, dtype=np.int32)


# The graph of this pool process, converted once by ``_start``.
_graph: Any = None


def _start(edges: Edges) -> None:
    global _graph  # noqa: PLW0603 - the one graph of a pool process, set by its initializer
    _graph = edges.igraph()


def _cluster_in_pool(task: Task, n_iterations: int) -> np.ndarray:
    return cluster(_graph, task, n_iterations)


def available_cores() -> int:
    """Cores this process may use (its CPU affinity, e.g. a container's or Slurm's share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def processes_for(setting: int | str, n_tasks: int) -> int:
    """How many processes a ``leiden_processes`` setting gives: ``auto`` is the cores
    available; never more than the tasks, and 1 inside a daemonic process (a Dask worker),
    which may not start processes of its own."""
    wanted = available_cores() if setting == "auto" else int(setting)
    if multiprocessing.current_process().daemon:
        return 1
    return max(1, min(wanted, n_tasks))


class LeidenRunner:
    """Clusters one graph at the (seed, resolution) pairs it is asked for: in this process,
    or over a pool of processes started once (``with LeidenRunner(...) as run``)."""

    def __init__(self, adjacency: Any, n_iterations: int, processes: int) -> None:
        self.edges = Edges.of(adjacency)
        self.n_iterations = n_iterations
        self.processes = processes
        self._pool: Executor | None = None
        self._graph: Any = None

    def __enter__(self) -> LeidenRunner:
        if self.processes > 1:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(self.edges,),
            )
        else:
            self._graph = self.edges.igraph()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def __call__(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        if self._pool is None:
            return [cluster(self._graph, task, self.n_iterations) for task in tasks]
        try:
            futures = [
                self._pool.submit(_cluster_in_pool, task, self.n_iterations) for task in tasks
            ]
            return [future.result() for future in futures]
        except BrokenProcessPool as exc:
            # e.g. a script without an `if __name__ == "__main__":` guard, which processes
            # started with "spawn" import again: the same clusters, in this process.
            logger.warning("Leiden runs in this process: its pool of processes failed (%s).", exc)
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
            self._graph = self.edges.igraph()
            return self(tasks)


# igraph's Leiden as ``sc.tl.leiden(flavor="igraph")`` runs it (scanpy's coming default).
IGRAPH_ITERATIONS = 2


@contextlib.contextmanager
def leiden_clusterer(
    adata: Any, params: Mapping[str, Any], processes: int = 1
) -> Iterator[Callable[[Sequence[Task]], list[np.ndarray]]]:
    """A function that clusters the kNN graph of ``adata`` at (seed, resolution) pairs.

    ``igraph`` (``params["leiden_flavor"]``): the graph is converted once per process and each
    pair gives exactly the clusters of ``sc.tl.leiden(flavor="igraph", n_iterations=2,
    directed=False)`` with that seed, over ``processes`` processes (``LeidenRunner``).
    ``leidenalg`` (what scib uses, ~10x slower): ``sc.tl.leiden(flavor="leidenalg")`` here,
    in this process.
    """
    if params["leiden_flavor"] == "igraph":
        with LeidenRunner(adata.obsp["connectivities"], IGRAPH_ITERATIONS, processes) as run:
            yield run
        return

    def leidenalg(tasks: Sequence[Task]) -> list[np.ndarray]:
        import scanpy as sc

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
