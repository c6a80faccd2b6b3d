"""Atomic writes: an artifact appears under its final name only once it is complete.

The object is written to a hidden temporary path beside the target and renamed over it once the
write has finished, so a crash or a kill never leaves a half-written artifact under the final
name; :func:`recover_interrupted_writes` clears what a kill left at the next start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kedro_datasets.json
import kedro_datasets.matplotlib
import kedro_datasets.pandas
import kedro_datasets.text

# Hidden names beside a target: ".<name>.tmp-*" while it is written, ".<name>.old-*" for the
# replaced folder during a folder swap. A kill can leave either; see recover_interrupted_writes.
_TEMPORARY_MARK = ".tmp-"
_REPLACED_MARK = ".old-"


def _temporary_sibling(target: Path, directory: bool = False) -> Path:
    """A new hidden file or folder beside ``target``, on the same filesystem."""
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}{_TEMPORARY_MARK}"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    handle, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
    os.close(handle)
    return Path(name)


def _publish(temporary: Path, target: Path) -> None:
    """Move a finished temporary into place in one rename."""
    # mkstemp/mkdtemp create private entries: give the artifact the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod((0o777 if temporary.is_dir() else 0o666) & ~umask)
    if temporary.is_dir() and target.exists():
        # A directory cannot be renamed over a non-empty one: swap via a second rename. A kill
        # between the two leaves only the hidden old folder, which the next run puts back.
        stale = target.with_name(f".{target.name}{_REPLACED_MARK}{uuid.uuid4().hex[:12]}")
        target.rename(stale)
        temporary.rename(target)
        shutil.rmtree(stale)
    else:
        os.replace(temporary, target)


def _discard(temporary: Path) -> None:
    if temporary.is_dir():
        shutil.rmtree(temporary)
    else:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` and move it into place only on success."""
    temporary = _temporary_sibling(target, directory)
    try:
        yield temporary
        _publish(temporary, target)
    finally:
        if temporary.exists():
            _discard(temporary)


def recover_interrupted_writes(target: Path) -> list[str]:
    """Clear what a killed write left beside ``target``; return what was done, for the log.

    A kill during a write leaves a hidden ``.<name>.tmp-*`` (never under the final name): it is
    removed. A kill between the two renames of a folder swap leaves the previous folder as
    ``.<name>.old-*`` and nothing under the final name: it is put back, so the artifact that
    went with the other outputs of its node is restored; with the final name present, it is
    removed. Call only while no other process writes ``target`` (the run lock).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    actions = []
    hidden = f".{glob.escape(target.name)}"
    for temporary in sorted(target.parent.glob(f"{hidden}{_TEMPORARY_MARK}*")):
        _discard(temporary)
        actions.append(f"removed the unfinished '{temporary}'")
    replaced = sorted(
        target.parent.glob(f"{hidden}{_REPLACED_MARK}*"), key=lambda path: path.stat().st_mtime
    )
    for previous in reversed(replaced):
        if not target.exists():
            previous.rename(target)
            actions.append(f"restored '{target}' from '{previous}' (killed while replacing it)")
        else:
            _discard(previous)
            actions.append(f"removed the replaced '{previous}'")
    return actions


class _AtomicSave:
    """Make a kedro-datasets file dataset write atomically on the local filesystem.

    While ``save`` runs, the dataset's save path points at a temporary sibling; the finished
    file is renamed into place before Kedro checks versions, and discarded on failure.
    """

    _staged: tuple[Path, Path] | None = None
    _saving: bool = False

    def save(self, data: Any) -> None:
        self._saving = True
        try:
            super().save(data)
            self._commit()
        finally:
            self._saving = False
            if self._staged is not None:
                _discard(self._staged[0])
                self._staged = None

    def _get_save_path(self) -> PurePosixPath:
        path = super()._get_save_path()
        if not self._saving or getattr(self, "_protocol", "file") != "file":
            return path
        if self._staged is None:
            final = Path(path)
            self._staged = (_temporary_sibling(final), final)
        return PurePosixPath(self._staged[0])

    def _invalidate_cache(self) -> None:
        # kedro-datasets call this at the end of a successful write.
        self._commit()
        super()._invalidate_cache()

    def _commit(self) -> None:
        if self._staged is not None:
            temporary, final = self._staged
            self._staged = None
            _publish(temporary, final)


class ParquetDataset(_AtomicSave, kedro_datasets.pandas.ParquetDataset):
    """``kedro_datasets.pandas.ParquetDataset`` with atomic local writes."""


class JSONDataset(_AtomicSave, kedro_datasets.json.JSONDataset):
    """``kedro_datasets.json.JSONDataset`` with atomic local writes."""


class TextDataset(_AtomicSave, kedro_datasets.text.TextDataset):
    """``kedro_datasets.text.TextDataset`` with atomic local writes."""


class MatplotlibDataset(_AtomicSave, kedro_datasets.matplotlib.MatplotlibDataset):
    """``kedro_datasets.matplotlib.MatplotlibDataset`` (one figure) with atomic local writes."""
