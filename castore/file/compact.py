"""Retention and compaction: drop old versions of ref logs under a policy.

Per ref, the newest version is always kept; among the others, a version is
kept when it is one of the last ``keep_last`` or younger than
``keep_within`` (the union, as restic's ``--keep-last``/``--keep-within``).
Dropped versions leave a ``C`` frame naming them and the policy, so reading
one says it was compacted and by what; kept entries keep their version
numbers and audit records. Blob frames stay (other versions or other logs may
use them): ``gc`` frees the unreferenced ones afterwards.

A key whose newest version is a delete older than ``keep_within`` goes away:
its last version is recorded in the namespace's ``GRAVES`` file (so a
re-created key continues after it: versions never repeat), its entries are
dropped, and it leaves ``KEYS``. Its log survives only as a holder of blob
frames, which gc removes once nothing uses them. A removal a kill stopped
after ``KEYS`` (FORMAT.md §5) is ended by the next compaction, whatever its
policy; an older copy put back there (§7) is left to ``check``.

Each log is rewritten atomically under its own lock (FORMAT.md §8), so
readers and writers carry on while compaction runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from castore.backend import Progress
from castore.errors import CastoreError, CorruptionError, LockTimeoutError, UnsafePathError
from castore.file import fileio, logread
from castore.file.frames import LogBytes, classify
from castore.file.records import (
    KIND_BLOB,
    KIND_COMPACTED,
    KIND_ENTRY,
    KIND_HEADER,
    decode_entry,
    encode_record,
)
from castore.file.rewrite import Transform, next_compaction, relaid, removed_log
from castore.file.tree import Tree
from castore.keys import SCOPES, Ref
from castore.records import Entry
from castore.reports import CompactReport, Retention, retained

if TYPE_CHECKING:
    from castore.file.backend import FileBackend
    from castore.file.logrewrite import Decision

__all__ = ["compact"]


def _refs(backend: FileBackend, retention: Retention) -> Iterator[tuple[Ref, int]]:
    """The refs ``retention`` selects, scopes and namespaces sorted, each with a grave.

    Every key ``KEYS`` lists (grave 0), then each key whose removal a
    compaction began and did not end (its grave: ``GRAVES`` records it,
    ``KEYS`` no longer lists it, its log is still there: FORMAT.md §5).
    """
    scope, namespace = retention.scope, retention.namespace
    for sc in [scope] if scope else sorted(SCOPES):
        for ns in backend.namespaces(sc) if namespace is None else [namespace]:
            listed = backend.keys(sc, ns, retention.prefix)
            yield from ((Ref(sc, ns, key), 0) for key in listed)
            yield from _stopped(backend, sc, ns, retention.prefix, set(listed))


def _stopped(
    backend: FileBackend, scope: str, namespace: str, prefix: str, listed: set[str]
) -> Iterator[tuple[Ref, int]]:
    """Keys starting with ``prefix`` that ``GRAVES`` records, ``KEYS`` omits, and a log holds."""
    try:
        graves = backend.graveyard(scope, namespace).records()
    except (UnsafePathError, OSError):
        return  # something planted in place of GRAVES: a removal would fail anyway
    for key in sorted(k for k in graves if k.startswith(prefix) and k not in listed):
        ref = Ref(scope, namespace, key)
        if _ends_in_tombstone(backend.fs, backend.log_path(ref), graves[key]):
            yield ref, graves[key]


def _ends_in_tombstone(fs: Tree, path: str, grave: int) -> bool:
    """Whether the log at ``path`` ends with a delete at or below ``grave`` (unlocked: a hint).

    A removed log (no entry), a missing or unreadable one is left alone, as
    every compaction before this one left it.
    """
    try:
        fd = fs.open(path, os.O_RDONLY)
    except (OSError, CastoreError):
        return False
    try:
        tail = logread.read_tail(fd, os.fstat(fd).st_size)
    except (OSError, CastoreError):
        return False
    finally:
        os.close(fd)
    entry = tail.entry if tail is not None else None
    return entry is not None and not entry.live and entry.version <= grave


class _Plan:
    """The decision for one log, made under its lock by :meth:`transform`.

    Without ``removals``, a key that would go away is left as it is and
    marked ``deferred`` (removed later, in a batch of removals).
    """

    def __init__(
        self,
        keep_last: int | None,
        cutoff_ns: int | None,
        policy: str,
        grave: int = 0,
        *,
        removals: bool = True,
    ) -> None:
        self.keep_last = keep_last
        self.cutoff_ns = cutoff_ns
        self.policy = policy
        self.grave = grave  # a removal to end: the key's last version in GRAVES (else 0)
        self.removals = removals
        self.deferred = False
        self.dropped = 0
        self.removed: Entry | None = None  # the tombstone of a key that goes away

    def transform(self, log: LogBytes) -> list[tuple[int, bytes]] | None:
        frames = log.frames
        entries = [(f, decode_entry(f.payload)) for f in frames if f.kind == KIND_ENTRY]
        if not entries:
            return None
        newest = entries[-1][1]
        if self.grave:  # end a removal only as begun: its tombstone still the newest entry
            if newest.live or newest.version > self.grave:
                return None
            keep = None
        else:
            keep = retained([e for _, e in entries], self.keep_last, self.cutoff_ns)
        if keep is None and not self.removals:
            self.deferred = True
            return None
        if keep is None:
            self.removed = newest
            self.dropped = len(entries)
            return removed_log(frames, [(e.first, e.version) for _, e in entries], self.policy)
        drop = [e.version for _, e in entries if e.version not in keep]
        if not drop:
            return None
        self.dropped = len(drop)
        gone = [(e.first, e.version) for _, e in entries if e.version not in keep]
        marker = next_compaction(frames, gone, self.policy)  # a damaged entry's whole range
        out: list[tuple[int, bytes]] = []
        for f in frames:
            if f.kind == KIND_HEADER:
                out.append((f.kind, f.payload))
                out.append((KIND_COMPACTED, encode_record(marker)))
            elif f.kind == KIND_BLOB or (
                f.kind == KIND_ENTRY and decode_entry(f.payload).version in keep
            ):
                out.append((f.kind, f.payload))
        return out


_BATCH = 32  # logs of one namespace a batch examines (those that lose versions held)
# Put-off keys of one namespace a batch examines: each is held locked until the batch's
# last rename (about 4-12 ms each), so a writer of its first key waits for up to 127
# others; 1,024 held one for 12.6 s. Fewer mean more KEYS rewrites (one per batch).
_REMOVALS = 128
_HELD_BYTES = 64 << 20  # a batch ends once the logs it holds passed this many bytes


class _Tally:
    """The counts of a :class:`CompactReport`, added up log by log."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.examined = self.compacted = self.dropped = self.removed = 0
        self.before = self.after = 0

    def add(self, done: list[tuple[_Plan, int, int]]) -> None:
        for plan, size, size_after in done:
            self.examined += 1
            self.before += size
            self.after += size_after
            if plan.dropped:
                self.compacted += 1
                self.dropped += plan.dropped
                self.removed += plan.removed is not None
        if self.progress is not None and done:
            self.progress(len(done))

    def report(self, policy: str, dry_run: bool) -> CompactReport:
        return CompactReport(
            policy=policy,
            dry_run=dry_run,
            refs_examined=self.examined,
            refs_compacted=self.compacted,
            versions_dropped=self.dropped,
            keys_removed=self.removed,
            bytes_before=self.before,
            bytes_after=self.after,
        )


