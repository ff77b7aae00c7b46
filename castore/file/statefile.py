"""The state index of one namespace, ``STATE``: each key's newest version, for ``list``.

Derived data (docs/FORMAT.md §5): a frames file that says, per key, what its
newest version is, so that listing reads one file instead of every key's
log. It is never fsynced and is trusted only under these rules:

* Its first frame, ``T``, names the boot it was written in and its namespace:
  after a reboot, unsynced records may have been lost, so a reader trusts
  nothing of a file from another boot (nor of another namespace's file).
* Every change to a key's log appends ``P`` (pending: the key) first, under
  the log's lock. A key whose last record is ``P`` (changed since it was
  last recorded, or a change in flight) or that has no record is read from
  its log. A process crash keeps every record it appended (the page cache
  survives it).
* A reader that read a key's log while holding the log's *shared* lock (no
  change in flight) appends ``S`` (settled: the key's newest entry): that is
  how the file fills. Writers do not (it would cost every write a second
  append); the next ``list`` after a write reads that key's log once.
* Appends hold the file's exclusive ``flock``, check that it is still
  linked, write the frame, then the new length into the first 8 bytes. A
  rewrite (an ``L`` snapshot of the settled rows, or an empty file) holds
  the lock from its read to its rename, so no ``P`` is lost to it; it drops
  keys whose last record is ``P`` (they become unknown, which is safe).
* A file shorter than its recorded length (a cut, which could have removed
  a ``P``), bytes that are not a frame after a few re-reads, or a frame out
  of place: the whole file is untrusted, and the next reader replaces it.

Failing to keep the file is quiet (readers read logs), but a ``P`` not appended fails its write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

import msgspec

from castore import forks
from castore.file import fileio, stateappend
from castore.file.frames import encode_frame, frame_at
from castore.file.keptfile import KeptFile
from castore.file.stateappend import KIND_PENDING, LENGTH, LOCK_SECONDS, append_frame
from castore.file.staterecords import (
    ENCODE,
    EPOCH,
    KIND_EPOCH,
    KIND_SETTLED,
    KIND_SNAPSHOT,
    ROWS,
    SETTLED,
    Known,
    Row,
    boot_id,
    epoch_frame,
    in_folder,
    rows_of,
    settled_of,
    whole_file,
)
from castore.file.tree import Tree
from castore.records import Entry
from castore.results import ListEntry, rfc3339

__all__ = ["SNAPSHOT_AFTER", "StateIndex"]

SNAPSHOT_AFTER: Final = 256  # appended frames beyond max(this, rows / 4) call for a snapshot
_FRAMES_KEPT: Final = 4096  # P frames a handle keeps encoded
_RETRIES: Final = 3  # a reader re-reads bytes that are not a frame this often ...
_RETRY_SECONDS: Final = 0.001  # ... this long apart: an append in flight completes by then


class _DamagedError(Exception):
    """Bytes in ``STATE`` that are not a frame, still there under the exclusive lock."""


class StateIndex:
    """The ``STATE`` file of one namespace directory; one per handle. Thread-safe.

    Args:
        path: the file's path.
        fs: the store's confined tree.
        scope, namespace: what the list entries it yields name.
    """

    def __init__(self, path: str, fs: Tree, scope: str, namespace: str) -> None:
        self.path, self.fs, self.scope, self.namespace = path, fs, scope, namespace
        self.damaged = False  # the last read of the file found bytes that are no frame
        self._lock = threading.Lock()
        self._fd, self._pid = -1, os.getpid()  # append descriptor (kept between writes), owner
        self._reader = KeptFile(fs, path)  # read descriptor, kept between reads
        self._unparsed()
        self._pending_frames: dict[str, bytes] = {}  # key -> its P frame
        forks.track(self)

    def __del__(self, _exiting: Callable[[], bool] = sys.is_finalizing) -> None:
        if not _exiting():  # at exit the kernel closes them (and modules' globals may be gone)
            with contextlib.suppress(OSError, AttributeError):
                self._drop_fd_locked()  # a handle never closed does not hold it forever
                self._reader.close()

    def close(self) -> None:
        """Close the kept append descriptor and forget the parsed file."""
        with self._lock:
            self._drop_fd_locked()
            self._reader.close()
            self._unparsed()

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`): a new lock, no descriptor, nothing parsed."""
        self._lock, self._pid = threading.Lock(), os.getpid()
        self._drop_fd_locked()  # the child's copy: closed, never unlocked (its flock is shared)
        self._reader.after_fork_in_child()
        self._unparsed()  # a parent's thread may have been parsing

    def _unparsed(self, ino: int = 0, pos: int = 0) -> None:
        """Forget the parsed copy: now of the file of inode ``ino``, parsed up to ``pos``."""
        self._ino, self._pos, self._appended = ino, pos, 0  # frames since the snapshot
        self._known: Known = {}
        self._versions: dict[str, int] = {}  # key -> the highest version recorded for it
        self._trusted, self._head = False, b""  # the parsed file's first frame

    # -- writers (under the key's log lock) ---------------------------------------------

    def pending(self, key: str) -> bool:
        """Record that ``key``'s log is about to change; False if there is no ``STATE``.

        Raises:
            OSError: the record could not be appended (the caller must not commit).
        """
        frame = self._pending_frames.get(key)
        if frame is None:
            if len(self._pending_frames) >= _FRAMES_KEPT:
                self._pending_frames.clear()
            frame = self._pending_frames[key] = encode_frame(KIND_PENDING, key.encode("utf-8"))
        return self._append(frame)

    def discard(self) -> None:
        """Remove the file: a log changed whose key is unknown, so every key must be read.

        Under the file's exclusive ``flock``, on the file the path names once it
        is held (rule 3): a rewrite in flight (its read to its rename) finishes
        first, and its new file is the one removed.

        Raises:
            OSError: the file exists and could not be removed (change nothing).
            LockTimeoutError: a rewrite held it for :data:`LOCK_SECONDS`.
        """
        locked = self.fs.open_locked(self.path, os.O_RDONLY, timeout=LOCK_SECONDS)
        with contextlib.suppress(FileNotFoundError), locked:
            self.fs.unlink(self.path)
        self._drop_fd()

    def settled(self, key: str, entry: Entry | None) -> None:
        """Record ``key``'s newest entry, read under its log's shared lock (quietly)."""
        if (row := settled_of(key, entry)) is not None:
            with contextlib.suppress(OSError):
                self._append(encode_frame(KIND_SETTLED, ENCODE(row)))

    def _append(self, frame: bytes) -> bool:
        """Append ``frame`` to the file the path names; False if there is none.

        Under the file's exclusive ``flock`` (appends are a few µs; a rewrite
        holds it from its read to its rename, so nothing lands in between),
        on the file the path still names (a replaced one is unlinked: then
        the new one), and followed by the new length in the first 8 bytes:
        a file shorter than that lost appended records (a cut).
        Without a descriptor yet, a ``stat`` outside the handle's lock first
        (most namespaces have no ``STATE``: threads writing in one need not
        queue for a failing ``open``); the write holds its log's lock, so a
        ``STATE`` made after this look records its key only after the change.
        """
        if self._fd < 0 and not self.fs.exists(self.path):
            return False
        with self._lock:
            for _attempt in range(3):
                fd = self._append_fd()
                if fd < 0:
                    return False
                try:
                    if append_frame(fd, self.path, frame, lambda: self.fs.stat(self.path)):
                        return True
                except BaseException:
                    self._drop_fd_locked()  # the next write opens the path again
                    raise
                self._drop_fd_locked()
            raise OSError(errno.EAGAIN, f"{self.path} kept being replaced")

    def _append_fd(self) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptor shares its locks
            self._fd, self._pid = -1, os.getpid()
        if self._fd < 0:
            try:
                self._fd = self.fs.open(self.path, os.O_WRONLY)
            except FileNotFoundError:
                return -1
        return self._fd

    def _drop_fd(self) -> None:
        with self._lock:
            self._drop_fd_locked()

    def _drop_fd_locked(self) -> None:
        fd, self._fd = self._fd, -1  # never a closed number held (castore.forks)
        if fd >= 0 and self._pid == os.getpid():
            os.close(fd)

    # -- readers -------------------------------------------------------------------------

    def settled_version(self, key: str) -> int:
        """``key``'s version if its last record is an ``S`` or a row, else 0 (one read)."""
        known = self.known()
        return self._versions.get(key, 0) if known is not None and key in known else 0

    def known(self) -> Known | None:
        """What the file says of each key it trusts; None if there is no trusted file.

        A key absent from the mapping must be read from its log. The mapping
        is this handle's parsed copy: look keys up, do not keep or change it.
        """
        me = boot_id()
        if not me:
            return None
        with self._lock:
            try:
                fd, sig = self._reader.look()
            except OSError:  # none (or unreadable): the logs answer
                self._trusted = False
                return None
            if sig != self._reader.parsed:  # else unchanged since it was parsed: one lstat
                try:
                    self._read(fd, me)
                    self.damaged = False
                    self._reader.parsed = sig  # taken before the read: a change after differs
                except (_DamagedError, OSError) as exc:  # damage, or a rewrite held it too long
                    self._trusted, self.damaged = False, isinstance(exc, _DamagedError)
            return self._known if self._trusted else None

    def recorded(self) -> dict[str, int]:
        """Each key's highest version the trusted file records ({} if none is trusted).

        A later ``P`` does not lower it (versions only grow): the key had at
        least that version, unless compaction removed it (``GRAVES`` then
        holds its last version: callers compare). Evidence of a lost log
        (docs/FORMAT.md §7). Look keys up; do not keep or change the mapping.
        """
        return {} if self.known() is None else self._versions

    def _read(self, fd: int, me: str, *, patient: bool = True) -> None:
        """Bring the parsed copy up to the end of the file on ``fd``.

        Raises:
            _DamagedError: bytes that are not a frame (still there after a few
                re-reads when ``patient``: not an append in flight).
        """
        top = fileio.read_at(fd, 0, LENGTH.size + len(self._head))
        st = os.fstat(fd)  # after the length: an append in flight only makes the file longer
        recorded = LENGTH.unpack_from(top)[0] if len(top) >= LENGTH.size else 0
        if not max(recorded, self._pos) + stateappend.UNRECORDED_MAX >= st.st_size >= recorded > 0:
            raise _DamagedError(self.path)  # records cut off, or grown past any append (unread)
        if (
            st.st_ino != self._ino
            or st.st_size < self._pos
            # A rewrite renames a new file over this one, and the new file may get
            # the inode number of the one parsed (numbers are reused at once): its
            # first frame, unique to each file, tells them apart.
            or top[LENGTH.size :] != self._head
        ):
            self._unparsed(st.st_ino, LENGTH.size)
        if st.st_size == self._pos:
            return
        pos = self._parse(fileio.read_at(fd, self._pos, st.st_size - self._pos), self._pos, me)
        if pos == st.st_size:
            return
        for _attempt in range(_RETRIES if patient else 0):  # an append in flight?
            time.sleep(_RETRY_SECONDS)
            size = os.fstat(fd).st_size
            pos = self._parse(fileio.read_at(fd, pos, size - pos), pos, me)
            if pos == size:
                return
        raise _DamagedError(self.path)

    def _parse(self, data: bytes, base: int, me: str) -> int:
        """Apply the frames of ``data`` (at file offset ``base``); return where they stop."""
        at = 0
        while True:
            frame = frame_at(data, at, base)
            if frame is None:
                break
            at = frame.end - base
            try:
                self._apply(frame.kind, frame.payload, frame.start, me)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
                raise _DamagedError(self.path) from exc  # checksummed, yet not ours
            if frame.kind == KIND_EPOCH:
                self._head = data[frame.start - base : frame.end - base]
            self._pos = frame.end
        return base + at

    def _apply(self, kind: int, payload: bytes, start: int, me: str) -> None:
        """Apply one frame to the parsed copy.

        Raises:
            _DamagedError: a frame out of place (not a file castore wrote).
        """
        if kind == KIND_SETTLED:
            got = SETTLED.decode(payload)
            created, updated = rfc3339(got.created_ns), rfc3339(got.time_ns)
            self._settle(Row(got.key, got.version, got.hash, created, updated))
            self._appended += 1
        elif kind == KIND_PENDING:
            self._known.pop(payload.decode("utf-8"), None)
            self._appended += 1
        elif kind == KIND_SNAPSHOT and start > LENGTH.size:
            for row in ROWS.decode(payload):
                self._settle(row)
        elif kind == KIND_EPOCH and start == LENGTH.size:
            epoch = EPOCH.decode(payload)  # a file naming another namespace: not trusted here
            if len(epoch) not in (2, 4):
                raise _DamagedError(self.path)
            self._trusted = epoch[0] == me and (len(epoch) == 2 or in_folder(self.path, *epoch))
        else:
            raise _DamagedError(self.path)

    def _settle(self, row: Row) -> None:
        if row.version > self._versions.get(row.key, 0):
            self._versions[row.key] = row.version
        if row.hash:
            self._known[row.key] = ListEntry(
                scope=self.scope,
                namespace=self.namespace,
                key=row.key,
                version=row.version,
                hash=row.hash,
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
        else:
            self._known[row.key] = None

    # -- rewrites ------------------------------------------------------------------------

    def crowded(self) -> bool:
        """True when appended records outnumber the rows enough to call for a snapshot."""
        return self._appended > max(SNAPSHOT_AFTER, len(self._known) // 4)

    def create(self) -> None:
        """Make an empty, trusted ``STATE`` if there is none (quietly; the directory must exist)."""
        me = boot_id()
        if me:
            with contextlib.suppress(OSError):
                self.fs.create_once(
                    self.path, whole_file(epoch_frame(me, self.scope, self.namespace))
                )

    def reset(self) -> None:
        """Replace the file with an empty one (after damage, or from another boot)."""
        self._rewrite(snapshot=False)

    def snapshot(self) -> None:
        """Rewrite the file as one snapshot of its settled rows (pending keys are dropped)."""
        self._rewrite(snapshot=True)

    def _rewrite(self, *, snapshot: bool) -> None:
        """Rename a new file over this one under its exclusive ``flock`` (quietly, if free).

        The lock, held from the last read to the rename, keeps every ``P``
        either in what was read or out of the old file (its appender then
        finds the old file unlinked and appends to the new one).
        """
        me = boot_id()
        if not me:
            return
        with self._lock, contextlib.suppress(OSError):
            fd = self.fs.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if self.fs.names(self.path, fd) is None:  # not st_nlink: an overlay's lower
                    return  # replaced meanwhile: that rewrite did the job (file keeps its link)
                data = epoch_frame(me, self.scope, self.namespace)
                if snapshot:
                    try:
                        self._read(fd, me, patient=False)
                    except _DamagedError:
                        self._trusted = False
                    if self._trusted:
                        data += encode_frame(
                            KIND_SNAPSHOT, ENCODE(rows_of(self._known, self._versions))
                        )
                self.fs.atomic_write(self.path, whole_file(data), durable=False)
            finally:
                fileio.unlock_and_close(fd)  # after the rename (a forked child has fd)
            self._drop_fd_locked()
            self._reader.parsed = None
