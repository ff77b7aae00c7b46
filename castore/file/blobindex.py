"""The blob index ``index/<xx>.idx``: digest -> blob locations (docs/FORMAT.md §5).

``xx`` is the first byte of the digest in hex; each shard holds ``I`` frames
``digest[32] offset:u64le length:u32le log-path``. Derived, written without
fsync: losing an entry only loses a chance to deduplicate; a record naming
anything but a log of this store is ignored. Shards are cached per handle
and refreshed incrementally (only what was appended since is read).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterable, Iterator

from castore import forks
from castore.file import fileio, namesync
from castore.file.frames import Frame, encode_frame, scan_frames
from castore.file.modes import DATA_UNSYNCED, UNSYNCED
from castore.file.records import KIND_BLOB
from castore.file.tree import Tree
from castore.keys import is_log_name
from castore.records import BlobLoc
from castore.waits import WouldWait, waiting_refused, would_wait

__all__ = ["KIND_INDEX", "BlobIndex", "decode_loc", "shard_frames"]

KIND_INDEX = ord("I")
_LOC = struct.Struct("<QI")


def decode_loc(payload: bytes) -> BlobLoc:
    """The location recorded by an ``I`` frame payload."""
    offset, length = _LOC.unpack_from(payload, 32)
    return BlobLoc(payload[44:].decode("utf-8"), offset, length)


_CHUNK = 1 << 20  # a shard is read this much at a time
_MAX_CARRY = 1 << 16  # bytes after the last frame kept for the next chunk: no record is longer


def shard_frames(fd: int, start: int, end: int) -> Iterator[Frame]:
    """The frames of the shard on ``fd`` between ``start`` and ``end``, in bounded memory.

    Read a chunk at a time; a chunk of zeros with nothing carried into it (a
    hole: a planted sparse file) is passed over at C speed, and bytes that
    hold no frame for longer than any record are dropped.
    """
    base, carry, pos = start, b"", start
    while pos < end:
        chunk = fileio.read_at(fd, pos, min(_CHUNK, end - pos))
        if not chunk:
            return
        pos += len(chunk)
        if not carry and chunk.count(0) == len(chunk):
            base = pos
            continue
        buf, last = carry + chunk, base
        for frame in scan_frames(buf, base):
            yield frame
            last = frame.end
        carry, base = buf[last - base :], last
        if len(carry) > _MAX_CARRY:
            carry, base = b"", pos


def _holds(fd: int, digest: bytes) -> bool:
    """Whether the bytes of the file on ``fd`` hold ``digest`` anywhere, read a chunk at a time."""
    carry, pos = b"", 0
    while chunk := fileio.read_at(fd, pos, _CHUNK):
        window = carry + chunk
        if digest in window:
            return True
        pos += len(chunk)
        carry = window[1 - len(digest) :]  # a digest across two chunks
    return False


_SEARCHES = 64  # digests a handle looks up by a shard's bytes before it parses the shard
_KEEP_LOCATIONS = 4  # per digest: a rewrite in progress or interrupted leaves the old one valid


def _remember(
    table: dict[bytes, list[BlobLoc]], payload: bytes, keep: int | None = _KEEP_LOCATIONS
) -> None:
    try:
        loc = decode_loc(payload)
    except UnicodeDecodeError:
        return
    if not is_log_name(loc.log):
        return  # a record naming anything but a log of this store is never used
    locs = table.setdefault(payload[:32], [])
    if loc in locs:
        locs.remove(loc)
    locs.insert(0, loc)
    if keep is not None:
        del locs[keep:]


class BlobIndex:
    """Digest -> :class:`BlobLoc` (``log`` relative to ``refs/``) for one store.

    Thread-safe (one lock guards the cached shards); one per Store handle.
    Safe across processes: each append is one ``O_APPEND`` write, never split
    by another's, without a lock (FORMAT.md §5), and readers verify every frame.
    """

    def __init__(self, root: str, fs: Tree) -> None:
        self.fs = fs
        self.dir = os.path.join(root, "index")
        # shard path -> (inode, bytes read, digest -> locations newest first)
        self._shards: dict[str, tuple[int, int, dict[bytes, list[BlobLoc]]]] = {}
        self._dir_made = False
        self._searched = 0  # lookups answered by a shard's bytes (:meth:`_absent`)
        self._lock = threading.Lock()
        forks.track(self)

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`): a new lock; the shards read again."""
        self._lock = threading.Lock()
        self._shards = {}

    def _path(self, digest: bytes) -> str:
        return os.path.join(self.dir, f"{digest[0]:02x}.idx")

    def _refresh(self, path: str) -> dict[bytes, list[BlobLoc]]:
        ino, pos, table = self._shards.get(path, (0, 0, {}))
        try:
            st = self.fs.stat(path)
        except FileNotFoundError:
            return table
        if (st.st_ino, st.st_size) == (ino, pos):
            return table
        would_wait(path)  # reading it may take a while: not on an event loop
        try:
            fd = self.fs.open(path, os.O_RDONLY)
        except FileNotFoundError:  # gc's rebuild replaced it since: hints, verified in use
            return table
        try:
            st = os.fstat(fd)  # the file read, not the one stat'ed (a rebuild replaces it)
            if st.st_ino != ino or st.st_size < pos:
                ino, pos, table = st.st_ino, 0, {}
            for frame in shard_frames(fd, pos, st.st_size):
                if frame.kind == KIND_INDEX and len(frame.payload) >= 44:
                    _remember(table, frame.payload)
                pos = frame.end
        finally:
            os.close(fd)
        self._shards[path] = (ino, pos, table)
        return table

    def lookup(self, digest: bytes, *, fresh: bool = False) -> list[BlobLoc]:
        """Recorded locations of ``digest``, newest first (hints: verify them).

        Older ones matter while a log is being rewritten: the new locations
        are recorded before the new log is renamed into place. ``fresh``
        re-reads the digest's shard whole instead of trusting this handle's
        cache of it: a rebuild replaces a shard by rename, and the new file
        may get the inode number of the one cached (file systems reuse freed
        inode numbers at once), so an incremental refresh would take it for
        the same file and keep locations the rebuild dropped.
        """
        path = self._path(digest)
        if not self._lock.acquire(blocking=not waiting_refused()):
            raise WouldWait(self.dir)  # another thread is reading a shard
        try:
            if fresh:
                self._shards.pop(path, None)
            elif self._absent(path, digest):
                return []
            return list(self._refresh(path).get(digest, ()))
        finally:
            self._lock.release()

    def _absent(self, path: str, digest: bytes) -> bool:
        """True if the shard, which this handle has not parsed, holds no record of ``digest``.

        Found by its bytes (a record begins with the digest), as the parse would answer:
        a command's new value made a handle parse a 256th of every blob's record to learn
        that none was its digest (+1.3 ms per 100,000 blobs). After :data:`_SEARCHES`
        such lookups a handle parses the shards it reads (then reads on).
        """
        if path in self._shards or self._searched >= _SEARCHES:
            return False
        self._searched += 1
        would_wait(path)  # reading it may take a while: not on an event loop
        try:
            fd = self.fs.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return True  # no shard: no record
        try:
            return not _holds(fd, digest)
        finally:
            os.close(fd)

    def every_location(self, digest: bytes) -> list[BlobLoc]:
        """Every location the shard on disk records for ``digest``, newest first.

        :meth:`lookup` keeps the newest :data:`_KEEP_LOCATIONS`; a log holding
        that many copies of a value records as many new locations each time it
        is rewritten, before its new file is renamed into place (or forever, if
        the rewrite was killed), and those may all name offsets of a file that
        is not (yet) there. The location that is still good was recorded
        earlier: readers look here when every newer one failed. Reads the
        shard whole, uncached.
        """
        path = self._path(digest)
        would_wait(path)
        try:
            fd = self.fs.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        table: dict[bytes, list[BlobLoc]] = {}
        try:
            for frame in shard_frames(fd, 0, os.fstat(fd).st_size):
                if frame.kind == KIND_INDEX and frame.payload[:32] == digest:
                    _remember(table, frame.payload, keep=None)
        finally:
            os.close(fd)
        return table.get(digest, [])

    @staticmethod
    def payload(digest: bytes, loc: BlobLoc) -> bytes:
        """The ``I`` frame recording that ``digest`` is stored at ``loc``."""
        body = b"".join((digest, _LOC.pack(loc.offset, loc.length), loc.log.encode("utf-8")))
        return encode_frame(KIND_INDEX, body)

    def forget(self) -> None:
        """Drop the cached shards (after they were rewritten)."""
        with self._lock:
            self._shards.clear()

    def add_many(self, items: list[tuple[bytes, BlobLoc]], *, durable: bool) -> None:
        """Record that each digest is stored at its location (later records win).

        Normal writes pass ``durable=False`` (derived data); a log rewrite
        passes True so the new locations are on disk before the old log goes.
        """
        shards: dict[str, list[bytes]] = {}
        for digest, loc in items:
            shards.setdefault(self._path(digest), []).append(self.payload(digest, loc))
        if shards and not self._dir_made:
            self.fs.makedirs(self.dir, durable=durable)
            self._dir_made = True
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        marked = [p for p, frames in shards.items() if self._append(p, frames, flags, durable)]
        if marked:  # new shards: their names too, one fsync of index/ and up for all of them
            namesync.settle_namespace(self.fs, self.dir, self.fs.root or "/")
            for path in marked:  # opened again: one descriptor at a time (up to 256 shards)
                with contextlib.suppress(FileNotFoundError):
                    fd = self.fs.open(path, os.O_RDONLY)
                    try:
                        namesync.clear(fd, os.fstat(fd).st_mode)
                    finally:
                        os.close(fd)

    def _append(self, path: str, frames: list[bytes], flags: int, durable: bool) -> bool:
        """Append one shard's records; True if a durable call appended to a marked shard."""
        data = b"".join(frames)
        fd = self.fs.open(path, flags, unsynced=True)
        try:
            fileio.append(fd, data, durable=durable)  # one O_APPEND write: never interleaved
            end = os.lseek(fd, 0, os.SEEK_CUR)  # where it landed: just before here
            st = os.fstat(fd)
        finally:
            os.close(fd)
        with self._lock:
            ino, pos, table = self._shards.get(path, (0, 0, {}))
            if st.st_ino == ino and end - len(data) == pos:  # right after what was read
                for frame in scan_frames(data, pos):
                    _remember(table, frame.payload)
                self._shards[path] = (ino, pos + len(data), table)
        return durable and namesync.marked(st.st_mode)

    def _durable_bytes(self, path: str) -> bytes:
        """A log's bytes, made durable first (FORMAT.md §6, "Names"): a marked log's name too.

        A durable write may point at any value of at least ``DEDUP_MIN_BYTES`` the index
        names: one a ``durable=False`` write left unsynced is in a log marked so, and one
        a durable write killed before its ``fdatasync`` left is in a log marked by nothing.
        """
        fd = self.fs.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            # a log made durable has its KEYS line made durable first: a crash must not
            # leave a log with versions that KEYS does not list (list would miss the key);
            # the rebuilt index is durable, so the names it points into are made so too
            if st.st_mode & (UNSYNCED | DATA_UNSYNCED):  # KEYS: its directory too
                namesync.settle_log(
                    self.fs, path, self.fs.root or "/", keys_synced=False, name=False
                )
            if namesync.marked(st.st_mode):
                namesync.settle(self.fs, fd, path)  # data, then the name (directory fsync)
            else:  # unmarked is no proof: a durable write killed before its fdatasync
                os.fdatasync(fd)
            return fileio.read_at(fd, 0, st.st_size)
        finally:
            os.close(fd)

    def rebuild(self, logs: Iterable[tuple[str, str]]) -> int:
        """Rewrite every shard from the blob frames of ``logs`` (path, path below ``refs/``).

        Durable whatever the handle (the logs it reads too, with their names): a rewrite
        may have moved values that only the index finds, and a stale index after a crash
        would leave them unreadable until a repair.

        Returns the number of blob frames. Each shard is replaced atomically;
        an entry a writer appends to the old shard meanwhile may be lost,
        which only costs a chance to deduplicate.
        """
        shards: dict[str, list[bytes]] = {}
        count = 0
        for path, own in logs:
            try:
                frames = list(scan_frames(self._durable_bytes(path)))
            except FileNotFoundError:
                continue
            for f in frames:
                if f.kind == KIND_BLOB:
                    count += 1
                    loc = BlobLoc(own, f.start, f.end - f.start)
                    shards.setdefault(f"{f.payload[0]:02x}", []).append(
                        self.payload(f.payload[:32], loc)
                    )
        self.fs.makedirs(self.dir, durable=True)  # rewrites moved values: only the index finds
        for name in self.fs.listdir(self.dir):
            if name.endswith(".idx") and name[:-4] not in shards:
                shards[name[:-4]] = []
        for shard, records in shards.items():
            path = os.path.join(self.dir, shard + ".idx")
            if records:
                self.fs.atomic_write(path, b"".join(records), durable=True)  # them (see makedirs)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.unlink(path)
        # index/'s own name too: a no-sync write may have made it, and the new shards
        # carry no mark that would make a later durable append settle it (FORMAT.md §6)
        namesync.settle_namespace(self.fs, self.dir, self.fs.root or "/")
        self.forget()
        return count
