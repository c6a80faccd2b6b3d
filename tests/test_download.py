"""The GEO download against a local HTTP server: resume, verification, no partial files, no
spliced bytes, retries with backoff, one download at a time, no credentials in the output."""

from __future__ import annotations

import gzip
import hashlib
import logging
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

import cite_bench.download as download_module
from cite_bench.cli import cli
from cite_bench.download import DownloadError, download

PAYLOAD = random.Random(0).randbytes(1_000_000)  # incompressible: ~1 MB compressed too
COMPRESSED = gzip.compress(PAYLOAD, mtime=0)
FAST = {"progress": False, "backoff_s": 0.01}


class _Server:
    """Serves ``files`` (path -> bytes) with ranges and strong ETags, honouring ``If-Range`` as
    HTTP requires. Knobs: cut the next transfer after ``cut_after`` bytes; answer the next
    ``failures`` requests with these statuses (or ``"drop"``: close without answering); send
    bodies slowly (``chunk_delay_s``)."""

    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        cut_after: int | None = None,
        ranges: bool = True,
        failures: list[int | str] | None = None,
        chunk_delay_s: float = 0.0,
    ) -> None:
        self.files = dict(files or {"/file.h5ad.gz": COMPRESSED})
        self.cut_after = cut_after
        self.ranges = ranges
        self.failures = list(failures or [])
        self.chunk_delay_s = chunk_delay_s
        self.requests: list[dict[str, str | None]] = []
        self.first_request = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.requests.append(
                    {
                        "path": self.path,
                        "range": self.headers.get("Range"),
                        "if_range": self.headers.get("If-Range"),
                    }
                )
                server.first_request.set()
                if server.failures:
                    failure = server.failures.pop(0)
                    if failure == "drop":
                        self.connection.shutdown(2)
                        return
                    self.send_response(failure)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content = server.files.get(self.path.split("?")[0])
                if content is None:
                    self.send_error(404)
                    return
                etag = '"' + hashlib.sha256(content).hexdigest()[:16] + '"'
                start = 0
                header = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if header and server.ranges and (if_range is None or if_range == etag):
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(content):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(content)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}"
                    )
                else:
                    self.send_response(200)
                body = content[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                if server.cut_after is not None:
                    cut, server.cut_after = server.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the transfer breaks off
                    return
                if server.chunk_delay_s:
                    for offset in range(0, len(body), 100_000):
                        self.wfile.write(body[offset : offset + 100_000])
                        self.wfile.flush()
                        time.sleep(server.chunk_delay_s)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_port}"
        self.url = f"{self.root}/file.h5ad.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _interrupted_download(server: _Server, target: Path, cut_after: int, url: str = "") -> Path:
    """A real earlier run that gave up mid-transfer; returns the .part it kept."""
    server.cut_after = cut_after
    with pytest.raises(DownloadError, match="failed after 1 attempts"):
        download(url or server.url, target, retries=1, **FAST)
    part = target.with_name(target.name + ".gz.part")
    assert 0 < part.stat().st_size <= cut_after
    return part


def test_download_decompresses_and_verifies(tmp_path):
    target = tmp_path / "raw" / "file.h5ad"
    # What a download killed while decompressing leaves behind is cleared by the next one.
    target.parent.mkdir()
    (target.parent / ".file.h5ad.tmp-killed").write_bytes(b"half")
    with _Server() as server:
        result = download(
            server.url, target, sha256=hashlib.sha256(COMPRESSED).hexdigest(), progress=False
        )
    assert target.read_bytes() == PAYLOAD
    assert result.size == len(COMPRESSED)
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.h5ad"]


