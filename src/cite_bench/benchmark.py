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

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.framework.hooks import hook_impl
from kedro.runner import SequentialRunner

from cite_bench.methods import METHODS

logger = logging.getLogger(__name__)

GEO_GENES = 13_953
GEO_PROTEINS = 134
ENV = "geo"  # the pipelines read the simulated file as they read GEO's
EVALUATE = "evaluate"
# The pipeline's scoring restricted to what scib's path computes (reference.REFERENCE_KEYS),
# with one Leiden seed: the same computation as scib's path with igraph.
SCIB_METRICS_STAGE = "evaluate, scib's metrics, 1 Leiden seed"
Row = dict[str, Any]


# --- measuring ------------------------------------------------------------------------------


def _rss_gb() -> float:
    """Resident memory of this process now (Linux ``/proc``; 0 where it is not available)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def _process_peak_gb() -> float:
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


def _run_stage(function: Callable[..., list[Row]], *args: Any) -> list[Row]:
    """Run one stage in a fresh process, so that its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _finish(record: StepRecorder) -> list[Row]:
    rows = record.rows
    rows.append({**record.fields, "step": "process peak", "wall_s": float("nan")})
    rows[-1]["peak_rss_gb"] = _process_peak_gb()
    return rows


# --- stages (run in child processes: module-level functions) ---------------------------------


def scratch_project(project_path: Path, folder: Path) -> Path:
    """The project's configuration and ``pyproject.toml`` in ``folder``, with an empty data
    folder: the benchmark's runs write there, never into the project's ``data/``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(project_path / "pyproject.toml", folder / "pyproject.toml")
    if not (folder / "conf").exists():
        shutil.copytree(
            project_path / "conf", folder / "conf", ignore=shutil.ignore_patterns("local")
        )
        (folder / "conf" / "local").mkdir()
        # MLflow's set-up is paid once per `kedro run`, not per stage: off here.
        (folder / "conf" / ENV / "tracking.yml").write_text("enabled: false\n")
    (folder / "data").mkdir(exist_ok=True)
    (folder / "src").mkdir(exist_ok=True)  # Kedro wants the folder; the code is the installed one
    return folder


def stage_simulate(n_cells: int, path: str, seed: int) -> list[Row]:
    from cite_bench.simulation import simulate_cite_seq

    record = StepRecorder(stage="data")
    with record("simulate"):
        adata = simulate_cite_seq(
            n_cells=n_cells, n_genes=GEO_GENES, n_proteins=GEO_PROTEINS, seed=seed
        )
    with record("write .h5ad"):
        adata.write_h5ad(path)
    return _finish(record)


def stage_kedro_run(
    project_path: str,
    stage: str,
    runtime_params: dict[str, Any],
    run_args: dict[str, Any],
) -> list[Row]:
    """One ``kedro run --env geo`` of some of the project's nodes (``run_args``: Kedro's
    ``pipeline_name``, ``namespaces``, ``node_names``), timed node by node. The whole stage,
    process start-up (imports) included, is the row ``whole stage``."""
    started = time.perf_counter()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    os.chdir(project_path)  # relative paths (data/, the tracking store) are the scratch copy's
    bootstrap_project(Path(project_path))
    record = StepRecorder(stage=stage)
    with KedroSession.create(
        project_path=Path(project_path), env=ENV, runtime_params=runtime_params
    ) as session:
        session.run(runner=TimedRunner(NodeTimer(record)), **run_args)
    rows = _finish(record)
    rows.append({**record.fields, "step": "whole stage", "wall_s": time.perf_counter() - started})
    rows[-1]["peak_rss_gb"] = _process_peak_gb()
    return rows


def stage_scib_path(
    project_path: str, runtime_params: dict[str, Any], models: list[str], leiden_flavor: str
) -> list[Row]:
    """scib's own code path on the embeddings the pipeline wrote, model by model."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from cite_bench.pipelines.evaluation.reference import scib_reference_metrics
    from cite_bench.seeds import first_seed

    os.chdir(project_path)
    bootstrap_project(Path(project_path))
    with KedroSession.create(
        project_path=Path(project_path), env=ENV, runtime_params=runtime_params
    ) as session:
        context = session.load_context()
        catalog, params = context.catalog, context.params
    evaluation = {**params["evaluation"], "leiden_flavor": leiden_flavor}
    cells = catalog.load("cell_metadata")
    record = StepRecorder(stage=f"scib's path, {leiden_flavor}")
    for model in models:
        embedding = first_seed(catalog.load(f"modelling.{model}.embedding"))
        with record(model):
            scib_reference_metrics(embedding, cells, evaluation, params["columns"])
    return _finish(record)


