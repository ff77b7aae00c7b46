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

import functools
import os
import time
from collections.abc import Iterator
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

__all__ = ["compact"]


def _refs(backend: FileBackend, retention: Retention) -> Iterator[tuple[Ref, int]]:
    """The refs ``retention`` selects, scopes and namespaces sorted, each with a grave.

    Every key ``KEYS`` lists (grave 0), then each key whose removal a
    compaction began and did not end (its grave: ``GRAVES`` records it,
    ``KEYS`` no longer lists it, its log is still there: FORMAT.md §5).
    """
    scope, namespace = retention.scope, retention.namespace
    for sc in [scope] if scope else sorted(SCOPES):
        for ns in backend.namespaces(sc):
            if namespace is None or ns == namespace:
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
    """The decision for one log, made under its lock by :meth:`transform`."""

    def __init__(
        self, keep_last: int | None, cutoff_ns: int | None, policy: str, grave: int = 0
    ) -> None:
        self.keep_last = keep_last
        self.cutoff_ns = cutoff_ns
        self.policy = policy
        self.grave = grave  # a removal to end: the key's last version in GRAVES (else 0)
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


_BATCH = 32  # the logs of one namespace a compaction holds locked at once


def _batch(refs: list[tuple[Ref, int]], start: int) -> list[tuple[Ref, int]]:
    """The refs from ``start`` on: at most :data:`_BATCH`, of ``refs[start]``'s namespace."""
    run = refs[start : start + _BATCH]
    return [r for r in run if r[0][:2] == run[0][0][:2]]  # refs come namespace by namespace


def compact(
    backend: FileBackend,
    retention: Retention,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> CompactReport:
    """Apply a retention policy to every ref it selects.

    Raises:
        LockTimeoutError: a ref stayed locked for the lock timeout.
    """
    keep_last, keep_within_seconds = retention.keep_last, retention.keep_within_seconds
    policy = retention.policy
    cutoff = None
    if keep_within_seconds is not None:
        cutoff = time.time_ns() - int(keep_within_seconds * 1e9)
    examined = compacted = dropped = removed = before = after = 0
    selected = list(_refs(backend, retention))
    while examined < len(selected):
        batch = _batch(selected, examined)
        refs = [ref for ref, _ in batch]
        plans = [_Plan(keep_last, cutoff, policy, grave) for _, grave in batch]
        if dry_run:
            sizes = [_dry_run(backend, ref, plan) for ref, plan in zip(refs, plans, strict=True)]
        else:
            with backend.layout.gc_locked(shared=True):  # rewrites move blobs: gc waits (§8)
                sizes = _compact_batch(backend, refs, plans)  # the first ones, if not all
        for plan, (size, size_after) in zip(plans, sizes, strict=False):
            examined += 1
            before += size
            after += size_after
            if plan.dropped:
                compacted += 1
                dropped += plan.dropped
                removed += plan.removed is not None
        if progress is not None:
            progress(len(sizes))
    return CompactReport(
        policy=policy,
        dry_run=dry_run,
        refs_examined=examined,
        refs_compacted=compacted,
        versions_dropped=dropped,
        keys_removed=removed,
        bytes_before=before,
        bytes_after=after,
    )


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
    backend: FileBackend, refs: list[Ref], plans: list[_Plan]
) -> list[tuple[int, int]]:
    """Apply each plan to its ref's log, the logs of one namespace rewritten nested.

    Each log's rewrite runs inside the previous one's (``then``): every log
    is locked and decided before any is written. Then the keys that go away
    are recorded in ``GRAVES`` (durably, one append) and leave ``KEYS`` (one
    rewrite), and only then is each new log renamed into place, innermost
    first: per key the order of FORMAT.md §8 ("Compaction"), with one
    ``GRAVES`` fdatasync and one ``KEYS`` rewrite per batch instead of per
    key (a rewrite of ``KEYS`` per removed key made compaction quadratic).
    A writer re-creating a removed key opens its new log, so it comes after
    and lists the key again. Only the first log's lock is waited for: a log
    after it that another holds ends the batch there (``busy``), so the
    batch never holds locks while it waits (a writer stalled on one key
    would hold up writers of the keys before it). Returns the size before
    and after of each log it handled: all of ``refs``, or the first ones.
    """
    paths = [backend.log_path(ref) for ref in refs]
    sizes = [_size(backend.fs, path) for path in paths]
    scope, namespace = refs[0].scope, refs[0].namespace

    def settle() -> None:
        ends = zip(refs, plans, strict=True)
        gone = [(r.key, p.removed.version) for r, p in ends if p.removed is not None]
        if gone:
            backend.graveyard(scope, namespace).bury(gone)
            fileio.failpoint("compact-after-bury")
            keys = {key for key, _ in gone}
            backend.names.unlist(scope, namespace, keys, durable=backend.durable)

    stop = [len(refs)]  # where the batch ended

    def nest(i: int) -> None:
        if i == len(refs):
            settle()
            return

        def busy() -> None:  # another holds it: the batch ends here, the next one waits
            stop[0] = i
            settle()

        transform, first = _checked(backend, refs[i], plans[i]), i == 0
        then = functools.partial(nest, i + 1)
        backend.rewrite(paths[i], transform, gc_held=True, then=then, busy=None if first else busy)

    try:
        nest(0)
    except LockTimeoutError as exc:  # only the first log's lock is waited for: name its key
        if exc.path == paths[0] and not exc.ref:
            exc.ref = str(refs[0])
        raise
    handled = zip(sizes[: stop[0]], paths[: stop[0]], strict=True)
    return [(size, _size(backend.fs, path)) for size, path in handled]


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
