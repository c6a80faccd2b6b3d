"""Project commands added to the ``kedro`` command line (``kedro download-geo``,
``kedro benchmark``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import click

from cite_bench.artifacts import METRICS_TABLE
from cite_bench.download import GEO_FILE, GEO_URL, DownloadError, download
from cite_bench.methods import METHODS


def _output_option(default: Path, what: str) -> Callable[[Callable], Callable]:
    return click.option(
        "--output",
        type=click.Path(path_type=Path),
        default=default,
        show_default=True,
        help=f"Folder for {what}.",
    )


@click.group(name="cite_bench")
def cli() -> None:
    """Commands of the cite-bench project."""


@cli.command("download-geo")
@click.option("--url", default=GEO_URL, show_default=True, help="Where to fetch the file.")
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    default=Path("data/01_raw") / GEO_FILE,
    show_default=True,
    help="The decompressed file to write (what `kedro run --env geo` reads).",
)
@click.option("--sha256", default=None, help="Expected SHA-256 of the downloaded (.gz) file.")
@click.option(
    "--retries",
    default=6,
    show_default=True,
    help="Failed attempts in a row (none adding bytes) before giving up.",
)
@click.option(
    "--backoff",
    default=2.0,
    show_default=True,
    help="Seconds before the first retry; doubles with each failure, up to a minute.",
)
def download_geo(url: str, dest: Path, sha256: str | None, retries: int, backoff: float) -> None:
    """Download the NeurIPS 2021 BMMC CITE-seq file from GEO (GSE194122) into data/01_raw/.

    Interrupted downloads resume from DEST.gz.part on the next call, if the server's file is
    still the same; otherwise the download starts over.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = download(url, dest, sha256=sha256, retries=retries, backoff_s=backoff)
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{result.path} ready ({result.size:,} bytes downloaded, SHA-256 {result.sha256})")


def _integers(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        return [int(item) for item in value.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"expected whole numbers, got {value!r}") from None


@cli.command("benchmark")
@click.option(
    "--sizes",
    default="5000 20000 90000",
    show_default=True,
    callback=_integers,
    help="Numbers of cells to simulate (GEO-sized: 13,953 genes, 134 proteins).",
)
@click.option(
    "--models",
    default=",".join(METHODS),
    show_default=True,
    help="Models to train and (the integrated ones) evaluate, comma-separated.",
)
@click.option("--epochs", default=2, show_default=True, help="Epochs (MOFA: iterations).")
@click.option(
    "--reference-up-to",
    default=5000,
    show_default=True,
    help="Also time scib's own evaluation path (igraph's and leidenalg's Leiden) at sizes up "
    "to this many cells.",
)
@click.option(
    "--params",
    default="",
    help="Parameters for every stage's run, as `kedro run --params` takes them (e.g. "
    '"evaluation.leiden_seeds=[0]").',
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the simulated data and each size's scratch project (its data/ folder holds "
    "the embeddings and metrics the pipelines wrote) here instead of a temporary folder.",
)
@_output_option(Path("data/08_reporting/benchmark"), "benchmark.parquet and benchmark.md")
def benchmark(
    sizes: list[int],
    models: str,
    epochs: int,
    reference_up_to: int,
    params: str,
    workdir: Path | None,
    output: Path,
) -> None:
    """Time and peak memory of the pipelines run through Kedro at several sizes (see
    cite_bench.benchmark)."""
    import sys

    import pandas as pd
    from kedro.framework.cli.utils import _split_params

    from cite_bench.benchmark import format_report, machine_description, run_benchmark
    from cite_bench.datasets import ParquetDataset, TextDataset

    chosen = [model.strip() for model in models.split(",") if model.strip()]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise click.BadParameter(f"unknown models {unknown}; known: {sorted(METHODS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "kedro " + " ".join(sys.argv[1:])
    machine = machine_description()

    def write(results: pd.DataFrame) -> None:
        """Both files, rewritten after each size: a stopped benchmark keeps what it measured."""
        ParquetDataset(filepath=str(output / "benchmark.parquet")).save(results)
        TextDataset(filepath=str(output / "benchmark.md")).save(
            format_report(results, machine, command)
        )

    results = run_benchmark(
        Path.cwd(),
        sizes,
        chosen,
        epochs,
        reference_up_to,
        workdir=workdir.resolve() if workdir else None,
        after_each_size=write,
        runtime_params=_split_params(None, None, params) if params else {},
    )
    click.echo(format_report(results, machine, command))


@cli.command("matrix")
@click.option(
    "--env",
    "envs",
    multiple=True,
    required=True,
    help="A dataset, as its configuration environment (base = the demo, starter, geo, ...); "
    "repeat for several.",
)
@click.option("--seeds", default=None, help='Seeds for every method, e.g. "0 1 2".')
@click.option(
    "--params",
    default="",
    help="Passed to every run's `kedro run --params` (e.g. evaluation.metrics=fast).",
)
@click.option(
    "--scheduler",
    default=None,
    help="An existing Dask scheduler (tcp://host:8786); by default a LocalCluster is started "
    "with the `cluster` parameters.",
)
@_output_option(
    Path("data/08_reporting/matrix"),
    "matrix.parquet, matrix.md, matrix_summary.png and each run's log",
)
def matrix(
    envs: tuple[str, ...], seeds: str | None, params: str, scheduler: str | None, output: Path
) -> None:
    """Every method on several datasets with several seeds, in one command, on one Dask
    cluster: one `kedro run` (one MLflow parent run) per dataset, one combined table and
    figure across datasets."""
    from kedro.framework.cli.utils import _split_params

    from cite_bench.datasets import MatplotlibDataset, ParquetDataset, TextDataset
    from cite_bench.matrix import (
        combine,
        format_matrix_table,
        plan,
        run_all,
        scored_methods_only,
        tail,
    )
    from cite_bench.reporting.figures import plot_matrix_summary
    from cite_bench.runner import cluster_settings, connected

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = ",".join(part for part in (params, f"seeds={seeds}" if seeds else "") if part)
    runtime_params = _split_params(None, None, params) if params else {}
    project = Path.cwd()
    try:
        runs = plan(project, envs, runtime_params)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = cluster_settings(runs[0].cluster, {"scheduler": scheduler})
    with connected(settings) as client:
        statuses = run_all(project, runs, client.scheduler.address, params, output / "logs")
    finished = {
        run.dataset: run.catalog.load(METRICS_TABLE) for run in runs if statuses[run.dataset] == 0
    }
    if finished:
        combined = combine(finished)
        ParquetDataset(filepath=str(output / "matrix.parquet")).save(combined)
        scored, rank_by = scored_methods_only(combined), runs[0].rank_by
        table = format_matrix_table(scored, rank_by)
        TextDataset(filepath=str(output / "matrix.md")).save(table)
        MatplotlibDataset(filepath=str(output / "matrix_summary.png")).save(
            plot_matrix_summary(scored, rank_by)
        )
        click.echo(table)
        click.echo(f"Combined table and figure in {output}/")
    failed = [dataset for dataset, status in statuses.items() if status != 0]
    if failed:
        details = "\n\n".join(
            f"{dataset} (log {output / 'logs' / f'{dataset}.log'}):\n"
            + tail(output / "logs" / f"{dataset}.log")
            for dataset in failed
        )
        raise click.ClickException(f"{len(failed)} of {len(runs)} datasets failed:\n{details}")
