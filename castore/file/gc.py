"""Garbage collection: free blob frames nothing references, and crash leftovers.

Safety argument (FORMAT.md §8):

* A writer stores a new blob frame and the entry that references it in one
  ``write(2)``, so there is never an unreferenced blob "in flight" in its
  own log.
* A writer may point at a blob frame in *another* log only while holding
  ``gc.lock`` shared, taken without waiting. gc holds ``gc.lock``
  exclusively from before its mark until after its sweep, so no new
  cross-log reference can appear while it runs (such writers store a fresh
  copy instead).
* Each log is swept under its own lock, and the references *from that log*
  are re-read under that lock, so an entry a writer appended after the mark
  still protects its blob.

Hence a blob is dropped only if no entry anywhere references its digest.
The grace period applies to what has no such protocol: ``*.tmp`` files and
empty logs left by crashed writers are removed only when older than it.
Namespace directories are never removed (a writer may be creating a log in
one). The blob index is rewritten at the end from the surviving frames.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from castore.backend import Progress
from castore.errors import CorruptionError
from castore.file import fileio
from castore.file.damage import intact_frames
from castore.file.frames import Frame, LogBytes, classify
from castore.file.graves import Graveyard
from castore.file.records import (
    KIND_BLOB,
    KIND_COMPACTED,
    KIND_ENTRY,
    KIND_HEADER,
    decode_compaction,
    decode_entry,
    decode_header,
)
from castore.file.tree import Tree
from castore.reports import GC_GRACE_SECONDS, GCReport

if TYPE_CHECKING:
    from castore.file.backend import FileBackend

__all__ = ["collect_garbage"]


def _live_digests(frames: list[Frame]) -> set[bytes]:
    live = set()
    for f in frames:
        if f.kind == KIND_ENTRY:
            entry = decode_entry(f.payload)
            if entry.hash:
                live.add(bytes.fromhex(entry.hash))
    return live


def _read_frames(fs: Tree, path: str) -> list[Frame]:
    """The intact frames of a log, for the mark.

    Raises:
        CorruptionError: the log is damaged: a damaged entry may be the only
            reference to a blob, so gc refuses to sweep until a repair.
    """
    try:
        log = classify(fs.read_file(path))
    except FileNotFoundError:
        return []
    return intact_frames(log, path, "gc cannot know which blobs it referenced")


def collect_garbage(
    backend: FileBackend,
    *,
    grace_seconds: float = GC_GRACE_SECONDS,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> GCReport:
    """Free unreferenced blob frames and old crash leftovers; rebuild the blob index.

    Safe while other processes read and write (see the module docstring).

    Raises:
        LockTimeoutError: gc.lock or a ref log stayed locked for the lock timeout.
    """
    counts = dict.fromkeys(("found", "kept", "bytes_found", "bytes_kept", "rewritten"), 0)
    removed_logs = leftovers = 0

    def run(shown: Progress | None) -> tuple[int, int]:
        counts.update(dict.fromkeys(counts, 0))
        return _mark_and_sweep(backend, counts, grace_seconds, dry_run, shown)

    if backend.layout.exists(walk=True):  # no store here: nothing to free, and no gc.lock is made
        if dry_run:
            removed_logs, leftovers = _dry_run(backend, run, progress)
        else:
            with backend.layout.gc_locked(shared=False):
                removed_logs, leftovers = run(progress)
    return GCReport(
        dry_run=dry_run,
        grace_seconds=grace_seconds,
        blobs_found=counts["found"],
        blobs_kept=counts["kept"],
        blobs_freed=counts["found"] - counts["kept"],
        bytes_found=counts["bytes_found"],
        bytes_kept=counts["bytes_kept"],
        bytes_freed=counts["bytes_found"] - counts["bytes_kept"],
        logs_rewritten=counts["rewritten"],
        logs_removed=removed_logs,
        leftovers_removed=leftovers,
    )


def _dry_run(
    backend: FileBackend,
    run: Callable[[Progress | None], tuple[int, int]],
    progress: Progress | None,
) -> tuple[int, int]:
    """``run`` a dry run holding ``gc.lock`` as gc does, without making the file.

    Every holder of ``gc.lock`` (gc, a writer sharing another log's blob, a
    rewrite, an index rebuild) creates the file before it locks it, and
    nothing removes it. So if it is missing before the run and still
    missing after, nobody held it meanwhile: the run saw what it would
    have seen holding it. If it appeared, the run is made again holding it
    (its progress not shown twice).
    """
    layout = backend.layout
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(layout.gc_locked(shared=False, create=False))
        except FileNotFoundError:
            found = run(progress)
            if not layout.fs.exists(layout.gc_lock):
                return found
            held.enter_context(layout.gc_locked(shared=False))  # it exists now: made by another
            progress = None
        return run(progress)


def _mark_and_sweep(
    backend: FileBackend,
    counts: dict[str, int],
    grace_seconds: float,
    dry_run: bool,
    progress: Progress | None,
) -> tuple[int, int]:
    """Mark, sweep each log, remove old leftovers (``gc.lock`` held); add to ``counts``.

    Returns:
        (logs removed, leftovers removed).
    """
    removed_logs = 0
    logs = list(backend.iter_logs())
    live: set[bytes] = set()
    for path in logs:  # mark
        live |= _live_digests(_read_frames(backend.fs, path))
    fileio.failpoint("gc-after-mark")
    cutoff = time.time() - grace_seconds
    graves: dict[str, Graveyard] = {}  # namespace directory -> its GRAVES, read once per run
    for path in logs:  # sweep, each log under its own lock
        buried = functools.partial(_buried, backend, path, graves)
        sweep = _Sweep(path, live, cutoff, dry_run, buried)
        backend.rewrite(path, sweep.transform, gc_held=True)
        for name, value in sweep.counts.items():
            counts[name] += value
        if sweep.decided == []:
            removed_logs += 1
        elif sweep.decided is not None:
            counts["rewritten"] += 1
        if progress is not None:
            progress(1)
    leftovers = _remove_leftovers(backend.fs, backend.root, cutoff, dry_run)
    if not dry_run:
        backend.rebuild_blob_index(gc_held=True)
    return removed_logs, leftovers


class _Sweep:
    """The sweep of one log, decided under its lock (references re-read there)."""

    def __init__(
        self,
        path: str,
        live: set[bytes],
        cutoff: float,
        dry_run: bool,
        buried: Callable[[list[Frame]], bool],
    ) -> None:
        self.buried = buried  # whether a removed key's log may go (its grave holds its versions)
        self.path = path
        self.live = live
        self.cutoff = cutoff
        self.dry_run = dry_run
        self.counts = {"found": 0, "kept": 0, "bytes_found": 0, "bytes_kept": 0}
        self.decided: list[tuple[int, bytes]] | None = None  # what gc does (a dry run: would)

    def transform(self, log: LogBytes) -> list[tuple[int, bytes]] | None:
        """The log's new frames, ``[]`` to remove it, ``None`` to leave it (a dry run: always)."""
        self.decided = self._decide(log.frames)
        return None if self.dry_run else self.decided

    def _decide(self, frames: list[Frame]) -> list[tuple[int, bytes]] | None:
        # The store's live set is only looked into, never copied: a copy per log
        # made the sweep quadratic in the blobs (100,000 keys: 317 s for a dry run).
        own = _live_digests(frames)
        seen: set[bytes] = set()
        out: list[tuple[int, bytes]] = []
        freed = 0
        for f in frames:
            if f.kind == KIND_BLOB:
                self.counts["found"] += 1
                self.counts["bytes_found"] += f.end - f.start
                digest = f.payload[:32]
                if (digest not in self.live and digest not in own) or digest in seen:
                    freed += 1
                    continue
                seen.add(digest)
                self.counts["kept"] += 1
                self.counts["bytes_kept"] += f.end - f.start
            out.append((f.kind, f.payload))
        if not seen and not any(f.kind == KIND_ENTRY for f in frames):
            # An emptied holder of blobs, or a log whose creation crashed. A removed
            # key's compaction frame is a record of its versions: the log stays while
            # it is the only one (GRAVES lost or cut; check --repair restores it).
            if not self.buried(frames):
                return out if freed else None
            return [] if _old(self.path, self.cutoff) or frames else None
        return out if freed else None


