"""Whole small files, written atomically: complete or not at all (a temporary file first).

The part of :class:`~castore.file.tree.Tree` that writes a whole file, then renames or
links it into place. :class:`WholeFiles` is a base of ``Tree`` and uses the confined
operations ``Tree`` defines (``open``, ``unlink``, ``replace``, ``link``,
``fsync_dir``, ``append``), so every path stays below the store root and never goes
through a link.
"""

from __future__ import annotations

import _thread  # threading's own primitives: a CLI get need not load threading
import contextlib
import os
import time

__all__ = ["WholeFiles"]


def _tmp_name(path: str, hidden: bool = False) -> str:
    folder, _, name = path.rpartition("/")
    stamp = f"{os.getpid()}.{_thread.get_ident()}.{time.monotonic_ns()}"
    return f"{folder}/{'.' * hidden}{name}.{stamp}.tmp"


class WholeFiles:
    """Atomic whole-file writes over a tree's confined operations (defined by ``Tree``)."""

    def open(self, path: str, flags: int, *, unsynced: bool = False) -> int:
        """As ``Tree`` defines it (confined to the store root)."""
        raise NotImplementedError

    def unlink(self, path: str) -> None:
        """As ``Tree`` defines it (confined to the store root)."""
        raise NotImplementedError

    def replace(self, src: str, dst: str) -> None:
        """As ``Tree`` defines it (confined to the store root)."""
        raise NotImplementedError

    def link(self, src: str, dst: str) -> None:
        """As ``Tree`` defines it (confined to the store root)."""
        raise NotImplementedError

    def append(self, fd: int, data: bytes, *, durable: bool) -> None:
        """As ``Tree`` defines it (:func:`castore.file.fileio.append`)."""
        raise NotImplementedError

    def fsync_dir(self, path: str) -> None:
        """As ``Tree`` defines it (confined to the store root)."""
        raise NotImplementedError

    def write_new(self, path: str, data: bytes, *, durable: bool, unsynced: bool = False) -> None:
        """Create ``path`` (a temporary file) holding ``data``; remove it again on failure."""
        fd = self.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, unsynced=unsynced)
        try:
            self.append(fd, data, durable=durable)
        except BaseException:
            with contextlib.suppress(OSError):
                self.unlink(path)
            raise
        finally:
            os.close(fd)

    def atomic_write(
        self, path: str, data: bytes, *, durable: bool, unsynced: bool = False
    ) -> None:
        """Write a whole small file atomically: temporary file, fsync, rename, fsync dir.

        The temporary name ends in ``.tmp`` and is never read as data (``unsynced``: as open).
        """
        tmp = _tmp_name(path)
        self.write_new(tmp, data, durable=durable, unsynced=unsynced)
        try:
            self.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.unlink(tmp)
            raise
        if durable:
            self.fsync_dir(os.path.dirname(path) or ".")

    def create_once(self, path: str, data: bytes) -> bool:
        """Create ``path`` holding ``data`` unless it exists; durable; True if this call made it.

        The content is written to a hidden temporary file first and hard-linked
        into place, so ``path`` never exists half-written and of many concurrent
        callers exactly one creates it; the others leave it as they find it.
        """
        tmp = _tmp_name(path, hidden=True)
        self.write_new(tmp, data, durable=True)
        try:
            self.link(tmp, path)
            made = True
        except FileExistsError:
            made = False
        finally:
            with contextlib.suppress(OSError):
                self.unlink(tmp)
        self.fsync_dir(os.path.dirname(path) or ".")
        return made