def training_rows(
    project_path: Path, runtime_params: dict[str, Any], model: str, unit: str
) -> list[Row]:
    """Time per epoch (MOFA: per iteration) from the training summary the run saved."""
    from kedro.framework.session import KedroSession

    with KedroSession.create(
        project_path=project_path, env=ENV, runtime_params=runtime_params
    ) as session:
        summary = session.load_context().catalog.load(f"modelling.{model}.training_summary")
    n_epochs = int(summary.get("n_epochs_trained") or 0)
    if not n_epochs:
        return []
    return [
        {
            "stage": f"train {model}",
            "step": f"train, per {unit}",
            "wall_s": summary["training_time_s"] / n_epochs,
            "peak_rss_gb": float("nan"),
            "note": f"{n_epochs} {unit}s on {summary.get('device', '?')}",
        }
    ]


# --- the command ----------------------------------------------------------------------------


def machine_description() -> dict[str, str]:
    """CPU, cores available to this process, memory and accelerators (torch, JAX)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024**2:.0f} GiB"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": str(cores),
        "memory": memory,
        "torch device": _torch_device(),
        "jax device": _jax_device(),
        "python": platform.python_version(),
    }


def _torch_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def _jax_device() -> str:
    try:
        import jax

        device = jax.devices()[0]
    except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
        return f"unavailable ({type(exc).__name__})"
    return f"{device.platform} ({device.device_kind})"


def _training_length(model: str, epochs: int) -> tuple[dict, str | None]:
    """The runtime parameters that cut a model's training to ``epochs`` epochs (MOFA:
    iterations), and the unit; nothing for models trained in one pass."""
    from cite_bench.methods import METHODS

    settings = METHODS[model].hyperparameters.model_fields
    for key, unit in (("max_epochs", "epoch"), ("n_iterations", "iteration")):
        if key in settings:
            return {"modelling": {model: {"hyperparameters": {key: epochs}}}}, unit
    return {}, None


def _merged(*blocks: dict[str, Any]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.merge(*blocks))


def run_benchmark(
    project_path: Path,
    sizes: list[int],
    models: list[str],
    epochs: int,
    reference_up_to: int,
    seed: int = 0,
    workdir: Path | None = None,
    after_each_size: Callable[[pd.DataFrame], None] | None = None,
    runtime_params: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Every stage at every size; one row per size, stage and step. ``runtime_params`` go to
    every stage's run (as ``kedro run --params``).

    ``after_each_size`` gets the results so far once each size is done, so that a long
    benchmark that fails or is stopped at a large size keeps what the smaller sizes measured.
    """
    from cite_bench.methods import unintegrated_reference
    from cite_bench.pipelines.evaluation.reference import REFERENCE_KEYS

    rows: list[Row] = []
    integrated = [model for model in models if METHODS[model].role == "integrated"]
    trained = list(dict.fromkeys([*models, unintegrated_reference()] if integrated else models))
    with contextlib.ExitStack() as stack:
        scratch = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for n_cells in sizes:
            folder = scratch_project(project_path, scratch / f"{n_cells}")
            raw = folder / "data" / "raw.h5ad"
            base = _merged(
                {
                    "inputs": {"geo": str(raw)},
                    "data_processing": {"subsample": {"n_cells": None}},
                    "seeds": [seed],
                },
                runtime_params or {},
            )
            stages: list[tuple[Callable[..., list[Row]], tuple[Any, ...]]] = [
                (stage_simulate, (n_cells, str(raw), seed)),
                (
                    stage_kedro_run,
                    (str(folder), "preprocessing", base, {"pipeline_name": "data_processing"}),
                ),
            ]
            units = {}
            for model in trained:
                length, units[model] = _training_length(model, epochs)
                params = _merged(base, length)
                run_args = {"pipeline_name": "modelling", "namespaces": [f"modelling.{model}"]}
                stages.append((stage_kedro_run, (str(folder), f"train {model}", params, run_args)))
            if integrated:
                nodes = [f"evaluation.{model}.compute_metrics" for model in integrated]
                run_args = {"pipeline_name": "evaluation", "node_names": nodes}
                stages.append((stage_kedro_run, (str(folder), EVALUATE, base, run_args)))
                if n_cells <= reference_up_to:
                    same = _merged(
                        base,
                        {
                            "evaluation": {
                                "metrics": list(REFERENCE_KEYS),
                                "leiden_seeds": [seed],
                                "leiden_flavor": "igraph",
                            }
                        },
                    )
                    stages.append(
                        (stage_kedro_run, (str(folder), SCIB_METRICS_STAGE, same, run_args))
                    )
                    for flavor in ("igraph", "leidenalg"):
                        stages.append((stage_scib_path, (str(folder), base, integrated, flavor)))
            for function, args in stages:
                logger.info(
                    "benchmark: %s cells, %s %s", f"{n_cells:,}", function.__name__, args[1]
                )
                for row in _run_stage(function, *args):
                    rows.append({"n_cells": n_cells, "note": "", **row})
            for model in trained:
                if units[model]:
                    params = _merged(base, _training_length(model, epochs)[0])
                    for row in training_rows(folder, params, model, units[model]):
                        rows.append({"n_cells": n_cells, **row})
            raw.unlink(missing_ok=True)  # the largest file; nothing reads it again
            if after_each_size is not None:
                after_each_size(_results_frame(rows))
    return _results_frame(rows)


