"""Measuring: wall time and peak memory of steps, nodes and whole stages."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.runner import SequentialRunner

logger = logging.getLogger(__name__)

EVALUATE = "evaluate"
# The pipeline's scoring restricted to what scib's path computes (reference.REFERENCE_KEYS),
# with one Leiden seed: the same computation as scib's path with igraph.
SCIB_METRICS_STAGE = "evaluate, scib's metrics, 1 Leiden seed"
Row = dict[str, Any]


def _rss_gb() -> float:
    """Resident memory of this process now (Linux ``/proc``; 0 where it is not available)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def process_peak_gb() -> float:
    """The highest resident memory this process has had (``ru_maxrss``, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


class StepRecorder:
    """``with recorder("step"):`` records the step's wall time and the highest resident
    memory sampled while it ran."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        self.rows: list[Row] = []

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        peak = [_rss_gb()]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], _rss_gb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - started
            done.set()
            sampler.join()
            peak[0] = max(peak[0], _rss_gb())
            self.rows.append({**self.fields, "step": step, "wall_s": wall, "peak_rss_gb": peak[0]})


class NodeTimer:
    """A Kedro hook: each node's wall time and peak memory, as a ``StepRecorder`` step named
    after the node, then the scoring steps logged within it (``cite_bench.scoring``: kNN,
    Leiden, kBET, ...) as ``<node>: <step>``, wall time only (some overlap: Leiden runs in the
    background)."""

    def __init__(self, record: StepRecorder) -> None:
        self.record = record
        self._running: dict[str, contextlib.ExitStack] = {}
        self._steps: list[Row] = []

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(self.record(node.name))
        stack.enter_context(_scoring_steps(self._steps))
        self._running[node.name] = stack

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        self._close(node)

    @hook_impl
    def on_node_error(self, node: Any) -> None:
        self._close(node)
        self.record.rows[-1]["note"] = "failed"

    def _close(self, node: Any) -> None:
        self._running.pop(node.name).close()
        for step in self._steps:
            self.record.rows.append(
                {**self.record.fields, **step, "step": f"{node.name}: {step['step']}"}
            )
        self._steps.clear()


class TimedRunner(SequentialRunner):
    """Kedro's ``SequentialRunner`` with a ``NodeTimer`` on the run's hook manager, beside the
    project's own hooks: the nodes run exactly as ``kedro run`` runs them."""

    def __init__(self, timer: NodeTimer) -> None:
        super().__init__()
        self.timer = timer

    def run(self, pipeline: Any, catalog: Any, hook_manager: Any = None, *args: Any, **kwargs: Any):
        if hook_manager is not None and not hook_manager.is_registered(self.timer):
            hook_manager.register(self.timer)
        return super().run(pipeline, catalog, hook_manager, *args, **kwargs)


class _ScoringSteps(logging.Handler):
    """Collects the scoring steps that ``cite_bench.scoring`` logs."""

    def __init__(self, steps: list[Row]) -> None:
        super().__init__(logging.DEBUG)
        self.steps = steps

    def emit(self, log: logging.LogRecord) -> None:
        step = getattr(log, "scoring_step", None)
        if step is not None:
            self.steps.append({"step": step, "wall_s": log.wall_s, "peak_rss_gb": float("nan")})


@contextlib.contextmanager
def _scoring_steps(steps: list[Row]) -> Iterator[None]:
    from cite_bench.scoring import step_logger

    handler = _ScoringSteps(steps)
    previous = step_logger.level
    step_logger.addHandler(handler)
    step_logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        step_logger.removeHandler(handler)
        step_logger.setLevel(previous)


def run_stage(function: Callable[..., list[Row]], *args: Any) -> list[Row]:
    """Run one stage in a fresh process, so that its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def finish_stage(record: StepRecorder) -> list[Row]:
    rows = record.rows
    rows.append({**record.fields, "step": "process peak", "wall_s": float("nan")})
    rows[-1]["peak_rss_gb"] = process_peak_gb()
    return rows
