"""A Kedro runner that runs each node as a task on a Dask cluster, hooks and tracking included.

``kedro run --runner cite_bench.runner.DaskRunner`` starts a ``LocalCluster``; with a scheduler
address (``--runner-params scheduler=tcp://host:8786``, ``--params cluster.scheduler=...`` or
Dask's own ``DASK_SCHEDULER_ADDRESS``) it submits to a cluster that is already running, e.g. one
started by dask-jobqueue on Slurm or by dask-kubernetes.

- Nodes are submitted in dependency order; the scheduler runs independent ones (the models'
  namespaces and their evaluations) at the same time.
- In-memory datasets travel as task results; file datasets are read and written by the workers
  through the catalog's paths, so remote workers need the project on a shared filesystem at the
  same path (or fsspec URLs such as ``s3://`` in the catalog).
- Kedro's own ``ParallelRunner`` does not run hooks with their state, so tracking done in hooks
  is lost under it. Here every task runs the node with Kedro's ``Task`` and a hook manager of
  the hooks' worker copies (:class:`WorkerHooks`): the node and dataset hooks fire on the
  worker exactly as under the sequential runner, and what they report comes back to the hooks
  in the ``kedro run`` process (e.g. which runs' logging failed).
- Nodes ask for worker resources by tag (``cluster.resources``): totalVI and Multigrate training
  carries the tag ``gpu``, so ``{gpu: {GPU: 1}}`` sends it to GPU workers.
- A worker that dies mid-task has its task rerun elsewhere by the scheduler. A node that raises
  stops the run with the node's name and its error; finished artifacts stay on disk for
  ``--only-missing-outputs``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import AbstractRunner
from kedro.runner.task import Task

from cite_bench.parameters import Cluster

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from distributed import Client
    from kedro.io import CatalogProtocol
    from kedro.pipeline import Pipeline
    from kedro.pipeline.node import Node
    from pluggy import PluginManager

logger = logging.getLogger(__name__)

CLUSTER_PARAMETERS = "params:cluster"


@runtime_checkable
class WorkerHooks(Protocol):
    """A hook whose node and dataset hooks must run on the worker that runs the node.

    ``worker_hooks()`` returns a picklable copy carrying what the copy needs (e.g. the MLflow
    run ids); ``merge_worker_report()`` receives what the copy's ``worker_report()`` returned
    after the node, in the ``kedro run`` process."""

    def worker_hooks(self) -> Any: ...

    def merge_worker_report(self, report: Any) -> None: ...


def cluster_settings(configured: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> Cluster:
    """``cluster`` from the parameters, overridden by ``--runner-params``; without a scheduler
    address there, Dask's own (``DASK_SCHEDULER_ADDRESS``), else a LocalCluster."""
    import dask.config

    values = {**(configured or {}), **{k: v for k, v in overrides.items() if v is not None}}
    settings = Cluster.model_validate(values)
    if not settings.scheduler and dask.config.get("scheduler-address", None):
        settings = settings.model_copy(update={"scheduler": dask.config.get("scheduler-address")})
    return settings


def resources_for(node: Node, settings: Cluster) -> dict[str, float] | None:
    """The worker resources a node asks for: the blocks of its tags, else ``default``."""
    blocks = [settings.resources[tag] for tag in sorted(node.tags) if tag in settings.resources]
    if not blocks and "default" in settings.resources:
        blocks = [settings.resources["default"]]
    merged = {name: amount for block in blocks for name, amount in block.items()}
    return merged or None


@dataclass
class NodeOutcome:
    """What a node's task leaves on its worker for the nodes after it: its in-memory outputs,
    and its worker hooks' reports."""

    outputs: dict[str, Any]
    reports: list[Any]
    worker: str


@dataclass
class NodeReport:
    """What comes back to the ``kedro run`` process: the hooks' reports, the worker, and only
    those in-memory outputs that are the pipeline's own outputs (the rest stay on workers)."""

    reports: list[Any]
    worker: str
    outputs: dict[str, Any]