def _results_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["n_cells", "stage", "step", "wall_s", "peak_rss_gb", "note"])


def _stage_total(group: pd.DataFrame, stage: str, step: str = "whole stage") -> float:
    values = group.loc[(group["stage"] == stage) & (group["step"] == step), "wall_s"]
    return float(values.sum()) if len(values) else float("nan")


def _node_total(group: pd.DataFrame, stage: str) -> float:
    """The summed wall time of a stage's ``compute_metrics`` nodes (the metrics alone,
    without process start-up)."""
    nodes = group[(group["stage"] == stage) & group["step"].str.endswith(".compute_metrics")]
    return float(nodes["wall_s"].sum()) if len(nodes) else float("nan")


def _peak(group: pd.DataFrame, stage: str) -> float:
    values = group.loc[(group["stage"] == stage) & (group["step"] == "process peak"), "peak_rss_gb"]
    return float(values.max()) if len(values) else float("nan")


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per size, what the targets are about: the evaluation of the integrated embeddings
    (whole stage, warm-up included, and the nodes alone), the peak memory of preprocessing
    and of the PCA baselines, and the speed-ups over scib's path: like for like (the same
    metrics, one Leiden seed, igraph's Leiden on both sides) and against scib as shipped
    (leidenalg)."""
    summary = []
    for n_cells, group in results.groupby("n_cells"):
        evaluated = group[
            (group["stage"] == EVALUATE) & group["step"].str.endswith("compute_metrics")
        ]
        ours_same = _node_total(group, SCIB_METRICS_STAGE)
        row: Row = {
            "n_cells": n_cells,
            "embeddings": len(evaluated),
            "evaluation, whole stage (s)": _stage_total(group, EVALUATE),
            "evaluation, metric nodes (s)": _node_total(group, EVALUATE),
            "evaluation peak (GB)": _peak(group, EVALUATE),
            "preprocessing peak (GB)": _peak(group, "preprocessing"),
            "PCA baselines peak (GB)": max(
                _peak(group, "train pca_rna"), _peak(group, "train pca_rna_adt")
            ),
        }
        for flavor, label in (("igraph", "like for like"), ("leidenalg", "vs scib as shipped")):
            scib = group.loc[
                (group["stage"] == f"scib's path, {flavor}") & (group["step"] != "process peak"),
                "wall_s",
            ].sum()
            if scib:
                row[f"scib's path, {flavor} (s)"] = scib
                row[f"speed-up, {label}"] = scib / ours_same if ours_same else float("nan")
        if np.isfinite(ours_same):
            row["ours, scib's metrics, 1 seed (s)"] = ours_same
        summary.append(row)
    return pd.DataFrame(summary)


def format_report(results: pd.DataFrame, machine: dict[str, str], command: str) -> str:
    """Markdown: the machine, the evaluation summary, then every step at every size."""
    lines = [
        "# Benchmark",
        "",
        f"`{command}`",
        "",
        "Machine: " + "; ".join(f"{key}: {value}" for key, value in machine.items()) + ".",
        "",
        "## Targets: evaluation of the integrated models' embeddings, peak memory, speed-ups",
        "",
        _markdown(summarise(results)),
        "",
        "## Every stage: wall time (s) / peak resident memory (GB)",
        "",
    ]
    cells = {
        (row.stage, row.step, row.n_cells): ("-" if pd.isna(row.wall_s) else f"{row.wall_s:.1f}")
        + ("" if pd.isna(row.peak_rss_gb) else f" / {row.peak_rss_gb:.2f}")
        for row in results.itertuples()
    }
    sizes = list(dict.fromkeys(results["n_cells"]))
    steps = list(dict.fromkeys(zip(results["stage"], results["step"], strict=True)))
    wide = pd.DataFrame(
        [[stage, step, *(cells.get((stage, step, n), "") for n in sizes)] for stage, step in steps],
        columns=["stage", "step", *(f"{n:,} cells" for n in sizes)],
    )
    lines.append(_markdown(wide))
    notes = results.loc[results["note"] != "", ["n_cells", "stage", "step", "note"]]
    if len(notes):
        lines += ["", _markdown(notes)]
    return "\n".join(lines) + "\n"


def _markdown(frame: pd.DataFrame) -> str:
    """A markdown table; numbers with one decimal."""

    def text(value: Any) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(text(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *body])
