"""Fetch the reference GEO file: resumable, verified, and never half-present under its name.

The download goes to ``<name>.part`` beside the target and resumes from there (HTTP range
requests) after an interruption, retrying a few times by itself. Once complete, its size is
checked against the server's and, when given, its SHA-256 against the expected one; a ``.gz``
file is then decompressed to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm.auto import tqdm

from cite_bench.datasets import atomic_path

logger = logging.getLogger(__name__)

GEO_FILE = "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad"
GEO_URL = (
    "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE194nnn/GSE194122/suppl/"
    f"{GEO_FILE.replace('_', '%5F')}.gz"
)
CHUNK_SIZE = 1 << 20
# Failures after which resuming makes sense (HTTP errors such as 404 do not qualify).
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class DownloadError(RuntimeError):
    """The file could not be fetched or failed verification."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str


def download(
    url: str,
    destination: Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 30.0,
    progress: bool = True,
) -> Downloaded:
    """Download ``url`` to ``destination`` (decompressing ``.gz``), resuming and verifying.

    ``destination`` is the final, decompressed file. Raises :class:`DownloadError` when the
    server keeps failing, the size is short or the checksum differs; the ``.part`` file is kept
    for a later resume unless it is corrupt.
    """
    destination = Path(destination)
    compressed = url.split("?", maxsplit=1)[0].endswith(".gz")
    part = destination.with_name(destination.name + (".gz" if compressed else "") + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)

    total = None
    for attempt in range(1, retries + 1):
        try:
            total = _fetch(url, part, timeout, progress)
            break
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            if attempt == retries:
                raise DownloadError(
                    f"Download of {url} failed after {retries} attempts ({exc}); "
                    f"{part.stat().st_size if part.exists() else 0} bytes are kept in '{part}' "
                    "and the next run resumes from there."
                ) from exc
            logger.warning("Download interrupted (%s); resuming (attempt %d).", exc, attempt + 1)
            time.sleep(min(2**attempt, 30) * 0.1)

    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"'{part}' has {size} bytes, the server announced {total}.")
    digest = _sha256(part)
    if sha256 and digest.lower() != sha256.lower():
        part.unlink()
        raise DownloadError(
            f"Checksum mismatch for {url}: expected SHA-256 {sha256}, got {digest}; "
            "the corrupt download was removed."
        )
    with atomic_path(destination) as temporary:
        if compressed:
            with gzip.open(part, "rb") as source, temporary.open("wb") as target:
                shutil.copyfileobj(source, target, CHUNK_SIZE)
        else:
            shutil.copyfile(part, temporary)
    part.unlink()
    logger.info("Downloaded %s (%d bytes, SHA-256 %s) to %s", url, size, digest, destination)
    return Downloaded(destination, size, digest)


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> int | None:
    """Append the missing bytes to ``part``; return the full size the server announced."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416:  # nothing left to fetch
            return offset
        response.raise_for_status()
        if offset and response.status_code != 206:
            logger.warning("The server does not resume downloads: starting again.")
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            part.open("ab" if offset else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name,
                disable=not progress,
            ) as bar,
        ):
            # Small reads: an interrupted transfer loses at most one of them.
            for chunk in response.iter_content(64 * 1024):
                handle.write(chunk)
                bar.update(len(chunk))
    return total


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()
