"""What ``check`` reads of a log: its bytes and its version index's, as one state.

Part of ``check`` (castore/file/checklog.py). Readers and writers never take
both locks; check must, so that a write and a reader indexing it in between
cannot make the index name versions beyond the log it read (a false cut,
docs/FORMAT.md §7).
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

from castore.errors import LockTimeoutError, UnsafePathError
from castore.file import fileio
from castore.file.tree import Tree
from castore.file.versionindex import vix_path

__all__ = ["LogState", "log_and_index", "vix_bytes"]


class LogState(NamedTuple):
    """A log and its index read as one state (:func:`log_and_index`)."""

    data: bytes  # the log's bytes
    vix: bytes | None  # its index's; None when absent or not a regular file
    file: tuple[int, int]  # the log's (device, inode): which file was read


def log_and_index(fs: Tree, path: str, timeout: float) -> LogState:
    """The bytes of the log at ``path`` and of its index, as one state (for ``check``).

    Read under the log's shared lock (no write or rewrite between the two
    reads: a write and a reader indexing it in between would make the index
    name versions beyond the log read before, a false cut) and the index's
    (no reader extending it mid-read). The index's lock is only taken when
    free, before the log is read: a reader extending a large index holds it
    for a while, and waiting for it with the log locked would make writers
    wait too; so the log's lock is let go and both are taken again after a
    pause. The index is None when absent or not a regular file (check
    reports a planted one apart).

    Raises:
        LockTimeoutError: a writer held the log or a reader its index for ``timeout``.
        FileNotFoundError: the log is gone (a compaction removed it).
    """
    vix = vix_path(path)
    deadline = time.monotonic() + timeout
    pause, longest = fileio.SHORT_PAUSES
    while True:
        left = max(0.0, deadline - time.monotonic())
        with fs.open_locked(path, os.O_RDONLY, timeout=left, shared=True) as fd:
            st = os.fstat(fd)
            file = (st.st_dev, st.st_ino)
            try:
                vfd = fs.open(vix, os.O_RDONLY)
            except (FileNotFoundError, UnsafePathError):
                return LogState(fileio.read_at(fd, 0, st.st_size), None, file)
            try:
                # A replaced index (a rewrite, under the log's exclusive lock) or a
                # removed one (a reader's, of a stale index): open both again.
                if fileio.try_lock(vfd, shared=True) and fs.names(vix, vfd):
                    data = fileio.read_at(fd, 0, st.st_size)
                    return LogState(data, fileio.read_at(vfd, 0, os.fstat(vfd).st_size), file)
            finally:
                fileio.unlock_and_close(vfd)  # a child forked meanwhile has vfd: unlocked
        if time.monotonic() >= deadline:
            raise LockTimeoutError(vix, timeout)
        time.sleep(pause)
        pause = min(pause * 2, longest)


def vix_bytes(fs: Tree, path: str) -> bytes | None:
    """The version index of the log at ``path``; None if absent (a link is reported apart)."""
    try:
        return fs.read_file(vix_path(path))
    except (FileNotFoundError, UnsafePathError):
        return None