def test_interrupted_transfer_resumes_where_it_stopped(tmp_path):
    target = tmp_path / "file.h5ad"
    with _Server(cut_after=300_000) as server:
        download(server.url, target, **FAST)
    assert target.read_bytes() == PAYLOAD
    assert server.requests[0]["range"] is None
    resumed_from = int(server.requests[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 300_000  # only the bytes after the break are fetched again
    assert server.requests[1]["if_range"]  # ... and only if the file is still the same


def test_repeated_failures_keep_the_part_for_a_later_run(tmp_path):
    target = tmp_path / "file.h5ad"
    with _Server() as server:
        part = _interrupted_download(server, target, cut_after=400_000)
        kept = part.stat().st_size
        assert not target.exists()
        download(server.url, target, **FAST)
    assert server.requests[-1]["range"] == f"bytes={kept}-"
    assert target.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.h5ad"]


def test_a_changed_upstream_file_is_not_spliced_onto_the_old_part(tmp_path):
    target = tmp_path / "file.h5ad"
    new_payload = random.Random(1).randbytes(len(PAYLOAD))
    with _Server() as server:
        _interrupted_download(server, target, cut_after=500_000)
        server.files["/file.h5ad.gz"] = gzip.compress(new_payload, mtime=0)
        download(server.url, target, **FAST)
    assert server.requests[-1]["if_range"]  # the old version's ETag: it no longer matches
    assert target.read_bytes() == new_payload


def test_a_larger_leftover_part_of_another_url_is_not_taken_as_complete(tmp_path):
    """The old part is longer than this URL's file: the server answers the resume with 416."""
    target = tmp_path / "file.h5ad"
    other = gzip.compress(random.Random(2).randbytes(2_000_000), mtime=0)
    with _Server(files={"/file.h5ad.gz": COMPRESSED, "/other.h5ad.gz": other}) as server:
        _interrupted_download(server, target, 1_500_000, url=f"{server.root}/other.h5ad.gz")
        download(server.url, target, **FAST)
    assert target.read_bytes() == PAYLOAD


def test_a_416_for_a_part_longer_than_the_file_starts_again(tmp_path):
    target = tmp_path / "file.h5ad"
    with _Server() as server:
        part = _interrupted_download(server, target, cut_after=200_000)
        beyond = b"bytes beyond the end of the file"
        part.write_bytes(COMPRESSED + beyond)
        download(server.url, target, **FAST)
    ranges_asked = [request["range"] for request in server.requests]
    assert ranges_asked[-2] == f"bytes={len(COMPRESSED) + len(beyond)}-"  # answered with 416
    assert ranges_asked[-1] is None  # then the whole file
    assert target.read_bytes() == PAYLOAD


def test_a_corrupt_gzip_is_removed_with_a_clear_error_and_the_rerun_recovers(tmp_path):
    target = tmp_path / "file.h5ad"
    broken = b"\x1f\x8b\x08\x00" + random.Random(3).randbytes(50_000)  # gzip magic, then noise
    with _Server(files={"/file.h5ad.gz": broken}) as server:
        with pytest.raises(DownloadError, match="not a valid gzip file.*downloads it again"):
            download(server.url, target, **FAST)
        assert list(tmp_path.iterdir()) == []  # no part to resume the same bytes from
        server.files["/file.h5ad.gz"] = COMPRESSED
        download(server.url, target, **FAST)
    assert target.read_bytes() == PAYLOAD


def test_server_errors_and_resets_are_retried_with_growing_waits(tmp_path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    target = tmp_path / "file.h5ad"
    with _Server(failures=[503, "drop", 502, 500]) as server:
        download(server.url, target, retries=5, backoff_s=2.0, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert len(waits) == 4
    for attempt, wait in enumerate(waits):
        assert 2.0 * 2**attempt <= wait <= 2.0 * 2**attempt * 1.25
    assert sum(waits) >= 30  # was about 3 s in all


def test_a_server_that_keeps_failing_gives_up_after_the_retries(tmp_path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    with (
        _Server(failures=[503] * 10) as server,
        pytest.raises(DownloadError, match="after 3 attempts .*HTTP 503.*nothing was downloaded"),
    ):
        download(server.url, tmp_path / "file.h5ad", retries=3, progress=False)
    assert len(server.requests) == 3 and len(waits) == 2


def test_missing_file_is_an_http_error_and_not_retried(tmp_path):
    with _Server() as server, pytest.raises(DownloadError, match="HTTP 404 .*/other.h5ad.gz"):
        download(server.url.replace("file", "other"), tmp_path / "x.h5ad", **FAST)
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_second_concurrent_download_is_refused(tmp_path):
    target = tmp_path / "file.h5ad"
    outcome: dict[str, object] = {}

    def first() -> None:
        outcome["first"] = download(server.url, target, **FAST)

    with _Server(chunk_delay_s=0.1) as server:
        thread = threading.Thread(target=first)
        thread.start()
        assert server.first_request.wait(10)
        with pytest.raises(DownloadError, match=r"already being downloaded by pid \d+"):
            download(server.url, target, **FAST)
        thread.join(30)
    assert outcome["first"].size == len(COMPRESSED)
    assert target.read_bytes() == PAYLOAD
    assert len(server.requests) == 1  # the second never touched the part


def test_credentials_and_tokens_in_the_url_are_not_printed(tmp_path, caplog):
    secret = "s3cr3t-password"
    token = "t0ken-value"
    with _Server(cut_after=100_000) as server:
        url = server.url.replace("http://", f"http://alice:{secret}@") + f"?token={token}"
        with caplog.at_level(logging.DEBUG, logger="cite_bench"):
            download(url, tmp_path / "file.h5ad", **FAST)
    gone = url  # the server has stopped: every attempt fails, quoting the URL
    with (
        caplog.at_level(logging.DEBUG, logger="cite_bench"),
        pytest.raises(DownloadError) as failure,
    ):
        download(gone, tmp_path / "again.h5ad", retries=2, timeout=2, **FAST)
    printed = caplog.text + str(failure.value)
    assert "http://***@127.0.0.1" in printed and "token=***" in printed
    assert secret not in printed and token not in printed
    result = CliRunner().invoke(
        cli, ["download-geo", "--url", gone, "--dest", str(tmp_path / "c"), "--retries", "1"]
    )
    assert result.exit_code != 0
    assert secret not in result.output and token not in result.output


def test_command_line(tmp_path):
    target = tmp_path / "geo.h5ad"
    with _Server(cut_after=50_000) as server:
        result = CliRunner().invoke(
            cli, ["download-geo", "--url", server.url, "--dest", str(target), "--backoff", "0.01"]
        )
    assert result.exit_code == 0, result.output
    assert "ready" in result.output
    assert Path(target).read_bytes() == PAYLOAD