def report_of(outcome: NodeOutcome, wanted: list[str]) -> NodeReport:
    outputs = {name: outcome.outputs[name] for name in wanted if name in outcome.outputs}
    return NodeReport(outcome.reports, outcome.worker, outputs)


class DaskRunner(AbstractRunner):
    """Runs a pipeline's nodes as Dask tasks (see the module docstring)."""

    def __init__(
        self,
        is_async: bool = False,
        scheduler: str | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        memory_limit: str | None = None,
    ) -> None:
        super().__init__(is_async=is_async)
        self._overrides = {
            "scheduler": scheduler,
            "n_workers": n_workers,
            "threads_per_worker": threads_per_worker,
            "memory_limit": memory_limit,
        }

    def _get_executor(self, max_workers: int) -> Executor | None:
        return None  # tasks go to Dask, not to an executor of this process

    def _run(
        self,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager | None = None,
        run_id: str | None = None,
    ) -> None:
        configured = catalog.load(CLUSTER_PARAMETERS) if CLUSTER_PARAMETERS in catalog else None
        settings = cluster_settings(configured, self._overrides)
        with connected(settings) as client:
            _check_resources(client, settings, pipeline)
            self._run_on(client, settings, pipeline, catalog, hook_manager, run_id)

    def _run_on(
        self,
        client: Client,
        settings: Cluster,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager | None,
        run_id: str | None,
    ) -> None:
        from distributed import as_completed

        in_memory = {
            name
            for name in pipeline.datasets()
            if isinstance(catalog.get(name, fallback_to_runtime_pattern=True), MemoryDataset)
        }
        given = {name: catalog.load(name) for name in pipeline.inputs() & in_memory}
        plugins = [
            plugin
            for plugin in (hook_manager.get_plugins() if hook_manager else [])
            if isinstance(plugin, WorkerHooks)
        ]
        copies = [plugin.worker_hooks() for plugin in plugins]
        project = str(Path.cwd())

        futures: dict[Node, Any] = {}
        reports: dict[Any, Node] = {}
        for node in pipeline.nodes:  # in dependency order
            upstream = [futures[parent] for parent in pipeline.node_dependencies[node]]
            files = {
                name: catalog.get(name, fallback_to_runtime_pattern=True)
                for name in [*node.inputs, *node.outputs]
                if name not in in_memory
            }
            futures[node] = client.submit(
                run_node,
                node,
                files,
                {name: given[name] for name in node.inputs if name in given},
                [name for name in node.outputs if name in in_memory],
                copies,
                run_id,
                project,
                *upstream,
                key=f"{node.name}-{run_id or 'run'}",
                resources=resources_for(node, settings),
                pure=False,
            )
            wanted = sorted(pipeline.outputs() & set(node.outputs) & in_memory)
            report = client.submit(
                report_of, futures[node], wanted, key=f"{node.name}-{run_id or 'run'}-report"
            )
            reports[report] = node
        # A node's result (its in-memory outputs) is let go once every node using it is done.
        users_left = {node: 0 for node in futures}
        for node in futures:
            for parent in pipeline.node_dependencies[node]:
                users_left[parent] += 1
        done: set[Node] = set()
        try:
            for future in as_completed(list(reports)):
                node = reports.pop(future)
                try:
                    outcome: NodeReport = future.result()
                except Exception as exc:
                    exc.add_note(f"Kedro node '{node.name}' failed on the Dask cluster.")
                    logger.error("Node '%s' failed: %s: %s", node.name, type(exc).__name__, exc)
                    self._suggest_resume_scenario(pipeline, done, catalog)
                    raise
                for plugin, report in zip(plugins, outcome.reports, strict=True):
                    plugin.merge_worker_report(report)
                for name, data in outcome.outputs.items():
                    catalog.save(name, data)
                done.add(node)
                for parent in pipeline.node_dependencies[node]:
                    users_left[parent] -= 1
                # (A node's report can arrive after its users' reports: it is a task of its own.)
                for finished in (node, *pipeline.node_dependencies[node]):
                    if finished in done and users_left[finished] == 0 and finished in futures:
                        futures.pop(finished).release()
                self._logger.info("Completed node: %s (on %s)", node.name, outcome.worker)
                self._logger.info("Completed %d out of %d tasks", len(done), len(pipeline.nodes))
        finally:
            pending = [*futures.values(), *reports]
            client.cancel([future for future in pending if not future.done()])


