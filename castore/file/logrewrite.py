"""One log's atomic rewrite under its lock (compaction, gc, repair, an import's overwrite).

:func:`rewriting` locks the log, sorts its bytes into frames and damage,
asks ``transform`` for the new frames and hands the caller a
:class:`Decision`; when the caller's block ends without an error it
writes them to a temporary file and renames it over the log
(docs/FORMAT.md §8). A log that stays as it is was unlocked before the
block ran. Compaction enters the rewrites of a batch of logs one inside
the other (a :class:`contextlib.ExitStack`), so the batch's logs are all
locked and decided before any is written, and tries each lock without
waiting while it holds another (``wait``), so it never waits for a lock
while it holds others. :func:`rewrite` is one log's rewrite alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from castore.errors import CorruptionError, LockTimeoutError
from castore.file import fileio, logread
from castore.file.frames import Frame, LogBytes, scan_frames
from castore.file.records import KIND_BLOB
from castore.file.reflog import RefLog
from castore.file.rewrite import Transform, relaid
from castore.file.statemarks import pending_rewrite
from castore.records import BlobLoc

__all__ = ["Decision", "rewriting"]


class Decision:
    """What :func:`rewriting` found: whether the log is held to be rewritten.

    Attributes:
        busy: another held the lock (``wait`` False): nothing was read or written.
        changes: ``transform`` asked for new frames: the log stays locked until
            the block ends, then is rewritten.
        size: the log's bytes as read (0 when busy or missing).
        frames: once the block ended, the new log's frames ([] when it was
            removed); None while it runs, or when nothing changed.
    """

    __slots__ = ("busy", "changes", "frames", "size")

    def __init__(self, *, busy: bool = False, changes: bool = False, size: int = 0) -> None:
        self.busy = busy
        self.changes = changes
        self.size = size
        self.frames: list[Frame] | None = None


@contextlib.contextmanager
def rewriting(
    log: RefLog, transform: Transform, *, keep_copy: str | None = None, wait: bool = True
) -> Iterator[Decision]:
    """Lock and decide ``log``'s rewrite; the block runs under its lock; then write it.

    ``transform`` gets the log's frames and damage (:class:`LogBytes`) and returns
    the new ``(kind, payload)`` list (the key's ``STATE`` row is then marked
    pending, FORMAT.md §5), or None to leave the log alone; an empty list
    removes the log and its version index. Only a repair (``keep_copy``: the old bytes
    are copied there first) may rewrite a damaged log; a torn tail is quarantined
    before it is dropped. When the block ends without an error: moved blob frames
    get index entries (fsynced) first, then temporary file, fsync, rename, fsync the
    directory, version index (FORMAT.md §8). An error in the block writes nothing.
    A log left alone (or missing) is unlocked before the block runs. Without
    ``wait``, a lock another holds is not waited for: the decision is ``busy``.

    Raises:
        CorruptionError: the log is damaged and this is not a repair.
        LockTimeoutError: the lock stayed taken for the lock timeout (with ``wait``).
    """
    with contextlib.ExitStack() as held:
        fd, found, wanted = -1, None, None
        try:
            try:
                # Only read and locked (the new log is a new file): a read-only store's
                # gc --dry-run sizes up every log too
                fd = held.enter_context(log.locked(os.O_RDONLY, None if wait else 0.0))
            except LockTimeoutError:
                if wait:
                    raise
                decision = Decision(busy=True)
            else:
                found, wanted = _decide(log, fd, transform, keep_copy)
                decision = Decision(changes=wanted is not None, size=found.size)
        except FileNotFoundError:
            if log.layout.fs.exists(log.path):
                raise
            decision = Decision()
        if found is None or wanted is None:
            found = None  # not kept while the caller goes on (a batch enters many)
            held.close()  # unlocked before the block: nothing of it is written
            yield decision
            return
        yield decision
        decision.frames = _write_locked(log, fd, found, wanted, keep_copy)


def _decide(
    log: RefLog, fd: int, transform: Transform, keep_copy: str | None
) -> tuple[LogBytes, list[tuple[int, bytes]] | None]:
    found = logread.scan(fd)[1]
    if found.damage and keep_copy is None:
        start, end = found.damage[0]
        raise CorruptionError(
            f"{log.path} has damaged bytes at offset {start} ({end - start} bytes); "
            "left unchanged; run castore check --repair"
        )
    if keep_copy is None:  # rewriting would rebuild the index: the evidence would go
        log.refuse_cut(fd, found, "left unchanged")
    if (wanted := transform(found)) is not None:  # it changes: its STATE row is pending
        pending_rewrite(log.layout.fs, log.path, found)
    return found, wanted


def _write_locked(
    log: RefLog,
    fd: int,
    found: LogBytes,
    wanted: list[tuple[int, bytes]],
    keep_copy: str | None,
) -> list[Frame]:
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