def compact(
    backend: FileBackend,
    retention: Retention,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> CompactReport:
    """Apply a retention policy to every ref it selects, namespace by namespace.

    A namespace's logs that lose versions are compacted in batches of up to
    :data:`_BATCH`; the keys that go away are removed after them, in batches
    of up to :data:`_REMOVALS` with one ``GRAVES`` append and one ``KEYS``
    rewrite each (FORMAT.md §8).

    Raises:
        LockTimeoutError: a ref stayed locked for the lock timeout.
    """
    cutoff = None
    if retention.keep_within_seconds is not None:
        cutoff = time.time_ns() - int(retention.keep_within_seconds * 1e9)

    def plan(grave: int, removals: bool) -> _Plan:
        return _Plan(retention.keep_last, cutoff, retention.policy, grave, removals=removals)

    tally = _Tally(progress)
    for _, group in itertools.groupby(_refs(backend, retention), key=lambda r: r[0][:2]):
        refs = list(group)
        if dry_run:
            for ref, grave in refs:
                one = plan(grave, True)
                tally.add([(one, *_dry_run(backend, ref, one))])
            continue
        deferred: list[tuple[Ref, int]] = []  # keys that go away: removed after the others
        done = 0
        while done < len(refs):
            done = _compact_batch(backend, refs, done, plan, tally, deferred)
        done = 0
        while done < len(deferred):
            done = _compact_batch(backend, deferred, done, plan, tally, None)
    return tally.report(retention.policy, dry_run)


def _dry_run(backend: FileBackend, ref: Ref, plan: _Plan) -> tuple[int, int]:
    """Size up what ``plan`` would make of one ref's log: its size before and after."""
    path = backend.log_path(ref)
    size = _size(backend.fs, path)
    try:
        fd = backend.fs.open(path, os.O_RDONLY)
    except FileNotFoundError:
        result = None
    else:
        try:  # read as a reader: evidence of a copy is confirmed on ``fd``
            log = classify(fileio.read_at(fd, 0, os.fstat(fd).st_size))
            result = plan.transform(log) if _not_a_copy(backend, ref, plan, log, fd) else None
        finally:
            os.close(fd)
    # sized as the real run lays the log out (relaid re-encodes moved blob locations)
    return size, size if result is None else len(relaid(result))


def _compact_batch(
    backend: FileBackend,
    refs: list[tuple[Ref, int]],
    start: int,
    plan: Callable[[int, bool], _Plan],
    tally: _Tally,
    deferred: list[tuple[Ref, int]] | None,
) -> int:
    """Compact one batch of ``refs`` (one namespace's) from ``start``; return where it ended.

    Each log is locked and decided inside the locks of the logs before it
    that change (one left as it is is unlocked at once), so every log the
    batch changes is locked and decided before any is written. Then the keys
    that go away are recorded in ``GRAVES`` (durably, one append) and leave
    ``KEYS`` (one rewrite), and only then is each new log renamed into place,
    innermost first: per key the order of FORMAT.md §8 ("Compaction"). A
    writer re-creating a removed key opens its new log, so it comes after
    and lists the key again. A lock is waited for only while the batch holds
    none; one another holds ends the batch there, so it never waits while it
    holds locks (a writer stalled on one key would hold up writers of the
    keys before it). With ``deferred``, a key that would go away is left as
    it is and added there: such batches examine :data:`_BATCH` logs at most and
    never rewrite ``KEYS``; the removals come after, many per rewrite (one
    per batch of 32 logs made compaction quadratic in the keys).
    """
    most = _BATCH if deferred is not None else fileio.descriptor_share(4, _REMOVALS)  # fds
    done: list[tuple[Ref, _Plan, str, int]] = []
    held = held_bytes = 0
    i = start
    # rewrites move blobs: gc waits (§8)
    with backend.layout.gc_locked(shared=True), contextlib.ExitStack() as batch:
        # every log examined counts (one left as it is too): progress, gc.lock's hold
        while i < len(refs) and i - start < most and held_bytes < _HELD_BYTES:
            ref, grave = refs[i]
            path, one = backend.log_path(ref), plan(grave, deferred is None)
            size = _size(backend.fs, path)
            with contextlib.ExitStack() as log:
                got = log.enter_context(_locked(backend, ref, path, one, wait=not held))
                if got.busy:
                    break  # another holds it: the batch ends here, the next one waits
                if got.changes:  # held until the batch's renames, when the batch ends
                    batch.push(log.pop_all())
                    held, held_bytes = held + 1, held_bytes + got.size
            if one.deferred and deferred is not None:
                deferred.append(refs[i])
            else:
                done.append((ref, one, path, size))
            i += 1
        _settle(backend, [(r, p) for r, p, _, _ in done])
    tally.add([(p, size, _size(backend.fs, path)) for _, p, path, size in done])
    return i


@contextlib.contextmanager
def _locked(
    backend: FileBackend, ref: Ref, path: str, plan: _Plan, *, wait: bool
) -> Iterator[Decision]:
    """``backend.rewriting`` of one log of a batch, a lock timeout naming its key."""
    try:
        rewriting = backend.rewriting(path, _checked(backend, ref, plan), gc_held=True, wait=wait)
        with rewriting as decision:
            yield decision
    except LockTimeoutError as exc:  # waited for while holding none: name its key
        if exc.path == path and not exc.ref:
            exc.ref = str(ref)
        raise


def _settle(backend: FileBackend, done: list[tuple[Ref, _Plan]]) -> None:
    """Record a batch's removed keys in ``GRAVES`` (durably), then take them out of ``KEYS``."""
    gone = [(r.key, p.removed.version) for r, p in done if p.removed is not None]
    if gone:
        scope, namespace = done[0][0].scope, done[0][0].namespace
        backend.graveyard(scope, namespace).bury(gone)
        fileio.failpoint("compact-after-bury")
        keys = {key for key, _ in gone}
        backend.names.unlist(scope, namespace, keys, durable=backend.durable)


def _checked(backend: FileBackend, ref: Ref, plan: _Plan) -> Transform:
    """``plan.transform``, after the refusal of a log that is an older copy."""

    def transform(log: LogBytes) -> list[tuple[int, bytes]] | None:
        return plan.transform(log) if _not_a_copy(backend, ref, plan, log) else None

    return transform


def _not_a_copy(backend: FileBackend, ref: Ref, plan: _Plan, log: LogBytes, fd: int = -1) -> bool:
    """Refuse, as a writer does, a log that is an older copy or behind ``STATE`` (FORMAT.md §7).

    Compacting it would take its old tombstone for the key's last state, or
    drop versions as if they were the key's oldest. Read under the log's lock
    (``fd`` -1), or by a dry run on ``fd``, which confirms evidence under it.
    False (left as it is, for ``check``) for a key ``KEYS`` omits that the
    compaction visits only to end a removal (``plan.grave``): no compaction
    before that visit failed on it.
    """
    entries = [f for f in log.frames if f.kind == KIND_ENTRY]
    newest = decode_entry(entries[-1].payload) if entries else None
    try:
        backend.names.not_put_back(ref, backend.log_path(ref), newest, fd)
    except CorruptionError:
        if plan.grave:
            return False
        raise
    return True


def _size(fs: Tree, path: str) -> int:
    try:
        return fs.stat(path).st_size
    except FileNotFoundError:
        return 0