def run_node(
    node: Node,
    files: dict[str, Any],
    given: dict[str, Any],
    memory_outputs: list[str],
    hooks: list[Any],
    run_id: str | None,
    project: str,
    *upstream: NodeOutcome,
) -> NodeOutcome:
    """One node on a worker, with Kedro's ``Task`` and the worker copies of the hooks."""
    from distributed import get_worker
    from kedro.framework.hooks.manager import _create_hook_manager

    values = dict(given)
    for outcome in upstream:
        values.update(outcome.outputs)
    datasets = dict(files)
    for name in node.inputs:
        if name in values:
            datasets[name] = MemoryDataset(values[name], copy_mode="assign")
    for name in memory_outputs:
        datasets[name] = MemoryDataset(copy_mode="assign")
    catalog = DataCatalog(datasets=datasets)
    hook_manager = _create_hook_manager()
    for hook in hooks:
        hook_manager.register(hook)
    with _in_project(Path(project)):
        task = Task(node, catalog, is_async=False, hook_manager=hook_manager, run_id=run_id)
        task.execute()
    return NodeOutcome(
        outputs={name: _picklable(catalog.load(name)) for name in memory_outputs},
        reports=[hook.worker_report() for hook in hooks],
        worker=get_worker().address,
    )


def _picklable(value: Any) -> Any:
    """``value``, with each MuData's file manager pointing at its MuData again: mudata 0.4
    leaves it a dead weak reference, which fails to unpickle on the next worker."""
    import mudata as md

    if isinstance(value, md.MuData):
        value.file._adata_ref = weakref.ref(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _picklable(item)
    return value


_CHDIR = threading.Lock()


@contextmanager
def _in_project(project: Path) -> Iterator[None]:
    """Run in the project folder: the catalog's relative paths (data/...) start there."""
    with _CHDIR:
        if Path.cwd() != project:
            if not project.is_dir():
                raise FileNotFoundError(
                    f"The project folder {project} is not on this worker. The catalog's "
                    "relative paths need the project on a shared filesystem at the same path, "
                    "or fsspec URLs (s3://..., gs://...) in conf/."
                )
            os.chdir(project)
    yield


@contextmanager
def connected(settings: Cluster) -> Iterator[Client]:
    """A client of the configured scheduler, or of a LocalCluster started for this run."""
    from distributed import Client, LocalCluster

    if settings.scheduler:
        logger.info("Dask: submitting to the scheduler at %s", settings.scheduler)
        with Client(settings.scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=settings.n_workers,
            threads_per_worker=settings.threads_per_worker,
            memory_limit=settings.memory_limit or "auto",
            resources=dict(settings.worker_resources) or None,
            dashboard_address=settings.dashboard_address,
            processes=True,
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info(
            "Dask: a LocalCluster of %d worker processes x %d threads (%s)",
            settings.n_workers,
            settings.threads_per_worker,
            cluster.scheduler_address,
        )
        yield client


def _check_resources(client: Client, settings: Cluster, pipeline: Pipeline) -> None:
    """Refuse, before any work, a node whose resources no worker offers (it would wait forever)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    offered: dict[str, float] = {}
    for worker in workers:
        for name, amount in (worker.get("resources") or {}).items():
            offered[name] = max(offered.get(name, 0), amount)
    for node in pipeline.nodes:
        for name, amount in (resources_for(node, settings) or {}).items():
            if offered.get(name, 0) < amount:
                raise RuntimeError(
                    f"Node '{node.name}' asks for worker resource {name}={amount} "
                    f"(cluster.resources), but no worker offers it (offered: {offered or 'none'}). "
                    f"Start workers with `dask worker <scheduler> --resources {name}={amount}` "
                    "or set cluster.worker_resources for the LocalCluster."
                )