def _buried(
    backend: FileBackend, path: str, graves: dict[str, Graveyard], frames: list[Frame]
) -> bool:
    """Whether a log without entries holds no version that nothing else records.

    The versions its ``C`` frames name must be in the namespace's ``GRAVES``
    as the file is now (not as this handle read it: a handle keeps the
    graves it read, and ``GRAVES`` may be lost since; ``graves``, this
    run's, remember nothing the file lost and read it again when it changed),
    and a version the namespace's ``STATE`` records of its key must be among
    them (else the log lost its entries: FORMAT.md §7, "A lost log").
    """
    head = next((decode_header(f.payload) for f in frames if f.kind == KIND_HEADER), None)
    named = [
        high
        for f in frames
        if f.kind == KIND_COMPACTED
        for _, high in decode_compaction(f.payload).versions
    ]
    if head is None:
        return not named
    nsdir = os.path.dirname(path)
    if nsdir not in graves:
        graves[nsdir] = Graveyard(os.path.join(nsdir, "GRAVES"), backend.fs, remember=False)
    try:
        grave = graves[nsdir].version_of(head.key)
    except CorruptionError:  # damaged GRAVES: the answer is not known
        return False
    recorded = backend.names.state(head.scope, head.namespace).recorded().get(head.key, 0)
    return grave >= max([0, *named]) and recorded <= max([grave, *named])


def _old(path: str, cutoff: float) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime < cutoff
    except FileNotFoundError:
        return False


_DEEPEST: Final = 6  # castore's deepest folder: quarantine/<time>/refs/<scope>/<namespace>


def _remove_leftovers(fs: Tree, folder: str, cutoff: float, dry_run: bool, depth: int = 0) -> int:
    """Delete ``*.tmp`` files older than the grace period (crashed writes and rewrites).

    Walks real directories only (a symbolic link is neither entered nor removed),
    and none deeper than castore makes (a planted tree is no castore file's).
    """
    if depth > _DEEPEST:
        return 0
    count = 0
    for name in fs.listdir(folder):
        path = os.path.join(folder, name)
        try:
            st = fs.stat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            count += _remove_leftovers(fs, path, cutoff, dry_run, depth + 1)
        elif stat.S_ISREG(st.st_mode) and name.endswith(".tmp") and st.st_mtime < cutoff:
            count += 1
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    fs.unlink(path)
    return count
