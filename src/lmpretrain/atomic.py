"""Write a file so that a reader sees either the old file or the whole new one, never a part, even
after a kill -9 or a power cut.

The new content goes to a temp file *in the destination folder* (a rename within one filesystem is
atomic; a "move" from $TMPDIR to another filesystem is a copy over the old file), is fsynced, then
renamed over the destination, and the folder is fsynced so the rename itself is durable. A full disk
becomes one `DiskFullError` and leaves the previous file as it was.

Temp files are named `.<name>.<pid>.lmpretrain-tmp`; a killed writer leaves one behind, and
`remove_orphans(folder)` (called when the next run starts) removes those of dead processes, never
any other file.

Neutral ground: free of anything Lightning or prepare-specific (torch only inside
`atomic_torch_save`), so every writer (shards, manifests, reports, tokenizers, checkpoints) uses it.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from lmpretrain.errors import LMPretrainError

TMP_SUFFIX = ".lmpretrain-tmp"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(LMPretrainError):
    """No space (or quota) left while writing; the previous file is unchanged."""


def temp_path(path: Path) -> Path:
    """Where `path`'s new content is written first: same folder, hidden, named after the writer's pid."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(path: Path, write: Callable[[Path], None], place: Callable[[Path, Path], bool]) -> bool:
    """write(tmp), fsync tmp, then place(tmp, path) (True if it put tmp at `path`), then fsync the folder;
    a full disk becomes one DiskFullError; the temp file never stays."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        placed = place(tmp, path)
        if placed:
            fsync_dir(path.parent)
        return placed
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFullError(f"disk full writing {path} ({os.strerror(e.errno)}); the previous {path.name} is "
                                f"unchanged; free space on that disk or write elsewhere, then run again") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _replace(tmp: Path, path: Path) -> bool:
    os.replace(tmp, path)
    return True


def _link_if_absent(tmp: Path, path: Path) -> bool:
    try:
        os.link(tmp, path)  # atomic, and fails where `path` exists
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno in DISK_FULL:
            raise
        os.replace(tmp, path)  # a filesystem without hard links
    return True


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp), fsync tmp, rename it over `path`: readers see the old file or the whole new one."""
    _publish(path, write, _replace)


def atomic_create(path: Path, write: Callable[[Path], None]) -> bool:
    """`atomic_write` that never replaces: True if this call published `path`, False if another writer
    had already published one (kept as it is; read it instead). For caches that concurrent processes
    fill with results that may differ (a tokenizer trainer that breaks ties per process): whoever
    finishes first wins and every later process reads the winner's file. A filesystem without hard
    links falls back to replacing, as `atomic_write` does."""
    return _publish(path, write, _link_if_absent)


class _FdWriter(io.RawIOBase):
    """A raw, write-only file on an open descriptor. Every write goes out through `os.write` in a loop
    (short writes resumed; ENOSPC surfaces as an OSError), looked up at each call so that tests can
    fail it."""

    def __init__(self, fd: int, chunk: int = 1 << 24):
        super().__init__()
        self.fd, self.chunk = fd, chunk

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            view = view[os.write(self.fd, view[: self.chunk]):]
        return size


def write_stream(path: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Create `path` and let fill(f) write it through a buffered binary file: e.g. `torch.save(obj, f)`
    straight to disk, where serializing into memory first would hold a second copy of a checkpoint."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with io.BufferedWriter(_FdWriter(fd), buffer_size=1 << 20) as f:
            fill(f)
    finally:
        os.close(fd)


def atomic_torch_save(obj, path: Path) -> None:
    """`torch.save(obj)` to `path` with `atomic_write`'s guarantees, streamed into the temp file (no copy
    of the checkpoint in memory: a 7B model's would be 14+ GB more host memory at every save)."""
    import torch  # here: this module stays importable without torch

    atomic_write(path, lambda tmp: write_stream(tmp, lambda f: torch.save(obj, f)))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(folder: Path) -> list[Path]:
    """Remove the temp files that killed writers left in `folder` (ours by name, their pid no longer
    running); returns what was removed. Files of a still-running writer and every other file stay."""
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        pid = tmp.name[: -len(TMP_SUFFIX)].rpartition(".")[2]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
