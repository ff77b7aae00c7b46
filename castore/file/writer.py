"""The write protocol of the file backend: lock, decide, encode, commit (docs/FORMAT.md §6).

:class:`Writer` runs a decision under a ref log's lock and appends what it
returns; :class:`FileLogView` is what the decision may read meanwhile. A
write is acknowledged only after its frames are appended and fdatasynced
(and, for a new log, its directory fsynced); derived data (blob index, the
read cache) is updated afterwards and may be lost quietly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from castore.backend import Current, Decide, NewVersion
from castore.errors import CastoreError, CorruptionError
from castore.file import fileio, logread, namespaces
from castore.file.blobindex import BlobIndex
from castore.file.blobs import BlobReader
from castore.file.encode import (
    DEDUP_MIN_BYTES,
    carried,
    encode_versions,
    refuse_lower,
    refuse_other,
)
from castore.file.gcshare import GcShare
from castore.file.kept import Held, KeptLogs
from castore.file.layout import Layout
from castore.file.modes import DATA_UNSYNCED, UNSYNCED
from castore.file.namespaces import Namespaces
from castore.file.namesync import (
    clear,
    mark_data,
    marked,
    settle_answered,
    settle_log,
    settle_other,
    sync_file,
    synced,
)
from castore.file.readcache import ReadCache, stat_sig
from castore.file.records import KIND_ENTRY, decode_entry
from castore.file.reflog import RefLog
from castore.keys import Ref
from castore.records import OP_DAMAGED, BlobLoc, Entry

__all__ = ["FileLogView", "Writer"]


class FileLogView:
    """What a decision may read from the locked log: the newest value, older entries."""

    def __init__(
        self,
        reader: BlobReader,
        layout: Layout,
        log: RefLog,
        fd: int,
        tail: logread.Tail,
        known: Current | None,
    ) -> None:
        self._reader, self._layout, self._log = reader, layout, log
        self._ref = log.ref or Ref("", "", "")
        self._fd, self._tail, self._known = fd, tail, known

    def value(self) -> bytes | None:
        """The newest entry's value (None for a tombstone or an empty log)."""
        if self._known is not None:
            return self._known.value
        return self._reader.value_of(self._ref, self._tail.entry, self._tail.blob, self._fd)

    def entry_at(self, version: int) -> Entry | None:
        """The entry of ``version`` in this log, or None (a new log has none: no index made)."""
        return self._log.entry_of(self._fd, version, locked=True) if self._tail.size else None

    def value_at(self, entry: Entry) -> bytes | None:
        """The value of an entry of this log (verified)."""
        return self._reader.value_of(self._ref, entry, None, self._fd)

    def absolute(self, loc: BlobLoc) -> BlobLoc:
        """``loc`` with its log path made relative to ``refs/`` (never ``""``)."""
        return BlobLoc(loc.log or self._layout.rel(self._log.path), loc.offset, loc.length)


