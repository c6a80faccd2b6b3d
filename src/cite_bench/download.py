"""Fetch the reference GEO file: resumable, verified, never spliced, never half-present.

The download goes to ``<name>.part`` beside the target and resumes from there (HTTP range
requests) after an interruption. A resume is only ever appended to bytes of the same file:
``<name>.part.json`` records which URL (by hash: URLs can carry tokens) and which version of
the file (its ``ETag`` or ``Last-Modified``) the part holds, and the resume sends that
validator as ``If-Range``, so a server whose file changed sends the whole new file instead of
the rest of the old one. Parts that cannot be vouched for that way are downloaded again.

Connection failures, resets and HTTP 5xx/429 answers are retried with exponential backoff;
attempts that add bytes do not count against the limit. Once complete, the size is checked
against the server's and, when given, the SHA-256 against the expected one; a ``.gz`` file is
then decompressed to a temporary sibling and renamed into place. A part that is not a valid
gzip stream is removed, so the next run starts afresh. One download per target at a time (a
lock beside it). URLs are printed with credentials and query values masked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import shutil
import time
import zlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
from tqdm.auto import tqdm

from cite_bench.io.atomic import atomic_path, recover_interrupted_writes
from cite_bench.io.hashing import file_sha256
from cite_bench.locks import LockHeldError, ProcessLock, describe_holder
from cite_bench.redaction import redact, redact_error

logger = logging.getLogger(__name__)

GEO_FILE = "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad"
GEO_URL = (
    "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE194nnn/GSE194122/suppl/"
    f"{GEO_FILE.replace('_', '%5F')}.gz"
)
CHUNK_SIZE = 1 << 20
MAX_BACKOFF_S = 60.0
# HTTP answers worth waiting for: the server is overloaded or briefly down.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """The file could not be fetched or failed verification."""


class _Retryable(Exception):
    """A failure after which waiting and resuming makes sense."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
    _Retryable,
)


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class _PartRecord:
    """What the ``.part`` file holds: bytes of which URL, of which version of the file."""

    url_sha256: str
    validator: str | None
    total: int | None

    @classmethod
    def read(cls, path: Path) -> _PartRecord | None:
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["url_sha256"]), raw.get("validator"), raw.get("total"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))


