"""The file backend: ref logs, blob frames and indexes under one directory.

:class:`FileBackend` is what :class:`castore.Store` calls to read the newest
entry of a ref and to append under the ref's lock; it knows the bytes
(docs/FORMAT.md) but not Dagu's semantics (those live in ``store.py``).
Reading lives in ``fileread.py``. A second backend (PostgreSQL, a
coordinator) implements the same calls: ``current``, ``write``, ``keys``,
``version``, ``history`` and ``close``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator

from castore.backend import Current, Decide, NewVersion, Progress
from castore.errors import ConflictError, CorruptionError
from castore.file import fileio, reflog, versionindex
from castore.file.frames import LogBytes, encode_frame
from castore.file.records import (
    FORMAT_VERSION,
    KIND_BLOB,
    KIND_ENTRY,
    KIND_HEADER,
    Header,
    decode_entry,
    encode_blob,
    encode_record,
)
from castore.file.rewrite import Rewriter, replace_with
from castore.keys import Ref
from castore.records import OP_DAMAGED, OP_DELETE, BlobLoc, Entry
from castore.reports import CheckReport, CompactReport, GCReport, Retention, StoreStats

__all__ = ["DEDUP_MIN_BYTES", "FileBackend", "FileLogView"]

DEDUP_MIN_BYTES = 256  # smaller values are not deduplicated across logs (FORMAT.md §5)


def _sig(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _carried(ref: Ref, old: LogBytes) -> tuple[bytes, list[tuple[bytes, BlobLoc]]]:
    """A replacement log's start: a header, then every blob frame of the old log.

    Other logs may point at those blobs. Returns the bytes and each blob's
    digest with its new location in this log.
    """
    header = Header(format=FORMAT_VERSION, scope=ref.scope, namespace=ref.namespace, key=ref.key)
    parts = [encode_frame(KIND_HEADER, encode_record(header))]
    offset = len(parts[0])
    moved: list[tuple[bytes, BlobLoc]] = []
    for frame in old.frames:
        if frame.kind == KIND_BLOB:
            raw = encode_frame(KIND_BLOB, frame.payload)
            moved.append((frame.payload[:32], BlobLoc("", offset, len(raw))))
            parts.append(raw)
            offset += len(raw)
    return b"".join(parts), moved


def _refuse_lower(ref: Ref, old: LogBytes, new_versions: list[NewVersion]) -> None:
    """An overwrite may not take a key's versions back: the next one must be new.

    Raises:
        ConflictError: the replacement's newest version is below the old one's.
    """
    entries = [decode_entry(f.payload) for f in old.frames if f.kind == KIND_ENTRY]
    newest = max((e.version for e in entries), default=0)
    top = max((p.version for p in new_versions), default=0)
    if top < newest:
        raise ConflictError(
            str(ref), None, newest, f"the import's newest version {top} is below it"
        )


def _next_entry(
    ref: Ref, new: NewVersion, previous: Entry | None, base: int, blob: BlobLoc | None, now: int
) -> Entry:
    """The entry ``new`` becomes after ``previous`` (``base``: the floor of a new key).

    Raises:
        ConflictError: an import's explicit version would repeat a version.
    """
    floor = previous.version if previous is not None else base
    if new.version and new.version <= floor:
        raise ConflictError(str(ref), None, floor, f"version {new.version} would repeat a version")
    # Times never decrease within a ref, even if the wall clock steps back,
    # so history and audit order by time equals version order.
    not_before = previous.time_ns + 1 if previous is not None else 0
    stamp = new.time_ns or max(now, not_before)
    created = 0
    if new.op == OP_DAMAGED:
        created = new.created_ns  # as recorded (an import of a lost version)
    elif new.op != OP_DELETE:
        live_before = previous is not None and previous.live
        created = new.created_ns or (previous.created_ns if previous and live_before else stamp)
    return Entry(
        version=new.version or floor + 1,
        op=new.op,
        time_ns=stamp,
        hash=new.digest_hex,
        size=len(new.normalized) if new.normalized is not None else 0,
        blob=blob,
        created_ns=created,
        audit=new.audit,
        damaged_from=new.damaged_from,
    )


class FileLogView:
    """What a decision may read from the locked log: the newest value, older entries."""

    def __init__(
        self, backend: FileBackend, ref: Ref, fd: int, tail: reflog.Tail, known: Current | None
    ) -> None:
        self._backend = backend
        self._ref = ref
        self._fd = fd
        self._tail = tail
        self._known = known

    def value(self) -> bytes | None:
        """The newest entry's value (None for a tombstone or an empty log)."""
        if self._known is not None:
            return self._known.value
        return self._backend.blob_reader.value_of(
            self._ref, self._tail.entry, self._tail.blob, self._fd
        )

    def entry_at(self, version: int) -> Entry | None:
        """The entry of ``version`` in this log, or None."""
        return self._backend._entry_at(self._ref, self._fd, version)

    def value_at(self, entry: Entry) -> bytes | None:
        """The value of an entry of this log (verified)."""
        return self._backend.blob_reader.value_of(self._ref, entry, None, self._fd)

    def absolute(self, loc: BlobLoc) -> BlobLoc:
        """``loc`` with its log path made relative to ``refs/`` (never ``""``)."""
        own = self._backend.rel(self._backend.log_path(self._ref))
        return BlobLoc(loc.log or own, loc.offset, loc.length)


