"""Locks between processes: one ``kedro run`` per dataset, one download per file.

Two ``kedro run``s of the same dataset in one checkout write the same paths (the ``.h5mu``, the
cell table, the model folders, the tables), so a second run with other ``--params`` would
replace the first one's files between its nodes. Rather than giving every run its own output
folder (which would break ``--only-missing-outputs``, the catalog paths the notebook and
kedro-viz read, and the "latest result is in data/" rule), the second run is refused at once
with a message naming the first: the simpler guarantee, and the one an operator can act on.

The lock is an advisory ``flock`` on a small file that also records who holds it (pid, host,
start time, command). The kernel drops a ``flock`` when its process dies, however it dies, so a
lock left behind by a killed run can never block the next one: the next run takes the file over
and says so. Checking whether a recorded pid is alive instead would be racy (two runs may both
find it dead) and wrong after pid reuse.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from cite_bench.datasets import recover_interrupted_writes
from cite_bench.redaction import redact

logger = logging.getLogger(__name__)

LOCK_FOLDER = "data"


class LockHeldError(RuntimeError):
    """Another live process holds the lock; ``holder`` is what it recorded (may be empty)."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"'{path}' is held by {describe_holder(holder)}.")


class RunLockedError(RuntimeError):
    """A second ``kedro run`` of a dataset whose first run is still going."""


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host, started <time>, command `...``` (what is known of it)."""
    if not holder:
        return "another process (it has not recorded itself yet)"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    if holder.get("command"):
        parts.append(f"command `{holder['command']}`")
    return ", ".join(parts)


def _this_process() -> dict[str, Any]:
    program = Path(sys.argv[0])
    # `python -m kedro run` shows as ".../kedro/__main__.py": name the module instead.
    name = f"python -m {program.parent.name}" if program.name == "__main__.py" else program.name
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        # Command lines can carry URLs with credentials (--url, --params tracking_uri=...).
        "command": redact(" ".join([name, shlex.join(sys.argv[1:])]).strip()),
    }


def _read_holder(descriptor: int) -> dict[str, Any]:
    os.lseek(descriptor, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(descriptor, 65536):
        raw += chunk
    if not raw.strip():
        return {}
    try:
        holder = json.loads(raw)
    except ValueError:
        return {"note": "unreadable lock record"}
    return holder if isinstance(holder, dict) else {}


class ProcessLock:
    """An exclusive lock on ``path`` between processes, recording its holder in the file.

    ``acquire`` returns the record a dead holder left behind (``{}`` when there was none), so
    that the caller can say what it took over. ``release`` removes the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def acquire(self, timeout_s: float = 0.0, poll_s: float = 0.1) -> dict[str, Any]:
        """Take the lock, waiting up to ``timeout_s``; raise :class:`LockHeldError` if a live
        process keeps it."""
        if self.held:
            raise RuntimeError(f"'{self.path}' is already held by this object.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(descriptor)
                os.close(descriptor)
                if time.monotonic() >= deadline:
                    raise LockHeldError(self.path, holder) from None
                time.sleep(poll_s)
                continue
            # The previous holder removes the file when it releases: if it did so after we
            # opened it, we hold a lock on a file nobody else can see. Lock the one on disk.
            try:
                same_file = os.fstat(descriptor).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:
                os.close(descriptor)
                continue
            left_behind = _read_holder(descriptor)
            record = json.dumps(_this_process()).encode()
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, record, 0)
            self._descriptor = descriptor
            return left_behind

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order: see ``acquire``)."""
        if self._descriptor is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> dict[str, Any]:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextlib.contextmanager
def holding(path: Path, timeout_s: float = 0.0) -> Iterator[dict[str, Any]]:
    """``with holding(path) as left_behind:`` the lock for the duration of the block."""
    lock = ProcessLock(path)
    left_behind = lock.acquire(timeout_s=timeout_s)
    try:
        yield left_behind
    finally:
        lock.release()


def run_lock_path(project_path: Path, dataset: str) -> Path:
    """The lock file of ``dataset``'s runs: ``data/.run-<dataset>.lock``."""
    return Path(project_path) / LOCK_FOLDER / f".run-{dataset}.lock"


def output_paths(pipeline: Any, catalog: Any, project_path: Path) -> list[Path]:
    """Local files and folders the run writes (inputs are never touched: a download may be
    writing beside them)."""
    paths = []
    for name in sorted(pipeline.all_outputs()):
        dataset = catalog.get(name)
        filepath = getattr(dataset, "_filepath", None)
        if filepath is None or getattr(dataset, "_protocol", "file") not in ("file", None):
            continue
        if getattr(dataset, "_version", None) is not None:
            continue  # versioned datasets never overwrite: nothing to recover
        path = Path(str(filepath))
        paths.append(path if path.is_absolute() else Path(project_path) / path)
    return paths


class RunLockHook:
    """One ``kedro run`` per dataset at a time; the first thing a run does, the last it undoes.

    Taken before any other hook's ``before_pipeline_run`` (a pluggy wrapper), so a refused run
    has not started MLflow runs; released after every other hook's ``after_pipeline_run`` or
    ``on_pipeline_error``. Once taken, temporaries that a killed run left beside this run's
    outputs are cleared (see ``cite_bench.datasets.recover_interrupted_writes``).
    """

    def __init__(self) -> None:
        self._lock: ProcessLock | None = None
        self._project_path = Path.cwd()
        self._dataset = "unknown"

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = Path(context.project_path)
        try:
            self._dataset = str(context.config_loader["globals"].get("dataset", "unknown"))
        except KeyError:
            self._dataset = "unknown"

    @hook_impl(wrapper=True)
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> Iterator[None]:
        # A session in this process that failed to start (an exception in another hook's
        # before_pipeline_run is not followed by on_pipeline_error) leaves its lock here.
        self.release()
        lock = ProcessLock(run_lock_path(self._project_path, self._dataset))
        try:
            left_behind = lock.acquire()
        except LockHeldError as exc:
            raise RunLockedError(
                f"Another `kedro run` of dataset '{self._dataset}' is running in this checkout: "
                f"{describe_holder(exc.holder)}. Both would write the same files under data/ "
                f"(the .h5mu, the cell table, models, tables), so this run was not started. "
                f"Wait for it to finish, or stop it (lock file: '{exc.path}')."
            ) from None
        self._lock = lock
        # Kedro calls no hook when a run ends by KeyboardInterrupt or SystemExit: release at
        # exit then too, so that only a kill leaves the file (which the next run takes over).
        atexit.register(lock.release)
        if left_behind:
            logger.warning(
                "Taking over the lock of dataset '%s' from a run that ended without releasing "
                "it (%s); it is no longer running.",
                self._dataset,
                describe_holder(left_behind),
            )
        try:
            for path in output_paths(pipeline, catalog, self._project_path):
                for action in recover_interrupted_writes(path):
                    logger.warning("Interrupted write of an earlier run: %s", action)
            return (yield)
        except BaseException:
            self.release()
            raise

    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        self.release()

    @hook_impl(trylast=True)
    def on_pipeline_error(self) -> None:
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