def download(
    url: str,
    destination: Path,
    *,
    sha256: str | None = None,
    retries: int = 6,
    backoff_s: float = 2.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> Downloaded:
    """Download ``url`` to ``destination`` (decompressing ``.gz``), resuming and verifying.

    ``destination`` is the final, decompressed file. ``retries`` attempts in a row that add no
    bytes, ``backoff_s`` doubling between them (up to a minute), give up with
    :class:`DownloadError`; so do a short or corrupt file, a checksum that differs and a
    download of the same file already running. The ``.part`` file is kept for a later resume
    unless it is known to be bad.
    """
    destination = Path(destination)
    shown = redact(url)
    compressed = url.split("?", maxsplit=1)[0].endswith(".gz")
    part = destination.with_name(destination.name + (".gz" if compressed else "") + ".part")
    lock = ProcessLock(part.with_name(part.name + ".lock"))
    try:
        lock.acquire()
    except LockHeldError as exc:
        raise DownloadError(
            f"'{destination}' is already being downloaded by {describe_holder(exc.holder)}; "
            "wait for it to finish."
        ) from None
    try:
        for action in recover_interrupted_writes(destination):
            logger.warning("Interrupted decompression of an earlier download: %s", action)
        total = _fetch_with_retries(url, shown, part, retries, backoff_s, timeout, progress)
        return _verify_and_publish(shown, part, destination, total, sha256, compressed)
    finally:
        lock.release()


def _fetch_with_retries(
    url: str,
    shown: str,
    part: Path,
    retries: int,
    backoff_s: float,
    timeout: float,
    progress: bool,
) -> int | None:
    failures, furthest = 0, _size(part)
    while True:
        try:
            total = _fetch(url, part, timeout, progress)
            if total is not None and _size(part) < total:
                raise _Retryable(f"the transfer ended at {_size(part)} of {total} bytes")
            return total
        except _TRANSIENT as exc:
            if _size(part) > furthest:  # progress: only attempts in a row without any count
                failures, furthest = 0, _size(part)
            failures += 1
            reason = str(exc) if isinstance(exc, _Retryable) else redact_error(exc)
            if failures >= retries:
                kept = (
                    f"{_size(part)} bytes are kept in '{part}' and the next run resumes from there"
                    if _size(part)
                    else "nothing was downloaded"
                )
                raise DownloadError(
                    f"Download of {shown} failed after {retries} attempts without progress "
                    f"(last: {reason}); {kept}."
                ) from None
            delay = min(backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)
            if isinstance(exc, _Retryable) and exc.retry_after_s is not None:
                delay = min(max(delay, exc.retry_after_s), MAX_BACKOFF_S)
            delay *= random.uniform(1.0, 1.25)  # concurrent clients do not retry in step
            logger.warning(
                "Download interrupted (%s); resuming in %.1f s (attempt %d of %d).",
                reason,
                delay,
                failures + 1,
                retries,
            )
            time.sleep(delay)


def _verify_and_publish(
    shown: str,
    part: Path,
    destination: Path,
    total: int | None,
    sha256: str | None,
    compressed: bool,
) -> Downloaded:
    size = part.stat().st_size
    if total is not None and size != total:
        _discard_part(part)
        raise DownloadError(
            f"'{part}' has {size} bytes, the server announced {total}; it was removed, and the "
            "next run downloads the file again."
        )
    digest = file_sha256(part)
    if sha256 and digest.lower() != sha256.lower():
        _discard_part(part)
        raise DownloadError(
            f"Checksum mismatch for {shown}: expected SHA-256 {sha256}, got {digest}; "
            "the corrupt download was removed."
        )
    with atomic_path(destination) as temporary:
        if compressed:
            try:
                with gzip.open(part, "rb") as source, temporary.open("wb") as target:
                    shutil.copyfileobj(source, target, CHUNK_SIZE)
            except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
                _discard_part(part)
                raise DownloadError(
                    f"The download of {shown} is not a valid gzip file ({type(exc).__name__}: "
                    f"{exc}); it was removed and the next run downloads it again. If this "
                    "repeats, the file on the server is damaged: check the URL, or pass "
                    "--sha256 to tell a damaged copy from a good one."
                ) from exc
        else:
            shutil.copyfile(part, temporary)
    _discard_part(part)
    logger.info("Downloaded %s (%d bytes, SHA-256 %s) to %s", shown, size, digest, destination)
    return Downloaded(destination, size, digest)


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> int | None:
    """Append the missing bytes of ``url`` to ``part``; return the full size, if announced."""
    record_path = _record_path(part)
    url_sha256 = hashlib.sha256(url.encode()).hexdigest()
    offset = _size(part)
    record = _PartRecord.read(record_path) if offset else None
    if offset and (record is None or record.url_sha256 != url_sha256 or not record.validator):
        logger.warning(
            "'%s' cannot be shown to hold bytes of this URL's current file (no record of its "
            "URL and version): downloading from the start.",
            part,
        )
        offset = 0
    headers = {"Range": f"bytes={offset}-", "If-Range": record.validator} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            total = _total_from_content_range(response.headers.get("Content-Range"))
            if total == offset and record.total in (None, total):
                return total  # the part was already complete (and If-Range matched)
            logger.warning(
                "The server refused to resume '%s' at byte %d (the file is %s bytes): "
                "downloading from the start.",
                part,
                offset,
                "an unknown number of" if total is None else total,
            )
            _discard_part(part)
            return _fetch(url, part, timeout, progress)
        _raise_for_status(response, redact(url))
        if offset and response.status_code == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if total is None and response.headers.get("Content-Length") is not None:
                total = offset + int(response.headers["Content-Length"])
            if start != offset or (record.total is not None and total != record.total):
                _discard_part(part)
                raise _Retryable(
                    f"the server answered a resume at byte {offset} with bytes from {start} of a "
                    f"{total}-byte file, not the {record.total}-byte file of the part; the part "
                    "was removed"
                )
        else:
            if offset:
                logger.warning(
                    "The server sent the whole file instead of the rest (it does not resume, or "
                    "the file changed since the part was downloaded): starting again."
                )
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            _PartRecord(url_sha256, _validator(response), total).write(record_path)
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


def _raise_for_status(response: requests.Response, shown: str) -> None:
    """Retryable for overload and server errors, :class:`DownloadError` for the rest."""
    status = response.status_code
    if status < 400:
        return
    message = f"HTTP {status} {response.reason} for {shown}"
    if status in RETRY_STATUS:
        raise _Retryable(message, _retry_after_s(response.headers.get("Retry-After")))
    raise DownloadError(message + " (not retried: the request itself was refused).")


def _validator(response: requests.Response) -> str | None:
    """A strong validator for ``If-Range``: the ETag unless weak, else ``Last-Modified``."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); unknown parts are ``None``."""
    if not header or not header.startswith("bytes "):
        return None, None
    span, _, total = header.removeprefix("bytes ").partition("/")
    start = span.split("-", maxsplit=1)[0]
    return (
        int(start) if start.isdigit() else None,
        int(total) if total.isdigit() else None,
    )


def _total_from_content_range(header: str | None) -> int | None:
    """The full size from a 416's ``Content-Range: bytes */1000``."""
    return _content_range(header.replace("*", "0-0", 1) if header else None)[1]


def _retry_after_s(header: str | None) -> float | None:
    if not header:
        return None
    if header.strip().isdigit():
        return float(header)
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _record_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _record_path(part).unlink(missing_ok=True)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
