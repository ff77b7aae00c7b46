"""The file backend: the parts of castore/file/ behind the :class:`~castore.backend.Backend` API.

:class:`FileBackend` combines, for one store directory: its ``Layout`` (paths,
``FORMAT``), a ``RefLog`` per ref, the ``Namespaces`` (``KEYS``, ``GRAVES``), the blob
index and reader, a read cache of each log's newest entry, and the calls running
(``InUse``: a close waits for them). It knows the bytes (docs/FORMAT.md), not Dagu's.

A read never creates a store: on a location that holds none (a missing or empty
directory) every read finds nothing; the first write creates it (:meth:`Layout.create`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from castore.backend import Current, Decide, NewVersion, NothingView, Progress
from castore.file import logrewrite, logversions, settled
from castore.file.blobindex import BlobIndex
from castore.file.blobs import BlobReader
from castore.file.frames import Frame
from castore.file.graves import Graveyard
from castore.file.layout import KEY_BYTES_CACHED, Layout
from castore.file.namespaces import Namespaces
from castore.file.readcache import CACHE_MAX_ENTRIES, ReadCache, Sig, stat_sig
from castore.file.readers import KeptReaders
from castore.file.reflog import RefLog
from castore.file.rewrite import Transform
from castore.file.tree import Tree
from castore.file.writer import Writer
from castore.inuse import InUse, guard
from castore.keys import Ref
from castore.records import Entry
from castore.reports import CheckReport, CompactReport, GCReport, Retention, ScopeStats, StoreStats
from castore.results import ListEntry

__all__ = ["FileBackend"]


class FileBackend:
    """Versioned refs in one store directory (docs/FORMAT.md).

    Safe for many processes (readers take no lock; writers hold a ``flock``
    per ref log) and threads (each call opens its own descriptors).

    Args:
        root: the store directory, created with its FORMAT file by the first write.
        durable: fsync so that a returned write survives a power loss.
        lock_timeout: seconds to wait for a ref's lock.
        mode: ``private`` or ``group``; None follows the directory (docs/FORMAT.md §1).

    Raises:
        FormatVersionError: the directory holds another format, is a
            non-empty directory that is not a castore store, or is not a directory.
    """

    def __init__(
        self, root: str, *, durable: bool, lock_timeout: float, mode: str | None = None
    ) -> None:
        self.layout = Layout(root, durable=durable, lock_timeout=lock_timeout, mode=mode)
        self._blobs = BlobIndex(root, self.layout.fs)
        self.blob_reader = BlobReader(self.layout.fs, self.layout.refs, self._blobs)
        self.names = Namespaces(self.layout)
        self._logs: dict[Ref, RefLog] = {}
        self._log_bytes = 0  # of the keys in _logs
        self._cache = ReadCache()
        self._writer = Writer(self.layout, self.names, self._blobs, self.blob_reader, self._cache)
        self.kept_readers = KeptReaders()  # logs kept open for version reads
        self.in_use = InUse(self._close_now)  # the calls running: close waits for none

    # -- the parts, as maintenance reaches them ----------------------------------------

    @property
    def root(self) -> str:
        """The store directory."""
        return self.layout.root

    @property
    def refs(self) -> str:
        """The ``refs/`` directory."""
        return self.layout.refs

    @property
    def fs(self) -> Tree:
        """The confined file operations below the root."""
        return self.layout.fs

    @property
    def durable(self) -> bool:
        """Whether writes are fsynced before they return."""
        return self.layout.durable

    @property
    def lock_timeout(self) -> float:
        """Seconds to wait for a log's lock (less in a server's request: ``Layout``)."""
        return self.layout.lock_timeout

    def close(self) -> None:
        """Drop cached state, close the cached descriptors: now, or when the last call ends."""
        self.in_use.close()

    def _close_now(self) -> None:
        self._cache.clear()
        self._logs.clear()
        self._log_bytes = 0
        self.kept_readers.close()
        self._writer.close()
        self.names.close()
        self.layout.close()

    def log(self, ref: Ref, *, keep: bool = True) -> RefLog:
        """The ref log of ``ref`` (which may not exist yet), kept unless ``keep`` is False.

        Audit and export read every key's: they keep none (but use one kept already).
        """
        log = self._logs.get(ref)
        if log is None and not keep:
            return RefLog(self.layout, self._blobs, self.layout.log_path(ref, keep=False), ref)
        if log is None:
            if len(self._logs) >= CACHE_MAX_ENTRIES or self._log_bytes >= KEY_BYTES_CACHED:
                self._logs.clear()
                self._log_bytes = 0
            self._log_bytes += len(ref.key) + len(ref.namespace)  # names may be 4 KiB each
            log = self._logs[ref] = RefLog(self.layout, self._blobs, self.layout.log_path(ref), ref)
        return log

    def log_path(self, ref: Ref) -> str:
        """The ref log file of ``ref`` (which may not exist yet)."""
        return self.log(ref).path

    def rel(self, path: str) -> str:
        """A log path relative to ``refs/`` (as stored in blob locations)."""
        return self.layout.rel(path)

    def iter_logs(self) -> Iterator[str]:
        """Paths of every ref log in the store, sorted."""
        return self.in_use.stepwise(self.layout.iter_logs())

    def graveyard(self, scope: str, namespace: str) -> Graveyard:
        """The graveyard of a namespace."""
        return self.names.graveyard(scope, namespace)

    def rewrite(
        self,
        path: str,
        transform: Transform,
        *,
        keep_copy: str | None = None,
        gc_held: bool = False,
    ) -> list[Frame] | None:
        """:func:`logrewrite.rewrite` holding ``gc.lock`` shared unless ``gc_held`` (§8)."""
        with self.rewriting(path, transform, keep_copy=keep_copy, gc_held=gc_held) as decision:
            pass
        return decision.frames

    @contextlib.contextmanager
    def rewriting(
        self,
        path: str,
        transform: Transform,
        *,
        keep_copy: str | None = None,
        gc_held: bool = False,
        wait: bool = True,
    ) -> Iterator[logrewrite.Decision]:
        """:func:`logrewrite.rewriting` holding ``gc.lock`` shared unless ``gc_held`` (§8)."""
        self._cache.stale(path)
        with self.layout.gc_locked(shared=True, held=gc_held):
            own = RefLog(self.layout, self._blobs, path)
            with logrewrite.rewriting(own, transform, keep_copy=keep_copy, wait=wait) as decision:
                yield decision

    def rebuild_blob_index(self, *, gc_held: bool = False) -> int:
        """Rebuild the blob index from every log (count its blobs); ``gc.lock`` as gc holds it."""
        with self.layout.gc_locked(shared=False, held=gc_held):
            logs = ((p, self.rel(p)) for p in self.iter_logs())
            return self._blobs.rebuild(logs)

    def check_history_size(self, ref: Ref, new_versions: list[NewVersion]) -> None:
        """Nothing: a directory takes a history of any size in one write."""

    # -- reading -------------------------------------------------------------------------

    def exists(self, ref: Ref) -> bool:
        """True if ``ref``'s log exists (it may hold only a tombstone); a lost one's raises."""
        log = self.log(ref)
        hit = self._cache.get(log.path)  # before the stat, as in :meth:`current`
        if self.fs.exists(log.path):
            return True
        self.names.not_lost(ref, log.path)
        self.names.not_below(ref, log.path, hit and hit[1], None, 0)
        return False

    def keys(self, scope: str, namespace: str, prefix: str, *, verify: bool = False) -> list[str]:
        """Keys ever created in a namespace starting with ``prefix``, byte-wise sorted."""
        return self.names.keys(scope, namespace, prefix, verify=verify)

    def namespaces(self, scope: str) -> list[str]:
        """Namespaces of ``scope`` that hold at least one key, sorted byte-wise."""
        return self.names.namespaces(scope)

    def removed(self, scope: str, namespace: str | None = None) -> list[tuple[str, str, int]]:
        """Each key compaction removed: its namespace's ``GRAVES``, and logs waiting for gc."""
        chosen = self.namespaces(scope) if namespace is None else [namespace]
        found = ((ns, self.names.removed(scope, ns)) for ns in chosen)
        return [(ns, key, top) for ns, keys in found for key, top in sorted(keys.items())]

    def listing(self, scope: str, namespace: str, prefix: str) -> Mapping[str, ListEntry | None]:
        """The newest version of each key ``STATE`` knows, whatever ``prefix`` (one file)."""
        return self.names.known(scope, namespace)

    def remember(self, scope: str, namespace: str, keys: list[str]) -> None:
        """Record in ``STATE`` keys' newest versions (not held by a writer, damaged, put back)."""
        settled.remember(self.names, self.log, self._cache, Ref(scope, namespace, ""), keys)

    settles_all_at_once = False  # each log is fdatasynced on its own

    @property
    def loop_safe_reads(self) -> bool:
        """True: local files; its locks and whole-file reads honour ``castore.waits``."""
        return True

    def current(self, ref: Ref) -> Current:
        """Newest entry and value of ``ref``; served from cache when the log is unchanged."""
        log = self._logs.get(ref) or self.log(ref)  # the hot path: every get
        hit = self._cache.get(log.path)  # before the stat: never newer than what is read
        try:
            st = self.layout.fs.stat(log.path, log.folder, log.name)
        except FileNotFoundError:
            self.names.not_lost(ref, log.path)
            self.names.not_below(ref, log.path, hit and hit[1], None, 0)
            if hit is not None:  # removed by compaction: the grave keeps its versions now
                self._cache.pop(log.path)
            return Current(None, None)
        if hit is not None and hit[0] == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return hit[1]
        self.layout.present = True  # a log: a store is here (FORMAT is made first), seen now
        fd = log.open()
        try:
            st = os.fstat(fd)  # the file opened: a rewrite may have renamed another one in
            tail, st = log.newest(fd, st)
            if tail.entry is None:
                self.names.not_lost(ref, log.path, (st.st_ino, tail.size))
            self.names.not_below(ref, log.path, hit and hit[1], tail.entry, tail.valid_end, fd)
            value = self.blob_reader.value_of(ref, tail.entry, tail.blob, fd)
            current = Current(tail.entry, value, tail.entry_start)
        finally:
            os.close(fd)
        if tail.valid_end == st.st_size:  # no entry: not_below found the key removed
            self._cache.put(log.path, stat_sig(st), current, removed=tail.entry is None)
        return current

    def version(self, ref: Ref, version: int) -> tuple[Entry | None, bytes | None]:
        """The entry of ``version`` and its value (None for a tombstone); (None, None) if absent.

        Raises:
            NotFoundError: the version was dropped by compaction.
            CorruptionError: the value fails verification.
        """
        log = self._logs.get(ref) or self.log(ref)
        hit = self._cache.get(log.path)  # before the log is read, as in :meth:`current`
        lookup = self.kept_readers.entry(self.layout.fs, log.path, version, ref)
        kept, found = lookup.kept, lookup.found
        if lookup.verified and found is not None:
            return found  # read and verified before, from this very file
        fd = kept.fd if kept is not None else -1  # open while ``kept`` is referenced
        if found is not None:
            judge = kept is None or kept.judged is not lookup.state  # once per state of the file
            if judge and self.names.judged(ref, log.path, fd) and kept is not None:
                kept.judged = lookup.state
            value = self.blob_reader.value_of(ref, found[0], found[1], fd)
            self.kept_readers.verified(lookup, version, found[0], value)
            return found[0], value
        if fd < 0:
            self.names.not_lost(ref, log.path)
        entry = log.entry_of(fd, version) if fd >= 0 else None
        if fd >= 0:  # absent: a log without entries lost? an older copy put back?
            if entry is None:
                self.names.not_lost_in(ref, log.path, fd)
            self.names.not_put_back_in(ref, log.path, fd, version if entry else 0)
        if entry is None:
            self._not_cut(ref, hit, version, 0)
            self.names.not_compacted(ref, version)
        return entry, self.blob_reader.value_of(ref, entry, None, fd)

    def history(self, ref: Ref, before: int, limit: int) -> list[Entry]:
        """Entries with version < ``before``, newest first, at most ``limit`` (0 = all)."""
        log = self.log(ref, keep=False)
        hit = self._cache.get(log.path)  # before the log is opened, as in :meth:`current`
        try:
            fd = log.open()
        except FileNotFoundError:
            self.names.not_lost(ref, log.path)
            self._not_cut(ref, hit, before - 1, 0)
            return []
        try:
            found = log.history(fd, before, limit)
            if not found:
                self.names.not_lost_in(ref, log.path, fd)  # a log without entries: lost?
            else:
                self.names.not_put_back_in(ref, log.path, fd, found[0].version)
            self._not_cut(ref, hit, before - 1, found[0].version if found else 0)
            return found
        finally:
            os.close(fd)

    def iter_versions(self, ref: Ref) -> Iterator[tuple[Entry, bytes | None]]:
        """Every entry of a ref, oldest first, with its verified value (None for tombstones)."""
        log = self.log(ref, keep=False)
        hit = self._cache.get(log.path)  # before the log is opened, as in :meth:`current`
        versions = logversions.iter_versions(ref, log, self.names, self.blob_reader, hit and hit[1])
        return self.in_use.stepwise(versions)

    def _not_cut(self, ref: Ref, hit: tuple[Sig, Current] | None, want: int, got: int) -> None:
        """Read the log again (:meth:`current`) if a read found less than this handle knew.

        ``want``/``got``: the highest version the read asked for/found (0: none). A cut
        this handle saw raises; a version simply absent (an import started higher) passes.
        """
        known = hit[1].entry if hit is not None else None
        if known is not None and got < min(want, known.version):
            self.current(ref)

    # -- writing (castore/file/writer.py) -----------------------------------------------

    def write(self, ref: Ref, decide: Decide) -> tuple[Entry | None, list[Entry]]:
        """:meth:`Backend.write`, under the ref's lock.

        Where there is no store yet, ``decide`` first runs on nothing: only a write
        that appends something creates one.
        """
        if not self.layout.present and not self.layout.exists():
            if not decide(None, NothingView()):
                return None, []
            self.layout.create()
        return self._writer.write(self.log(ref), decide)

    def replace(self, ref: Ref, new_versions: list[NewVersion], seen: Entry | None) -> list[Entry]:
        """Replace a ref's whole history with ``new_versions`` (an import's overwrite)."""
        self.layout.create()
        with self.layout.gc_locked(shared=True):  # it moves blobs: gc's rebuild waits (§8)
            return self._writer.replace(self.log(ref), new_versions, seen)

    # -- maintenance (castore/file/check.py, gc.py, compact.py, stats.py) ---------------

    def check(self, *, repair: bool, progress: Progress | None) -> CheckReport:
        """Verify every log, blob and index; with ``repair``, fix what can be fixed.

        No store here: an empty store's report, and nothing is created.
        """
        if not self.layout.exists(walk=True):
            return CheckReport(ok=True, logs=0, entries=0, blobs=0, findings=[])
        from castore.file.check import check

        return check(self, repair=repair, progress=progress)

    def collect_garbage(
        self, *, grace_seconds: float, dry_run: bool, progress: Progress | None
    ) -> GCReport:
        """Free unreferenced blob frames and old crash leftovers; rebuild the blob index.

        No store here: nothing to free, and nothing (not even ``gc.lock``) is created.
        """
        from castore.file.gc import collect_garbage

        return collect_garbage(
            self, grace_seconds=grace_seconds, dry_run=dry_run, progress=progress
        )

    def compact(
        self, retention: Retention, *, dry_run: bool, progress: Progress | None
    ) -> CompactReport:
        """Rewrite each selected log without the versions ``retention`` drops (no store: none)."""
        from castore.file.compact import compact

        return compact(self, retention, dry_run=dry_run, progress=progress)

    def stats(self) -> StoreStats:
        """Counts per scope, read from every log (none where there is no store)."""
        if not self.layout.exists(walk=True):
            return StoreStats(scopes={}, total=ScopeStats())
        from castore.file.stats import stats

        return stats(self)


guard(FileBackend, "current version history write replace exists keys namespaces removed")
guard(FileBackend, "listing remember check stats collect_garbage compact rewrite graveyard")
guard(FileBackend, "rebuild_blob_index")
