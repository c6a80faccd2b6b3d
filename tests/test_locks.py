"""One `kedro run` per dataset at a time: the second is refused naming the first, a lock left by
a killed run is taken over, and what a killed write left behind is cleared at the next start."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cite_bench.datasets import _temporary_sibling
from cite_bench.locks import LockHeldError, ProcessLock, RunLockedError, run_lock_path

from .conftest import run_kedro

DEMO = {"demo": {"n_cells": 250, "n_genes": 250, "n_proteins": 12, "seed": 0}}
PARAMS = {**DEMO, "tracking": {"enabled": False}}


class _Holder:
    """Another process that takes ``path``'s lock, recording ``command``, and keeps it."""

    def __init__(self, path: Path, command: str = "kedro run --params inputs.path=other.h5ad"):
        script = textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            sys.argv = {command.split()!r}
            from cite_bench.locks import ProcessLock
            ProcessLock(Path({str(path)!r})).acquire()
            print("held", flush=True)
            time.sleep(600)
            """
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout.readline().strip() == "held"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(30) == -signal.SIGKILL


def test_the_lock_excludes_other_processes_until_its_holder_dies(tmp_path):
    path = tmp_path / "data" / ".run-demo.lock"
    holder = _Holder(path)
    try:
        with pytest.raises(LockHeldError) as refused:
            ProcessLock(path).acquire()
        recorded = refused.value.holder
        assert recorded["pid"] == holder.process.pid
        assert recorded["command"] == "kedro run --params inputs.path=other.h5ad"
        assert recorded["host"] and recorded["started"]
    finally:
        holder.kill()
    lock = ProcessLock(path)
    left_behind = lock.acquire()  # the kernel dropped the dead process's lock
    assert left_behind["pid"] == holder.process.pid
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_a_second_run_of_a_dataset_is_refused_naming_the_first(project):
    """The run that holds the lock is another process (as `kedro run` would be): this run
    stops before any work, and says which run to wait for."""
    holder = _Holder(run_lock_path(project, "demo"))
    try:
        with pytest.raises(RunLockedError, match=rf"pid {holder.process.pid} .*inputs\.path="):
            run_kedro(project, pipeline_names=["data_processing"], runtime_params=PARAMS)
        assert not (project / "data/03_primary/demo.h5mu").exists()
    finally:
        holder.kill()


def test_another_dataset_is_not_held_up(project):
    holder = _Holder(run_lock_path(project, "bmmc_cite_starter"))
    try:
        run_kedro(project, pipeline_names=["data_processing"], runtime_params=PARAMS)
    finally:
        holder.kill()
    assert (project / "data/03_primary/demo.h5mu").is_file()
    assert not run_lock_path(project, "demo").exists()  # released at the end


def test_a_killed_runs_lock_and_leftovers_are_taken_over(project, caplog):
    """A kill leaves the lock file and half-written temporaries: the next run of the dataset
    takes the lock over and clears its own outputs' temporaries (not other datasets')."""
    holder = _Holder(run_lock_path(project, "demo"))
    holder.kill()
    primary = project / "data/03_primary"
    half_written = _temporary_sibling(primary / "demo.h5mu")
    half_written.write_bytes(b"half an h5mu")
    other_dataset = _temporary_sibling(primary / "bmmc_cite.h5mu")  # not this run's to touch
    with caplog.at_level(logging.WARNING, logger="cite_bench.locks"):
        run_kedro(project, pipeline_names=["data_processing"], runtime_params=PARAMS)
    assert f"pid {holder.process.pid}" in caplog.text and "no longer running" in caplog.text
    assert f"removed the unfinished '{half_written}'" in caplog.text
    assert not half_written.exists()
    assert other_dataset.exists()
    hidden = sorted(p.name for p in primary.iterdir() if p.name.startswith(".demo"))
    assert hidden == []
    assert (primary / "demo.h5mu").is_file() and (primary / "demo_cells.parquet").is_file()
