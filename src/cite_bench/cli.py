"""Project commands added to the ``kedro`` command line (``kedro download-geo``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cite_bench.download import GEO_FILE, GEO_URL, DownloadError, download


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
@click.option("--retries", default=5, show_default=True, help="Attempts before giving up.")
def download_geo(url: str, dest: Path, sha256: str | None, retries: int) -> None:
    """Download the NeurIPS 2021 BMMC CITE-seq file from GEO (GSE194122) into data/01_raw/.

    Interrupted downloads resume from DEST.gz.part on the next call.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = download(url, dest, sha256=sha256, retries=retries)
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{result.path} ready ({result.size:,} bytes downloaded, SHA-256 {result.sha256})")
