"""A write's shared hold of ``gc.lock``, taken only if free (FORMAT.md §8)."""

from __future__ import annotations

import fcntl
import os

from castore.file import fileio
from castore.file.layout import Layout

__all__ = ["GcShare"]


class GcShare:
    """Takes ``gc.lock`` shared on its first call, if it is free; :meth:`close` releases it.

    Another log's blob frame may only be referenced while holding it, so gc (which
    holds it exclusively) never drops it (FORMAT.md §8). Never waits for gc: then the
    call returns False and the writer stores a fresh copy.
    """

    __slots__ = ("_fd", "_layout")

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._fd = -2  # not asked yet; -1: gc holds it

    def __call__(self) -> bool:
        """True if this write holds ``gc.lock`` shared (taken now if free, never waited for)."""
        if self._fd == -2:
            fd = self._layout.fs.open(self._layout.gc_lock, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = -1
            self._fd = fd
        return self._fd >= 0

    def close(self) -> None:
        """Release ``gc.lock`` if held; the next call asks again."""
        fd, self._fd = self._fd, -2
        if fd >= 0:
            fileio.unlock_and_close(fd)  # not closing alone: a child forked meanwhile has fd
