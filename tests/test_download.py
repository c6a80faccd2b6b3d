"""The GEO download against a local HTTP server: resume, verification, no partial files."""

from __future__ import annotations

import gzip
import hashlib
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from cite_bench.cli import cli
from cite_bench.download import DownloadError, download

PAYLOAD = random.Random(0).randbytes(1_000_000)  # incompressible: ~1 MB compressed too
COMPRESSED = gzip.compress(PAYLOAD)


class _Server:
    """Serves COMPRESSED at /file.h5ad.gz with range support; can cut the first transfer."""

    def __init__(self, cut_after: int | None = None, ranges: bool = True) -> None:
        self.cut_after = cut_after
        self.ranges = ranges
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                if self.path != "/file.h5ad.gz":
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                if header and server.ranges:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(COMPRESSED):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(COMPRESSED) - 1}/{len(COMPRESSED)}"
                    )
                else:
                    self.send_response(200)
                body = COMPRESSED[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    cut, server.cut_after = server.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the transfer breaks off
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/file.h5ad.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_decompresses_and_verifies(tmp_path):
    target = tmp_path / "raw" / "file.h5ad"
    with _Server() as server:
        result = download(
            server.url,
            target,
            sha256=hashlib.sha256(COMPRESSED).hexdigest(),
            progress=False,
        )
    assert target.read_bytes() == PAYLOAD
    assert result.size == len(COMPRESSED)
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.h5ad"]


def test_interrupted_transfer_resumes_where_it_stopped(tmp_path):
    target = tmp_path / "file.h5ad"
    with _Server(cut_after=300_000) as server:
        download(server.url, target, progress=False)
    assert target.read_bytes() == PAYLOAD
    assert server.requests[0] is None
    resumed_from = int(server.requests[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 300_000  # only the bytes after the break are fetched again


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path):
    target = tmp_path / "file.h5ad"
    (tmp_path / "file.h5ad.gz.part").write_bytes(COMPRESSED[:1000])
    with _Server() as server:
        download(server.url, target, progress=False)
    assert server.requests == ["bytes=1000-"]
    assert target.read_bytes() == PAYLOAD


def test_server_without_ranges_restarts_cleanly(tmp_path):
    target = tmp_path / "file.h5ad"
    (tmp_path / "file.h5ad.gz.part").write_bytes(b"stale")
    with _Server(ranges=False) as server:
        download(server.url, target, progress=False)
    assert target.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing_under_the_final_name(tmp_path):
    target = tmp_path / "file.h5ad"
    with _Server() as server, pytest.raises(DownloadError, match="Checksum mismatch"):
        download(server.url, target, sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_repeated_failures_keep_the_part_for_later(tmp_path):
    target = tmp_path / "file.h5ad"
    with _Server() as server:
        url = server.url
    # The server is gone: every attempt fails to connect.
    with pytest.raises(DownloadError, match="failed after 2 attempts"):
        download(url, target, retries=2, timeout=2, progress=False)
    assert not target.exists()


def test_missing_file_is_an_http_error(tmp_path):
    with _Server() as server, pytest.raises(Exception, match="404"):
        download(server.url.replace("file", "other"), tmp_path / "x.h5ad", progress=False)
    assert not (tmp_path / "x.h5ad").exists()


def test_command_line(tmp_path):
    target = tmp_path / "geo.h5ad"
    with _Server(cut_after=50_000) as server:
        result = CliRunner().invoke(
            cli, ["download-geo", "--url", server.url, "--dest", str(target)]
        )
    assert result.exit_code == 0, result.output
    assert "ready" in result.output
    assert Path(target).read_bytes() == PAYLOAD
