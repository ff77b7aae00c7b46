"""One ref log: its lock, its tail, scans, appends, rewrites and its version index.

A :class:`RefLog` is one ``<key-id>.log`` file of a store (docs/FORMAT.md
§3-§8), with reading and writing side by side:

* Readers take no lock on the fast path: they read the last frame backwards
  from the size they observed (:mod:`castore.file.logread`). A torn or
  half-visible tail makes them wait for the writer's lock (shared) and
  retry; only a tail still bad under the lock costs a full scan, which
  tells a torn tail (a crash: the previous version is current) from damage
  (the newest version is unknown: :class:`~castore.errors.CorruptionError`).
* Writers hold the log's ``flock``: a torn tail is quarantined, then cut;
  the frames of one write are appended and fdatasynced (the commit point),
  or cut again if that fails.
* Rewrites (compaction, gc, repair, an import's overwrite) replace the file under the lock.
* ``<key-id>.vix``, the log's version index (:mod:`castore.file.versionindex`),
  is derived: it makes history pages and old versions cost a page, not a scan.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from castore import exits
from castore.errors import CorruptionError, LockTimeoutError
from castore.file import cuts, encode, fileio, logread, namesync, versionindex
from castore.file.blobindex import BlobIndex
from castore.file.damage import REPAIR_HINT, damaged_error, disorder_error
from castore.file.frames import BEFORE_UNKNOWN, Frame, LogBytes, scan_frames
from castore.file.layout import Layout
from castore.file.logread import Tail
from castore.file.modes import DATA_UNSYNCED
from castore.file.records import KIND_ENTRY, decode_entry
from castore.file.rewrite import replace_with
from castore.keys import Ref
from castore.records import Entry, VersionRanges

__all__ = ["RefLog"]

_APPEND = os.O_RDWR | os.O_CREAT | os.O_APPEND
# A version index that cannot be written (derived data): a read-only store, a full disk.
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


class RefLog:
    """One ref log file of a store, read without a lock and written under its ``flock``.

    Cheap to make (a handle caches one per ref). ``ref`` is None for a log
    found by walking the store (check, gc); errors then name its path.
    """

    __slots__ = ("blobs", "folder", "layout", "name", "path", "ref")

    def __init__(self, layout: Layout, blobs: BlobIndex, path: str, ref: Ref | None = None) -> None:
        self.layout, self.blobs, self.path, self.ref = layout, blobs, path, ref
        self.folder, _, self.name = path.rpartition("/")  # a get's stat, without splitting

    @property
    def what(self) -> str:
        """What errors call this log: its ref, else its path."""
        return str(self.ref) if self.ref is not None else self.path

    @property
    def vix_path(self) -> str:
        """The path of this log's version index."""
        return versionindex.vix_path(self.path)

    # -- reading (no lock) ---------------------------------------------------------------

    def open(self) -> int:
        """A read-only descriptor on the log (never blocking: :meth:`Tree.open`).

        Raises:
            FileNotFoundError, UnsafePathError: no log; not a regular file in its place.
            CorruptionError: its header names another ref (:func:`encode.refuse_other`).
        """
        fd = self.layout.fs.open(self.path, os.O_RDONLY)
        try:
            if self.ref is not None:
                encode.refuse_other(fd, self.ref, self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def newest(self, fd: int, st: os.stat_result) -> tuple[Tail, os.stat_result]:
        """The newest intact entry, waiting for a writer if the tail is not one yet.

        Returns:
            The tail and the file status it was read at.

        Raises:
            CorruptionError: the newest version is unknown (FORMAT.md §7).
        """
        tail = logread.read_tail(fd, st.st_size)
        if tail is not None and tail.entry is not None:
            return self.settle(fd, tail), st
        # Torn, still being written, or no entry yet: wait for the writer, then
        # re-read, and make sure nothing hides a newer version.
        with fileio.locked(fd, self.path, shared=True, timeout=self.layout.lock_timeout):
            st = os.fstat(fd)
            return self.settled_tail(fd, st.st_size, locked=True), st

    def settled_tail(self, fd: int, size: int = -1, *, locked: bool = False) -> Tail:
        """The newest intact entry of the log on ``fd``, once nothing can hide a newer one.

        The common case is one read of the tail. A tail that is not an entry
        costs a scan: damage after the newest intact entry, or a version
        index that records versions the log no longer holds (acknowledged
        bytes were cut off), means the newest version is unknown.

        Raises:
            CorruptionError: the newest version is unknown (FORMAT.md §7).
        """
        size = os.fstat(fd).st_size if size < 0 else size
        return self.settle(fd, logread.read_tail(fd, size), locked=locked)

    def settle(self, fd: int, tail: Tail | None, *, locked: bool = False) -> Tail:
        """:meth:`settled_tail` given the tail already read (None: not an intact frame).

        ``locked``: the caller holds the log's lock (shared or exclusive).
        Without it, evidence of cut bytes is confirmed under the shared lock
        first: a write that completed after this read, and was indexed by
        another reader meanwhile, is not a cut.

        Raises:
            CorruptionError: the newest version is unknown (FORMAT.md §7).
        """
        if tail is None or tail.before == BEFORE_UNKNOWN:  # torn, or damage before it
            tail, log = logread.scan(fd)
            bad = logread.damage_after(log, tail)
            if bad is not None:
                raise damaged_error(self.path, *bad, self.what)
        if tail.entry is not None and tail.before >= tail.entry.version:  # FORMAT.md §7
            raise disorder_error(self.path, tail.entry.version, tail.before, self.what)
        newest = tail.entry.version if tail.entry is not None else 0
        cut = self._cut_evidence(fd, newest, tail.valid_end)
        if cut and not locked:
            with fileio.locked(fd, self.path, shared=True, timeout=self.layout.lock_timeout):
                return self.settled_tail(fd, locked=True)
        if cut:
            raise cuts.cut_error(self.what, self.path, cut, REPAIR_HINT)
        return tail

    def _cut_evidence(self, fd: int, newest: int, end: int) -> int:
        return cuts.cut_evidence(self.layout.fs, self.path, fd, newest, end)

    def refuse_cut(self, fd: int, log: LogBytes, outcome: str) -> None:
        """Raise ``CorruptionError`` (naming ``outcome``) if versions were cut off ``log``."""
        end = log.frames[-1].end if log.frames else 0
        cut = self._cut_evidence(fd, versionindex.newest_version(log.frames), end)
        if cut:
            raise cuts.cut_error(self.what, self.path, cut, f"{outcome}; {REPAIR_HINT}")

    def version_index(self, fd: int, want: int) -> int:
        """A descriptor on the version index, caught up to ``want``; -1 if unusable."""
        try:
            return versionindex.open_caught_up(self.layout.fs, self.vix_path, fd, want)
        except OSError as exc:
            if exc.errno not in _UNWRITABLE:
                raise  # a read-only store or a full disk falls back to scans; I/O errors surface
        try:
            return self.layout.fs.open(self.vix_path, os.O_RDONLY)
        except FileNotFoundError:
            return -1

    def entry_of(self, fd: int, version: int, *, locked: bool = False) -> Entry | None:
        """The entry of ``version`` (or of a damaged range holding it): index, else scan.

        ``locked``: the caller holds the log's lock (a writer's view).

        Raises:
            NotFoundError: the version was dropped by compaction (names the policy).
            CorruptionError: the version lies in damaged bytes.
        """
        vfd = self.version_index(fd, version)
        offset = None
        if vfd >= 0:
            try:
                offset = versionindex.lookup(vfd, version)
            finally:
                os.close(vfd)
        # Markers (compacted, absent) come from derived data: the scan below confirms them.
        if offset is not None and offset not in (versionindex.COMPACTED, versionindex.ABSENT):
            found = logread.entry_at(fd, offset)
            if found is not None and found[0].version == version:
                return found[0]
        return self._entry_by_scan(fd, version, locked=locked)

    def _entry_by_scan(
        self, fd: int, version: int, *, locked: bool = False, retry: bool = True
    ) -> Entry | None:
        log = logread.scan(fd)[1]
        found = logread.entry_in(log, version, self.what, self.path)
        if found is not None:
            return found
        if not retry or version <= versionindex.newest_version(log.frames):  # never in this log
            return None
        newest = self.settled_tail(fd, locked=locked).entry  # a proven cut raises, never None
        if newest is not None and newest.version >= version and not locked:  # written since
            return self._entry_by_scan(fd, version, retry=False)
        return None

    def history(self, fd: int, before: int, limit: int) -> list[Entry]:
        """Entries with version < ``before``, newest first, at most ``limit`` (0 = all).

        Compacted versions are skipped. Cost is proportional to the page, not
        to the length of the history, once the version index has caught up
        with the log (FORMAT.md §5); otherwise the log is scanned.
        """
        newest = self.settled_tail(fd).entry
        if newest is None:
            return []
        high = min(before - 1, newest.version)
        vfd = self.version_index(fd, high)
        if vfd < 0:
            return logread.history_by_scan(fd, before, limit)
        try:
            found = self._history_by_index(fd, vfd, high, limit)
        finally:
            os.close(vfd)
        return logread.history_by_scan(fd, before, limit) if found is None else found

    def _history_by_index(self, fd: int, vfd: int, high: int, limit: int) -> list[Entry] | None:
        """Entries from ``high`` down through the version index; None: the log must decide."""
        out: list[Entry] = []
        compacted: VersionRanges | None = None
        while high >= 1 and not (limit and len(out) >= limit):
            low = max(1, high - max(limit, 64) + 1)
            offsets = versionindex.lookup_range(vfd, low, high)
            for version in range(high, low - 1, -1):
                offset = offsets.get(version)
                if offset == versionindex.COMPACTED:
                    if compacted is None:
                        compacted = logread.compacted_versions(fd)
                    if version in compacted:  # confirmed by the log's C frame
                        continue
                    return None
                if offset == versionindex.ABSENT:  # rare (imports): let the log decide
                    return None
                found = logread.entry_at(fd, offset) if offset is not None else None
                if found is None or found[0].version != version:
                    return None
                out.append(found[0])
                if limit and len(out) >= limit:
                    break
            high = low - 1
        return out

    # -- writing (under the lock) --------------------------------------------------------

    @exits.contextmanager
    def locked(self, flags: int = _APPEND, timeout: float | None = None) -> Iterator[int]:
        """Hold the log's exclusive lock on a descriptor opened with ``flags``.

        Raises:
            LockTimeoutError: the lock stayed taken for ``timeout`` (the lock timeout).
        """
        fs = self.layout.fs
        timeout = self.layout.lock_timeout if timeout is None else timeout
        pauses = fileio.WRITER_PAUSES  # a log it creates is marked (namesync)
        try:
            with fs.open_locked(
                self.path, flags, timeout=timeout, pauses=pauses, unsynced=True
            ) as fd:
                yield fd
        except LockTimeoutError as exc:  # a user names keys, not their logs' hashed paths
            if exc.path == self.path and not exc.ref and self.ref is not None:
                exc.ref = str(self.ref)
            raise

    def locked_tail(self, fd: int, size: int) -> Tail:
        """The newest entry of the locked log; a torn tail is quarantined, then cut.

        Raises:
            CorruptionError: damage follows the newest intact entry: the
                newest version is unknown, so nothing is written or cut.
        """
        found = logread.read_tail(fd, size)
        if (
            found is not None
            and found.valid_end == size
            and found.entry is not None
            and found.before < found.entry.version
            and not self._cut_evidence(fd, found.entry.version, size)  # the common case: a stat
        ):
            return found
        try:
            tail = self.settle(fd, found, locked=True)
        except CorruptionError as exc:
            raise CorruptionError(f"{exc.detail}; nothing was written") from None
        if tail.valid_end < size:  # a crash cut an append short (FORMAT.md §7)
            torn = fileio.read_at(fd, tail.valid_end, size - tail.valid_end)
            self.layout.quarantine_bytes(self.path, tail.valid_end, torn)
            os.ftruncate(fd, tail.valid_end)
        return tail._replace(size=tail.valid_end)

    def commit(self, fd: int, data: bytes, size: int) -> None:
        """Append the frames of one write and fdatasync them: the commit point (§6 step 7).

        On failure the appended bytes are cut again before the error is raised:
        the write was not acknowledged, and no reader may see it.
        """
        fs = self.layout.fs
        fileio.commit(
            fd, data, size, durable=self.layout.durable, forget=lambda: fs.unlink(self.vix_path)
        )

    def replace_locked(
        self, data: bytes, *, repair: bool = False, sync: bool = True
    ) -> list[Frame]:
        """Put ``data`` in place of the locked log atomically; rebuild the version index.

        The old index goes first: one that outlived a crash after the rename
        would name versions the new log dropped (check reads that as lost bytes).
        Not for a ``repair``: its index may be the only evidence of versions cut
        off the old log, and the repaired log records every version it names.
        ``sync`` False: a ``durable=False`` write's frames in place of an empty log
        (``castore.file.writer``): nothing synced, the marks kept.
        """
        fs = self.layout.fs
        if not repair:
            with contextlib.suppress(FileNotFoundError):
                fs.unlink(self.vix_path)
        old_mode = fs.stat(self.path).st_mode
        # The new log's data is durable (replace_with), its name once any fsync of its
        # directory comes (another writer's): first what its entries depend on, as for a
        # durable write: the other logs holding their values, the KEYS line listing its
        # key, and the namespace's directories if KEYS is marked or missing (a durable=False
        # write made it, or it was lost); a durable rewrite also puts an unmarked log in place.
        for other in _pointed_into(data, self.layout.rel(self.path)) if sync else ():
            with contextlib.suppress(FileNotFoundError):  # a stale hint: the index finds it
                namesync.settle_other(fs, os.path.join(self.layout.refs, other))
        if sync:
            namesync.settle_log(fs, self.path, self.layout.root, keys_synced=False, name=False)
        mark = bool(old_mode & DATA_UNSYNCED)
        fd = replace_with(fs, self.path, data, data_mark=mark, sync=sync)
        try:
            if self.layout.durable:
                fs.fsync_dir(os.path.dirname(self.path))
                namesync.clear(fd, os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        fileio.failpoint("rewrite-after-rename")
        frames = list(scan_frames(data))
        fs.atomic_write(self.vix_path, versionindex.rebuild(frames), durable=False)
        return frames


def _pointed_into(data: bytes, own: str) -> set[str]:
    """The other logs (below ``refs/``) whose values the entries of ``data`` point at."""
    entries = (decode_entry(f.payload) for f in scan_frames(data) if f.kind == KIND_ENTRY)
    return {e.blob.log for e in entries if e.blob is not None and e.blob.log not in ("", own)}