class Writer:
    """Appends to ref logs under their locks; shares the backend's read cache."""

    def __init__(
        self,
        layout: Layout,
        names: Namespaces,
        blobs: BlobIndex,
        reader: BlobReader,
        cache: ReadCache,
    ) -> None:
        self.layout, self.names, self.reader = layout, names, reader
        self._blobs, self._cache = blobs, cache
        self._dirs: set[str] = set()  # made (or found): at most NAMESPACES_CACHED
        self._kept = KeptLogs()

    def close(self) -> None:
        """Close the log descriptors kept between writes; forget the directories and blobs."""
        self._kept.close()
        self._dirs = set()
        self._blobs.forget()  # the store's whole blob index, read as writes looked in it

    @staticmethod
    def _ref(log: RefLog) -> Ref:
        if log.ref is None:
            raise ValueError(f"{log.path}: a write needs the log's ref")
        return log.ref

    def _ensure_dir(self, path: str) -> None:
        if path not in self._dirs:
            self.layout.not_gone(path)  # never a new store where this handle's went away
            self.layout.fs.makedirs(path, durable=self.layout.durable)
            if len(self._dirs) >= namespaces.NAMESPACES_CACHED:  # one per namespace: bounded
                self._dirs = set()
            self._dirs.add(path)

    def write(self, log: RefLog, decide: Decide) -> tuple[Entry | None, list[Entry]]:
        """Run ``decide`` on the newest entry under the ref's lock; append what it returns.

        Write protocol (docs/FORMAT.md §6): lock the log; repair a torn tail;
        for a new log, make the key durable in KEYS first; make a marked log's
        name durable (a new log's: fsync its directory); append header (new
        log), blob frames (new content) and entry frames in one write;
        fdatasync the log (durable); then update the derived indexes. Only
        then return.

        Returns:
            (previous newest entry, appended entries; empty when nothing was written).
        """
        try:
            return self._write(log, decide)
        except FileNotFoundError:
            self._dirs.clear()  # made again by the next write if they are gone
            self.layout.not_gone(log.path)  # the store, or a directory of it, went away
            raise

    def _write(self, log: RefLog, decide: Decide) -> tuple[Entry | None, list[Entry]]:
        self._ensure_dir(os.path.dirname(log.path))
        with self._kept.locked(log) as held:
            try:
                tail, known, mode = self._locked_newest(log, held)
            except OSError as exc:  # failed reading it (EMFILE): no empty log left either;
                # a refusal (a lost log, the store gone) leaves what it found
                if not isinstance(exc, CastoreError) and not os.fstat(held.fd).st_size:
                    self.layout.fs.unlink(log.path)
                raise
            written: list[Entry] = []
            try:
                view = FileLogView(self.reader, self.layout, log, held.fd, tail, known)
                decided = decide(tail.entry, view)
                if decided:
                    new = decided if isinstance(decided, list) else [decided]
                    written = self._append(log, held.fd, tail, mode, new)
                elif tail.size and self.layout.durable:  # an answer from the log as it is
                    blob = tail.entry.blob if tail.entry is not None else None
                    other = os.path.join(self.layout.refs, blob.log) if blob and blob.log else ""
                    settle_answered(
                        self.layout.fs, held.fd, log.path, self.layout.root, mode, other
                    )
                return tail.entry, written
            finally:  # a write that did not happen (refused, or failed) leaves no empty log
                if not tail.size and not written and not os.fstat(held.fd).st_size:
                    self.layout.fs.unlink(log.path)

    def _append(
        self, log: RefLog, fd: int, tail: logread.Tail, mode: int, new_versions: list[NewVersion]
    ) -> list[Entry]:
        """Append ``new_versions`` after ``tail`` (the locked log's newest entry); commit."""
        ref, size, previous = self._ref(log), tail.size, tail.entry
        base = self.names.removed_at(ref, fd if size else -1) if previous is None else 0
        share = GcShare(self.layout)
        try:
            own = self.layout.rel(log.path)
            out = encode_versions(
                ref,
                size,
                previous,
                new_versions,
                lambda new: self._existing(new, own, share, fd),
                now=time.time_ns(),
                base=base,
            )
            unmarked = self._before_commit(log, fd, previous, mode, size, out.new_blobs)
            try:  # an import's history (versions > 1): whole or not at all, by rename
                if len(new_versions) > 1:
                    whole = fileio.read_at(fd, 0, size) + out.data
                    log.replace_locked(whole, sync=bool(size) or self.layout.durable)
                else:
                    log.commit(fd, out.data, size)
            except BaseException:  # cut again: a reader of this handle may have cached it
                self._cache.pop(log.path)
                raise
        finally:
            share.close()
        newest = Current(out.entries[-1], new_versions[-1].normalized, out.starts[-1])
        self._after_commit(log.path, fd, out.new_blobs, newest, mode, unmarked)
        return out.entries

    def _before_commit(
        self,
        log: RefLog,
        fd: int,
        previous: Entry | None,
        mode: int,
        size: int,
        new_blobs: list[tuple[str, BlobLoc]],
    ) -> bool:
        """FORMAT.md §6 steps 5 and 6 (each may fail the write, with nothing written).

        KEYS lists a key made live; STATE's P tells list to read the log until a
        reader records its newest version (§5); what a marked log depends on (its
        name, KEYS) is made durable (``namesync``) before a durable write appends
        to it, and a ``durable=False`` write that lists its key or will index a
        value marks the log first (a kill after its append leaves the mark).

        Returns:
            True if the log could not be marked (another user's file): its data is
            then synced before a value in it is indexed.
        """
        ref = self._ref(log)
        listed = False
        if previous is None or not previous.live:
            listed = self.names.list_key(ref, durable=self.layout.durable)
        self.names.state(ref.scope, ref.namespace).pending(ref.key)
        name = marked(mode) or size == 0
        if self.layout.durable:
            if name or mode & DATA_UNSYNCED:
                settle_log(
                    self.layout.fs, log.path, self.layout.root, keys_synced=listed, name=name
                )
            return False
        if (listed or new_blobs) and not mark_data(fd, mode):
            if listed:  # KEYS's new line, made durable rather than marked
                sync_file(self.layout.fs, os.path.join(os.path.dirname(log.path), "KEYS"))
            return True
        return False

    def _locked_newest(self, log: RefLog, held: Held) -> tuple[logread.Tail, Current | None, int]:
        """The locked log's newest entry, what this handle knows of it if still exact, its mode.

        Raises:
            CorruptionError: damage hides the newest version, or the log's header
                names another ref (nothing is written).
        """
        fd, st, ref = held.fd, held.st, self._ref(log)
        # Even when the handle knows this file: a copy over it in place of the same size
        # within one tick of the coarse clock (Linux before 6.13) keeps its signature.
        refuse_other(fd, ref, log.path)
        size = st.st_size
        hit = self._cache.get(log.path)
        if hit is not None and hit[0] == stat_sig(st) and hit[1].entry_start >= 0:
            known = hit[1]  # this handle wrote or read exactly this file last: no re-read
            tail = logread.Tail(size, size, known.entry, None, None, known.entry_start)
            return tail, known, st.st_mode
        if not size:
            self.names.drop_stale_index(ref, log.path)
        try:
            tail = log.locked_tail(fd, size)
            if tail.entry is None:  # a lost log's evidence may remain (FORMAT.md §7)
                self.names.not_lost(ref, log.path, (st.st_ino, size))
            self.names.not_below(ref, log.path, hit and hit[1], tail.entry, tail.valid_end)
            return tail, None, st.st_mode
        except CorruptionError:
            if not size:  # e.g. a lost log's index: leave no empty log behind
                self.layout.fs.unlink(log.path)
            raise

    def _after_commit(
        self,
        path: str,
        fd: int,
        new_blobs: list[tuple[str, BlobLoc]],
        current: Current,
        mode: int,
        unmarked: bool,
    ) -> None:
        """Record derived data of a committed write (blob index, read cache, marks).

        Errors are ignored: the write is committed, and this data is rebuilt when
        needed (FORMAT.md §6 step 8); a failed call would invite a retry that writes the
        version twice. A durable write clears its log's marks; a ``durable=False`` write
        to a log it could not mark (``unmarked``) syncs it before indexing a value there.
        A lost range is not cached: its reader raises.
        """
        self._cache.stale(path)
        own = self.layout.rel(path)
        indexed = [(bytes.fromhex(h), BlobLoc(own, loc.offset, loc.length)) for h, loc in new_blobs]
        try:
            if self.layout.durable:
                clear(fd, mode, UNSYNCED | DATA_UNSYNCED)
            if indexed:
                if unmarked:
                    os.fdatasync(fd)  # another user's log: made durable instead of marked
                self._blobs.add_many(indexed, durable=False)
            st = os.fstat(fd)
            if self.layout.durable and st.st_nlink:  # not a file renamed over (replace_locked)
                synced(st)  # a durable answer from it as it is needs no fdatasync
            if current.entry is None or current.entry.op != OP_DAMAGED:
                self._cache.put(path, stat_sig(st), current)
        except OSError:
            return

    def replace(
        self, log: RefLog, new_versions: list[NewVersion], seen: Entry | None
    ) -> list[Entry]:
        """Replace a ref's whole history with ``new_versions`` (an import's overwrite).

        Blob frames of the old log are carried into the new one (other logs may point at
        them) and indexed at their new offsets before the atomic rename, so every stale
        location hint falls back to the index. The new log is written to a temporary file,
        fsynced, renamed over the old one, and the directory fsynced, under the ref's lock.

        Raises:
            CorruptionError: the old log is damaged (nothing is replaced).
            ConflictError: the new history would take versions back, or the newest
                entry is no longer ``seen`` (nothing is replaced).
        """
        ref = self._ref(log)
        self._ensure_dir(os.path.dirname(log.path))
        with log.locked() as fd:
            old = logread.scan(fd)[1]
            if old.damage:
                start, end = old.damage[0]
                raise CorruptionError(
                    f"{ref}: {log.path} has damaged bytes at offset {start} "
                    f"({end - start} bytes); nothing was replaced; run castore check --repair"
                )
            log.refuse_cut(fd, old, "nothing was replaced")
            refuse_lower(ref, old, new_versions, seen)
            head, moved = carried(ref, old)
            own = self.layout.rel(log.path)
            self._blobs.add_many(
                [(d, BlobLoc(own, loc.offset, loc.length)) for d, loc in moved],
                durable=True,  # before the rename: stale hints must find them, after a crash too
            )
            known = {d.hex(): loc for d, loc in moved}
            grave = self.names.graveyard(ref.scope, ref.namespace).version_of(ref.key)
            now = time.time_ns()
            out = encode_versions(
                ref, len(head), None, new_versions, lambda _: None, now=now, base=grave, known=known
            )
            # before the new log is in place, as a write's step 5 (a lost KEYS refilled)
            self.names.list_key(ref, durable=self.layout.durable)  # replace_locked settles KEYS
            self.names.state(ref.scope, ref.namespace).pending(ref.key)
            frames = log.replace_locked(head + out.data)
            self._blobs.add_many(
                [
                    (bytes.fromhex(h), BlobLoc(own, loc.offset, loc.length))
                    for h, loc in out.new_blobs
                ],
                durable=False,
            )
            self._cache.stale(log.path)
            return [decode_entry(f.payload) for f in frames if f.kind == KIND_ENTRY]

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
                if self.reader.read_at(here, fd, new.digest_hex) is not None:
                    if here.log and self.layout.durable:  # durable before it is pointed at
                        settle_other(self.layout.fs, os.path.join(self.layout.refs, here.log))
                    return here
            except (CorruptionError, FileNotFoundError):
                continue
        return None
