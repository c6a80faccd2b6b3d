"""Time and peak memory of every stage at several dataset sizes: ``kedro benchmark``.

For each size, demo data with the GEO file's dimensions (13,953 genes, 134 proteins) is
simulated and written as ``.h5ad``; then each stage runs in a fresh process, as a ``kedro run``
would (reading its inputs from files): loading, each preprocessing node, each model for a few
epochs, and the evaluation of each integrated model's embedding step by step. At the sizes given
by ``--reference-up-to``, scib's own code path (``evaluation/reference.py``) scores the same
embeddings for comparison. Peak memory is the resident set size: of the whole process for a
stage, and the highest sampled value (every 10 ms) for a step within it.

The table goes to ``data/08_reporting/benchmark/`` as parquet (one row per size and step) and
markdown (with the machine it ran on). Timings depend on the machine; the README's come from
the machine named in its table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from cite_bench.methods import METHODS

logger = logging.getLogger(__name__)

GEO_GENES = 13_953
GEO_PROTEINS = 134
# What both evaluation paths compute (reference.REFERENCE_KEYS), by the fast path's steps.
FAST_STEPS_FOR_REFERENCE = (
    "knn",
    "knn_graph",
    "leiden",
    "optimal_resolution",
    "silhouettes",
    "graph_connectivity",
)
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


def _run_stage(function: Callable[..., list[Row]], *args: Any) -> list[Row]:
    """Run one stage in a fresh process, so that its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# --- stages (run in child processes: module-level functions) ---------------------------------


def _parameters(project_path: Path) -> dict[str, Any]:
    """The parameters a plain ``kedro run`` would use (the project's own loader settings)."""
    from kedro.config import OmegaConfigLoader

    from cite_bench.settings import CONFIG_LOADER_ARGS

    return OmegaConfigLoader(conf_source=str(project_path / "conf"), **CONFIG_LOADER_ARGS)[
        "parameters"
    ]


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


def stage_preprocess(
    project_path: str, raw_path: str, mudata_path: str, cells_path: str
) -> list[Row]:
    """The data_processing nodes in pipeline order on the backed input (as ``--env geo``),
    writing the MuData and the cell metadata that the later stages read."""
    import anndata as ad

    from cite_bench.pipelines.data_processing import nodes

    params = _parameters(Path(project_path))
    processing, columns = params["data_processing"], params["columns"]
    record = StepRecorder(stage="preprocessing")
    with record("load (backed .h5ad)"):
        raw = ad.read_h5ad(raw_path, backed="r")
    with record("validate_input"):
        paired = nodes.validate_input(raw, columns, processing)
        del raw  # as Kedro's runner, which keeps no input beyond the nodes that use it
    with record("subsample_cells"):
        subsampled = nodes.subsample_cells(paired, processing, columns)
        del paired
    with record("preprocess_rna"):
        rna = nodes.preprocess_rna(subsampled, processing, columns)
    with record("preprocess_adt"):
        adt = nodes.preprocess_adt(subsampled, processing)
    with record("assemble_mudata"):
        mdata = nodes.assemble_mudata(rna, adt, subsampled)
        del rna, adt, subsampled
    with record("extract_cell_metadata"):
        cells = nodes.extract_cell_metadata(mdata)
    with record("write .h5mu"):
        mdata.write(mudata_path)
    cells.to_parquet(cells_path)
    return _finish(record)


def stage_train(
    project_path: str, mudata_path: str, model: str, epochs: int, embedding_path: str
) -> list[Row]:
    """Train one model briefly; report the time per epoch (MOFA: per iteration)."""
    import mudata as md

    params = _parameters(Path(project_path))
    hyperparameters = {**params["modelling"][model]["hyperparameters"], "seed": 0}
    if "max_epochs" in hyperparameters:
        hyperparameters["max_epochs"] = epochs
    if "n_iterations" in hyperparameters:
        hyperparameters["n_iterations"] = epochs
    record = StepRecorder(stage=f"train {model}")
    with record("load .h5mu"):
        mdata = md.read_h5mu(mudata_path)
    with record("train"):
        _, embedding, summary = METHODS[model].train(mdata, hyperparameters, params["columns"])
    embedding.to_parquet(embedding_path)
    train = record.rows[-1]
    train["note"] = f"on {summary.get('device', '?')}"
    if "max_epochs" in hyperparameters or "n_iterations" in hyperparameters:
        n_epochs = max(int(summary.get("n_epochs_trained") or 1), 1)
        unit = "iteration" if "n_iterations" in hyperparameters else "epoch"
        record.rows.append(
            {
                **train,
                "step": f"train, per {unit}",
                "wall_s": train["wall_s"] / n_epochs,
                "note": f"{n_epochs} {unit}s on {summary.get('device', '?')}",
            }
        )
    return _finish(record)


