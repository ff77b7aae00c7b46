"""One log's atomic rewrite under its lock (compaction, gc, repair, an import's overwrite).

:func:`rewrite` locks the log, sorts its bytes into frames and damage,
asks ``transform`` for the new frames, then writes them to a temporary
file and renames it over the log (docs/FORMAT.md §8). Compaction nests the
rewrites of a batch of logs (``then``), and tries each log after the
first without waiting (``busy``), so it never waits for a lock while it
holds others.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from castore.errors import CorruptionError, LockTimeoutError
from castore.file import fileio, logread
from castore.file.frames import Frame, scan_frames
from castore.file.records import KIND_BLOB
from castore.file.reflog import RefLog
from castore.file.rewrite import Transform, relaid
from castore.records import BlobLoc

__all__ = ["rewrite"]


def rewrite(
    log: RefLog,
    transform: Transform,
    *,
    keep_copy: str | None = None,
    then: Callable[[], None] | None = None,
    busy: Callable[[], None] | None = None,
) -> list[Frame] | None:
    """Atomically replace ``log`` with ``transform`` of its bytes, under its lock.

    ``transform`` gets the log's frames and damage (:class:`LogBytes`) and returns
    the new ``(kind, payload)`` list, or None to leave the log alone; an empty list
    removes the log and its version index. Only a repair (``keep_copy``: the old bytes
    are copied there first) may rewrite a damaged log; a torn tail is quarantined
    before it is dropped. Moved blob frames get index entries (fsynced) first. Then:
    temporary file, fsync, rename, fsync the directory, version index (FORMAT.md §8).
    ``then`` runs once ``transform`` decided, under the lock, before anything is
    written (also when nothing changes or there is no log): compaction nests the
    next log's rewrite there. With ``busy``, the lock is not waited for: if another
    holds it, ``busy()`` runs instead of anything else (``then`` included).

    Returns:
        The new log's frames, or None when nothing was changed.

    Raises:
        CorruptionError: the log is damaged and this is not a repair.
        LockTimeoutError: the lock stayed taken for the lock timeout (without ``busy``).
    """
    called: list[bool] = []  # then() or busy() ran: never again, whatever it raised

    def decided() -> None:
        called.append(True)
        if then is not None:
            then()

    try:
        with contextlib.ExitStack() as held:
            try:
                # Only read and locked (the new log is a new file): a read-only store's
                # gc --dry-run sizes up every log too
                fd = held.enter_context(log.locked(os.O_RDONLY, 0.0 if busy else None))
            except LockTimeoutError:
                if busy is None:
                    raise
                called.append(True)
                busy()
                return None
            return _rewrite_locked(log, fd, transform, keep_copy, decided)
    except FileNotFoundError:
        if called or log.layout.fs.exists(log.path):
            raise
        decided()
        return None


def _rewrite_locked(
    log: RefLog, fd: int, transform: Transform, keep_copy: str | None, decided: Callable[[], None]
) -> list[Frame] | None:
    found = logread.scan(fd)[1]
    if found.damage and keep_copy is None:
        start, end = found.damage[0]
        raise CorruptionError(
            f"{log.path} has damaged bytes at offset {start} ({end - start} bytes); "
            "left unchanged; run castore check --repair"
        )
    if keep_copy is None:  # rewriting would rebuild the index: the evidence would go
        log.refuse_cut(fd, found, "left unchanged")
    wanted = transform(found)
    decided()
    if wanted is None:
        return None
    layout = log.layout
    if keep_copy is None and found.torn < found.size:
        torn = fileio.read_at(fd, found.torn, found.size - found.torn)
        layout.quarantine_bytes(log.path, found.torn, torn)
    if keep_copy is not None:
        layout.keep_copy(fd, os.fstat(fd).st_size, keep_copy)
    if not wanted:
        _remove(log)
        return []
    data = relaid(wanted)
    own = layout.rel(log.path)
    moved = [
        (f.payload[:32], BlobLoc(own, f.start, f.end - f.start))
        for f in scan_frames(data)
        if f.kind == KIND_BLOB
    ]
    log.blobs.add_many(moved, durable=True)  # values other logs point at: found after a crash
    return log.replace_locked(data, repair=keep_copy is not None)


def _remove(log: RefLog) -> None:
    """Remove the locked log and its version index (gc or compaction emptied it)."""
    fs = log.layout.fs
    fileio.failpoint("rewrite-before-remove")
    fs.unlink(log.path)
    with contextlib.suppress(FileNotFoundError):
        fs.unlink(log.vix_path)
    if log.layout.durable:
        fs.fsync_dir(os.path.dirname(log.path))
