"""One append to a namespace's ``STATE`` file (docs/FORMAT.md §5, rule 3), standard library only.

Shared by :class:`castore.file.statefile.StateIndex` and the CLI's quick
``set`` (:mod:`castore.file.quickset`), which must not load msgspec. Every
change to a log appends a ``P`` frame for its key here, under the log's lock,
before the change (rule 1).
"""

from __future__ import annotations

import fcntl
import os
import struct

from castore.file import fileio

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

__all__ = ["KIND_PENDING", "LENGTH", "LOCK_SECONDS", "STATE_NAME", "UNRECORDED_MAX", "append_frame"]

STATE_NAME: Final = "STATE"  # in each namespace directory
KIND_PENDING: Final = ord("P")
LENGTH: Final = struct.Struct("<Q")  # the first 8 bytes: the length after the last append
LOCK_SECONDS: Final = 5.0  # an append waits this long for a rewrite to finish
# Bytes past the recorded length a reader accepts: an append in flight, or a killed one's
# frames (each under 5 KiB). More is no append: the file grew (a hole), and is not read.
UNRECORDED_MAX: Final = 1 << 20


def append_frame(
    fd: int, path: str, frame: bytes, now: Callable[[], os.stat_result] | None = None
) -> bool:
    """Append ``frame`` to the ``STATE`` open on ``fd`` and record the new length.

    Under the file's exclusive ``flock`` (a rewrite holds it from its read to
    its rename, so nothing lands in between), and only while the file is still
    linked and, for a descriptor kept from an earlier call, while the path still
    names it (``now``: the path's ``stat``) as its only name (a file renamed away,
    out of the store say, is never written): False means it was replaced, and
    the caller opens the path again. A replaced file's lock is never waited
    for: a child forked while a rewrite held it keeps it for its life (the
    rewrite unlocks it, but an older castore only closed its descriptor).

    Raises:
        LockTimeoutError: a rewrite held the file for :data:`LOCK_SECONDS`.
        OSError: the frame could not be written.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another append, or a rewrite: wait for it
        if _replaced(os.fstat(fd), now):
            return False  # not for a file already replaced (its lock may never be freed)
        fileio.lock(fd, path, timeout=LOCK_SECONDS)
    try:
        st = os.fstat(fd)
        if not st.st_nlink or (now is not None and not _alone(now, st)):  # _replaced, inline
            return False
        _pwrite_all(fd, frame, st.st_size)
        os.pwrite(fd, LENGTH.pack(st.st_size + len(frame)), 0)
        return True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _replaced(st: os.stat_result, now: Callable[[], os.stat_result] | None) -> bool:
    """Whether the file ``st`` describes is no longer the path's: unlinked, or not its only name."""
    return not st.st_nlink or (now is not None and not _alone(now, st))


def _alone(now: Callable[[], os.stat_result], st: os.stat_result) -> bool:
    try:
        named = now()
    except FileNotFoundError:
        return False
    return (named.st_ino, named.st_dev, st.st_nlink) == (st.st_ino, st.st_dev, 1)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