class FileBackend(Rewriter):
    """The file backend: reads and rewrites (base classes) plus the write protocol.

    Constructed like :class:`castore.fileread.FileReader`. Safe for many
    processes and threads (flock per ref log, on a descriptor per call).
    """

    # -- writing ------------------------------------------------------------------

    def _ensure_dir(self, path: str) -> None:
        if path not in self._dirs:
            self.fs.makedirs(path, durable=self.durable)
            self._dirs.add(path)

    def write(self, ref: Ref, decide: Decide) -> tuple[Entry | None, list[Entry]]:
        """Run ``decide`` on the newest entry under the ref's lock; append what it returns.

        Write protocol (docs/FORMAT.md §6): lock the log; repair a torn tail;
        for a new log, make the key durable in KEYS first; append header (new
        log), blob frames (new content) and entry frames in one write;
        fdatasync the log (durable); for a new log, fsync its directory; then
        update the derived indexes. Only then return.

        Returns:
            (previous newest entry, appended entries; empty when nothing was written).
        """
        path = self.log_path(ref)
        nsdir = os.path.dirname(path)
        self._ensure_dir(nsdir)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        with self.fs.open_locked(path, flags, timeout=self.lock_timeout) as fd:
            st = os.fstat(fd)
            size = st.st_size
            hit = self._cache.get(path)
            known = None
            if hit is not None and hit[0] == _sig(st) and hit[1].entry_start >= 0:
                known = hit[1]  # this handle wrote or read exactly this file last: no re-read
                tail = reflog.Tail(size, size, known.entry, None, None, known.entry_start)
            else:
                tail = self._locked_tail(ref, fd, path, size)
                size = tail.size
            previous = tail.entry
            decided: NewVersion | list[NewVersion] | None = None
            try:
                decided = decide(previous, FileLogView(self, ref, fd, tail, known))
            finally:
                if size == 0 and not decided:
                    self.fs.unlink(path)  # leave no empty log behind a write that did not happen
            if not decided:
                return previous, []
            new_versions = decided if isinstance(decided, list) else [decided]
            base = self._first_floor(ref, fd, size) if previous is None else 0
            with self._gc_shared() as share:
                data, entries, starts, new_blobs = self._frames(
                    ref, path, size, previous, new_versions, share, base=base, fd=fd
                )
                if previous is None:  # the key's first entry: KEYS first (FORMAT.md §6)
                    index = self.key_index(ref.scope, ref.namespace)
                    if ref.key not in index:
                        index.add(ref.key, ref.namespace, durable=self.durable)
                self._commit(fd, data, size)
            # Committed. A new log's directory entry must be durable too; what follows
            # it is derived data that may be lost quietly and is rebuilt on demand.
            if size == 0 and self.durable:
                self._sync_new_log_dir(ref, nsdir, entries[-1].version)
            self._after_commit(
                path, fd, new_blobs, Current(entries[-1], new_versions[-1].normalized, starts[-1])
            )
            return previous, entries

    def _first_floor(self, ref: Ref, fd: int, size: int) -> int:
        """The version a key without entries continues after (its removed life, if any).

        Raises:
            CorruptionError: its ``GRAVES`` record is damaged beyond its twin.
        """
        base = self.graveyard(ref.scope, ref.namespace).version_of(ref.key)
        done = self.compaction_of(fd) if size else None
        if done is not None:  # the removed key's log still names its versions
            base = max([base, *(high for _, high in done.versions)])
        return base

    def _commit(self, fd: int, data: bytes, size: int) -> None:
        """Append the frames of one write and fdatasync them: the commit point (§6 step 6).

        On failure the appended bytes are cut again before the error is raised:
        the write was not acknowledged, and no reader may see it.
        """
        fileio.failpoint("before-append")
        try:
            fileio.append(fd, data, durable=self.durable)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # the bytes after ``size`` are ours alone (locked)
            raise
        fileio.failpoint("after-append")

    def _sync_new_log_dir(self, ref: Ref, nsdir: str, version: int) -> None:
        """Fsync the directory of a new log; a failure says the version was written."""
        try:
            self.fs.fsync_dir(nsdir)
        except OSError as exc:  # after the commit point: say so, never "failed"
            raise OSError(
                exc.errno,
                f"{ref} version {version} was written and is visible, "
                f"but syncing its new log's directory failed: {exc.strerror}",
            ) from exc

    def _after_commit(
        self, path: str, fd: int, new_blobs: list[tuple[str, BlobLoc]], current: Current
    ) -> None:
        """Record derived data of a committed write (blob index, read cache).

        Errors are ignored: the write is committed, and this data is rebuilt
        when needed (FORMAT.md §6 step 8); a failed call would invite a retry
        that writes the version twice.
        """
        self._cache.pop(path, None)
        own = self.rel(path)
        indexed = [(bytes.fromhex(h), BlobLoc(own, loc.offset, loc.length)) for h, loc in new_blobs]
        try:
            if indexed:
                self._blobs.add_many(indexed, durable=False)
            self._cache[path] = (_sig(os.fstat(fd)), current)
        except OSError:
            return

    def _locked_tail(self, ref: Ref, fd: int, path: str, size: int) -> reflog.Tail:
        """The newest entry of the locked log; a torn tail is quarantined, then cut.

        Raises:
            CorruptionError: damage follows the newest intact entry: the
                newest version is unknown, so nothing is written or cut.
        """
        found = reflog.read_tail(fd, size)
        if found is not None and found.valid_end == size and found.entry is not None:
            return found
        try:
            tail = self.settle(fd, path, str(ref), found)
        except CorruptionError as exc:
            raise CorruptionError(f"{exc.detail}; nothing was written") from None
        if tail.valid_end < size:  # a crash cut an append short (FORMAT.md §7)
            torn = fileio.read_at(fd, tail.valid_end, size - tail.valid_end)
            self.quarantine_bytes(path, tail.valid_end, torn)
            os.ftruncate(fd, tail.valid_end)
        return tail._replace(size=tail.valid_end)

    def replace(self, ref: Ref, new_versions: list[NewVersion]) -> list[Entry]:
        """Replace a ref's whole history with ``new_versions`` (an import's overwrite).

        Blob frames of the old log are carried into the new one (other logs
        may point at them) and indexed at their new offsets before the
        atomic rename, so every stale location hint falls back to the index.
        The new log is written to ``<key-id>.log.<pid>.tmp``, fsynced, renamed
        over the old one, and the directory fsynced, all under the ref's lock.
        """
        path = self.log_path(ref)
        nsdir = os.path.dirname(path)
        self._ensure_dir(nsdir)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        with self.fs.open_locked(path, flags, timeout=self.lock_timeout) as fd:
            old = reflog.scan(fd)[1]
            if old.damage:
                start, end = old.damage[0]
                raise CorruptionError(
                    f"{ref}: {path} has damaged bytes at offset {start} ({end - start} bytes); "
                    "nothing was replaced; run castore check --repair"
                )
            _refuse_lower(ref, old, new_versions)
            head, moved = _carried(ref, old)
            own = self.rel(path)
            self._blobs.add_many(
                [(d, BlobLoc(own, loc.offset, loc.length)) for d, loc in moved],
                durable=self.durable,  # before the rename: stale hints must find them
            )
            known = {d.hex(): loc for d, loc in moved}
            grave = self.graveyard(ref.scope, ref.namespace).version_of(ref.key)
            data, _, _, new_blobs = self._frames(
                ref, path, len(head), None, new_versions, lambda: False, known=known, base=grave
            )
            with contextlib.suppress(FileNotFoundError):
                self.fs.unlink(versionindex.vix_path(path))  # never outlives the old log
            replace_with(self.fs, path, head + data, durable=self.durable)
            if self.durable:
                self.fs.fsync_dir(nsdir)
            self._blobs.add_many(
                [(bytes.fromhex(h), BlobLoc(own, loc.offset, loc.length)) for h, loc in new_blobs],
                durable=False,
            )
            nfd = self.fs.open(path, os.O_RDONLY)
            try:
                frames = reflog.scan(nfd)[1].frames
            finally:
                os.close(nfd)
            self.fs.atomic_write(
                versionindex.vix_path(path), versionindex.rebuild(frames), durable=False
            )
            entries = [decode_entry(f.payload) for f in frames if f.kind == KIND_ENTRY]
            index = self.key_index(ref.scope, ref.namespace)
            if ref.key not in index:
                index.add(ref.key, ref.namespace, durable=self.durable)
            self._cache.pop(path, None)
            return entries

    @contextlib.contextmanager
    def _gc_shared(self) -> Iterator[Callable[[], bool]]:
        """Yield a function that takes ``gc.lock`` shared on first call, if it is free.

        A blob frame in another log may only be referenced while holding it,
        so that gc (which holds it exclusively) never drops a blob that a
        writer is about to reference (FORMAT.md §8). Never waits for gc: if
        gc holds the lock, the function returns False and the writer stores
        a fresh copy. Only writes that reuse another log's blob pay for it.
        """
        state: list[int] = []  # [fd] once taken

        def share() -> bool:
            if state:
                return state[0] >= 0
            fd = self.fs.open(os.path.join(self.root, "gc.lock"), os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = -1
            state.append(fd)
            return fd >= 0

        try:
            yield share
        finally:
            if state and state[0] >= 0:
                os.close(state[0])  # closing releases the flock

    def _existing(
        self, new: NewVersion, own: str, share: Callable[[], bool], fd: int
    ) -> BlobLoc | None:
        """A verified ``B`` frame holding the new version's value that this write may point at.

        The hint (the previous version's blob, or a rollback target) comes
        first. Values under :data:`DEDUP_MIN_BYTES` are not looked up in the
        blob index: an index record would cost more than the copy it saves.
        """
        candidates = [new.hint]
        if new.normalized is not None and len(new.normalized) >= DEDUP_MIN_BYTES:
            candidates.extend(self._blobs.lookup(bytes.fromhex(new.digest_hex)))
        for loc in candidates:
            if loc is None or (loc.log != own and not share()):
                continue
            here = BlobLoc("" if loc.log == own else loc.log, loc.offset, loc.length)
            try:
                if self.blob_reader.read_at(here, fd, new.digest_hex) is not None:
                    return here
            except CorruptionError:
                continue
        return None

    def _frames(
        self,
        ref: Ref,
        path: str,
        size: int,
        previous: Entry | None,
        new_versions: list[NewVersion],
        share: Callable[[], bool],
        known: dict[str, BlobLoc] | None = None,
        base: int = 0,
        fd: int = -1,
    ) -> tuple[bytes, list[Entry], list[int], list[tuple[str, BlobLoc]]]:
        """Encode the frames of one write; return bytes, entries, their offsets, new blobs."""
        parts: list[bytes] = []
        offset = size
        if size == 0:
            header = Header(
                format=FORMAT_VERSION, scope=ref.scope, namespace=ref.namespace, key=ref.key
            )
            parts.append(encode_frame(KIND_HEADER, encode_record(header)))
            offset += len(parts[-1])
        own = self.rel(path)
        now = time.time_ns()
        entries: list[Entry] = []
        starts: list[int] = []
        new_blobs: list[tuple[str, BlobLoc]] = []
        written: dict[str, BlobLoc] = dict(known or {})
        for new in new_versions:
            blob = None
            if new.normalized is not None:
                blob = written.get(new.digest_hex) or self._existing(new, own, share, fd)
                if blob is None:
                    payload = encode_blob(bytes.fromhex(new.digest_hex), new.normalized)
                    parts.append(encode_frame(KIND_BLOB, payload))
                    blob = BlobLoc("", offset, len(parts[-1]))
                    offset += len(parts[-1])
                    written[new.digest_hex] = blob
                    if len(new.normalized) >= DEDUP_MIN_BYTES:
                        new_blobs.append((new.digest_hex, blob))
            entry = _next_entry(ref, new, previous, base, blob, now)
            parts.append(encode_frame(KIND_ENTRY, encode_record(entry)))
            starts.append(offset)
            offset += len(parts[-1])
            entries.append(entry)
            previous = entry
        return b"".join(parts), entries, starts, new_blobs

    # -- maintenance (castore/file/check.py, gc.py, compact.py, stats.py) ---------------

    def check(self, *, repair: bool, progress: Progress | None) -> CheckReport:
        """Verify every log, blob and index; with ``repair``, fix what can be fixed."""
        from castore.file.check import check

        return check(self, repair=repair, progress=progress)

    def collect_garbage(
        self, *, grace_seconds: float, dry_run: bool, progress: Progress | None
    ) -> GCReport:
        """Free unreferenced blob frames and old crash leftovers; rebuild the blob index."""
        from castore.file.gc import collect_garbage

        return collect_garbage(
            self, grace_seconds=grace_seconds, dry_run=dry_run, progress=progress
        )

    def compact(
        self, retention: Retention, *, dry_run: bool, progress: Progress | None
    ) -> CompactReport:
        """Rewrite every selected log without the versions ``retention`` drops."""
        from castore.file.compact import compact

        return compact(self, retention, dry_run=dry_run, progress=progress)

    def stats(self) -> StoreStats:
        """Counts per scope, read from every log."""
        from castore.file.stats import stats

        return stats(self)