def stage_evaluate(
    project_path: str, embedding_paths: dict[str, str], cells_path: str, path: str
) -> list[Row]:
    """Score each model's embedding in one process, as ``kedro run`` does: with
    ``score_embedding`` (the pipeline's evaluation), or scib's path (``path="scib"``)."""
    from cite_bench.pipelines.evaluation.nodes import score_embedding
    from cite_bench.pipelines.evaluation.reference import scib_reference_metrics

    params = _parameters(Path(project_path))
    evaluation, columns = params["evaluation"], params["columns"]

    def score(frame: pd.DataFrame, cells: pd.DataFrame, profile: Any) -> None:
        if path == "scib":
            scib_reference_metrics(frame, cells, evaluation, columns, profile=profile)
        else:
            score_embedding(frame, frame, cells, evaluation, columns, profile=profile)

    cells = pd.read_parquet(cells_path)
    rows: list[Row] = []
    for number, (model, embedding_path) in enumerate(embedding_paths.items()):
        embedding = pd.read_parquet(embedding_path)
        record = StepRecorder(stage=f"evaluate {model} ({path})")
        if not number:
            with record("warm-up: imports, JIT compilation on 500 cells (once per run)"):
                # numba and JAX compile on first use: once per run, not per model.
                sample = embedding.sample(n=min(len(embedding), 500), random_state=0)
                score(sample, cells.loc[sample.index], None)
        with record("total"):
            score(embedding, cells, record)
        rows += record.rows
    final = StepRecorder(stage=f"evaluate ({path})")
    return rows + _finish(final)


def _finish(record: StepRecorder) -> list[Row]:
    rows = record.rows
    rows.append({**record.fields, "step": "process peak", "wall_s": float("nan")})
    rows[-1]["peak_rss_gb"] = _process_peak_gb()
    return rows


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


def run_benchmark(
    project_path: Path,
    sizes: list[int],
    models: list[str],
    epochs: int,
    reference_up_to: int,
    seed: int = 0,
    workdir: Path | None = None,
    after_each_size: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Every stage at every size; one row per size, stage and step.

    ``after_each_size`` gets the results so far once each size is done, so that a long
    benchmark that fails or is stopped at a large size keeps what the smaller sizes measured.
    """
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        scratch = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for n_cells in sizes:
            folder = scratch / f"{n_cells}"
            folder.mkdir(parents=True, exist_ok=True)
            raw, mudata = folder / "raw.h5ad", folder / "cite_seq.h5mu"
            cells = str(folder / "cells.parquet")
            stages: list[tuple[Callable[..., list[Row]], tuple[Any, ...]]] = [
                (stage_simulate, (n_cells, str(raw), seed)),
                (stage_preprocess, (str(project_path), str(raw), str(mudata), cells)),
            ]
            for model in models:
                embedding = folder / model / "embedding.parquet"
                embedding.parent.mkdir(exist_ok=True)
                stages.append(
                    (stage_train, (str(project_path), str(mudata), model, epochs, str(embedding)))
                )
            embeddings = {
                model: str(folder / model / "embedding.parquet")
                for model in models
                if METHODS[model].role == "integrated"
            }
            if embeddings:
                for path in ("fast", "scib") if n_cells <= reference_up_to else ("fast",):
                    stages.append((stage_evaluate, (str(project_path), embeddings, cells, path)))
            for function, args in stages:
                logger.info("benchmark: %s cells, %s%s", f"{n_cells:,}", function.__name__, args)
                for row in _run_stage(function, *args):
                    rows.append({"n_cells": n_cells, "note": "", **row})
            raw.unlink(missing_ok=True)  # the largest file; nothing reads it again
            if after_each_size is not None:
                after_each_size(_results_frame(rows))
    return _results_frame(rows)


def _results_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["n_cells", "stage", "step", "wall_s", "peak_rss_gb", "note"])


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per size: evaluation time of all integrated embeddings, and the speed-up over scib on
    the metrics both paths compute."""
    summary = []
    for n_cells, group in results.groupby("n_cells"):
        per_model = group[group["stage"].str.match(r"evaluate \S+ \(")]
        fast = per_model[per_model["stage"].str.endswith("(fast)")]
        scib = per_model[per_model["stage"].str.endswith("(scib)")]
        row: Row = {
            "n_cells": n_cells,
            "embeddings": fast["stage"].nunique(),
            "fast, all metrics (s)": fast.loc[fast["step"] == "total", "wall_s"].sum(),
        }
        same = fast[fast["step"].isin(FAST_STEPS_FOR_REFERENCE)]["wall_s"].sum()
        row["fast, scib's metrics (s)"] = same
        if not scib.empty:
            reference = scib.loc[scib["step"] == "total", "wall_s"].sum()
            row["scib path (s)"] = reference
            row["speed-up"] = reference / same if same else float("nan")
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
        "## Evaluation of the integrated models' embeddings",
        "",
        _markdown(summarise(results)),
        "",
        "## Every stage: wall time (s) / peak resident memory (GB)",
        "",
    ]
    cells = {
        (row.stage, row.step, row.n_cells): ("-" if pd.isna(row.wall_s) else f"{row.wall_s:.1f}")
        + f" / {row.peak_rss_gb:.2f}"
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
