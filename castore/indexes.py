r"""The blob index (digest -> blob locations) and the graveyard of removed keys.

Both are frame files cached per :class:`~castore.store.Store` handle and
refreshed incrementally: a reader remembers how far it read and reads only
what was appended since (docs/FORMAT.md §5). The key index of a namespace
lives in ``keyindex.py``.

* Blob index ``index/<xx>.idx`` (``xx`` = first byte of the digest in hex):
  ``I`` frames ``digest[32] offset:u64le length:u32le log-path``. Derived,
  written without fsync: losing an entry only loses a chance to deduplicate;
  a record naming anything but a log of this store is ignored.
* Graveyard ``refs/<scope>/<ns-id>/GRAVES``: ``G`` frames, each record twice,
  fdatasynced before compaction removes a key's log; not derived (with the
  removed log's ``C`` frame, it is what keeps versions from repeating).
"""

from __future__ import annotations

import os
import re
import struct
import threading

from castore import _fs
from castore.errors import CorruptionError
from castore.frames import classify, encode_frame, scan_frames
from castore.keys import is_log_name
from castore.records import KIND_GRAVE, BlobLoc, Grave, decode_grave, encode_record

__all__ = ["KIND_INDEX", "BlobIndex", "Graveyard", "decode_loc", "floor_after_damage"]

KIND_INDEX = ord("I")
_LOC = struct.Struct("<QI")


def decode_loc(payload: bytes) -> BlobLoc:
    """The location recorded by an ``I`` frame payload."""
    offset, length = _LOC.unpack_from(payload, 32)
    return BlobLoc(payload[44:].decode("utf-8"), offset, length)


_KEEP_LOCATIONS = 4  # per digest: a rewrite in progress or interrupted leaves the old one valid


def _remember(table: dict[bytes, list[BlobLoc]], payload: bytes) -> None:
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
    del locs[_KEEP_LOCATIONS:]


class BlobIndex:
    """Digest -> :class:`BlobLoc` (``log`` relative to ``refs/``) for one store.

    Thread-safe (one lock guards the cached shards); one per Store handle.
    Safe across processes: appends take the shard file's lock, readers
    verify every frame.
    """

    def __init__(self, root: str, fs: _fs.Tree) -> None:
        self.fs = fs
        self.dir = os.path.join(root, "index")
        # shard path -> (inode, bytes read, digest -> locations newest first)
        self._shards: dict[str, tuple[int, int, dict[bytes, list[BlobLoc]]]] = {}
        self._dir_made = False
        self._lock = threading.Lock()

    def _path(self, digest: bytes) -> str:
        return os.path.join(self.dir, f"{digest[0]:02x}.idx")

    def _refresh(self, path: str) -> dict[bytes, list[BlobLoc]]:
        ino, pos, table = self._shards.get(path, (0, 0, {}))
        try:
            st = self.fs.stat(path)
        except FileNotFoundError:
            return table
        if st.st_ino != ino or st.st_size < pos:
            ino, pos, table = st.st_ino, 0, {}
        if st.st_size > pos:
            fd = self.fs.open(path, os.O_RDONLY)
            try:
                buf = _fs.read_at(fd, pos, os.fstat(fd).st_size - pos)
            finally:
                os.close(fd)
            for frame in scan_frames(buf, pos):
                if frame.kind != KIND_INDEX or len(frame.payload) < 44:
                    continue
                _remember(table, frame.payload)
                pos = frame.end
        self._shards[path] = (ino, pos, table)
        return table

    def lookup(self, digest: bytes) -> list[BlobLoc]:
        """Recorded locations of ``digest``, newest first (hints: verify them).

        Older ones matter while a log is being rewritten: the new locations
        are recorded before the new log is renamed into place.
        """
        with self._lock:
            return list(self._refresh(self._path(digest)).get(digest, ()))

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
            self.fs.makedirs(self.dir, durable=False)
            self._dir_made = True
        for path, frames in shards.items():
            data = b"".join(frames)
            with self.fs.open_locked(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fd:
                st = os.fstat(fd)
                _fs.append(fd, data, durable=durable)
            with self._lock:
                ino, pos, table = self._shards.get(path, (0, 0, {}))
                if st.st_ino == ino and st.st_size == pos:  # nobody else appended: no re-read
                    for frame in scan_frames(data, pos):
                        _remember(table, frame.payload)
                    self._shards[path] = (ino, pos + len(data), table)


def _covered(damage: tuple[int, int], extents: set[tuple[int, int]]) -> bool:
    """True if an intact twin of the same size sits right before or after ``damage``."""
    start, end = damage
    size = end - start
    return (start - size, start) in extents or (end, end + size) in extents


def floor_after_damage(known: int, damaged: bytes) -> int:
    """A version above every version a lost grave record may have held (both copies damaged).

    The damaged bytes may still show digits; ``known`` is the highest version
    seen anywhere in the namespace. Without redundancy the true value cannot
    be known, so the floor is generous (docs/FORMAT.md §7).
    """
    digits = [int(run) for run in re.findall(rb"[0-9]{1,18}", damaged)]
    return max([known, *digits]) * 2 + 1_000_000


class Graveyard:
    """Last versions of keys whose logs compaction removed: ``GRAVES`` in a namespace dir.

    ``G`` frames (:class:`~castore.records.Grave`), each record written twice
    in one append and fdatasynced before the log is removed, so a re-created
    key continues after its old versions (versions never repeat) and one
    damaged copy is covered by its twin. Cached and read incrementally.
    Damage that no twin covers makes :meth:`version_of` raise until
    ``check --repair`` has replaced it by a floor (FORMAT.md §5, §7).
    """

    def __init__(self, path: str, fs: _fs.Tree) -> None:
        self.path = path
        self.fs = fs
        self._lock = threading.RLock()
        self._forget(0)

    def _forget(self, ino: int) -> None:
        self._ino = ino
        self._pos = 0
        self._versions: dict[str, int] = {}
        self._floor = 0
        self._extents: set[tuple[int, int]] = set()
        self._damage: list[tuple[int, int]] = []

    def _refresh(self) -> None:
        with self._lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        try:
            st = self.fs.stat(self.path)  # one call when nothing changed (every new key)
        except FileNotFoundError:
            self._forget(0)
            return
        if st.st_ino != self._ino or st.st_size < self._pos:
            self._forget(st.st_ino)
        if st.st_size <= self._pos:
            return
        fd = self.fs.open(self.path, os.O_RDONLY)
        try:
            buf = _fs.read_at(fd, self._pos, os.fstat(fd).st_size - self._pos)
        finally:
            os.close(fd)
        log = classify(buf, self._pos)
        for frame in log.frames:
            self._extents.add((frame.start, frame.end))
            if frame.kind != KIND_GRAVE:
                continue
            grave = decode_grave(frame.payload)
            if grave.key is None:
                self._floor = max(self._floor, grave.version)
            else:
                self._versions[grave.key] = max(self._versions.get(grave.key, 0), grave.version)
        self._damage.extend(log.damage)
        self._pos = log.torn  # a torn record is re-read once its writer finishes

    def damage(self) -> list[tuple[int, int]]:
        """Damaged byte ranges that no intact twin covers (re-read first)."""
        with self._lock:
            self._refresh_locked()
            return [d for d in self._damage if not _covered(d, self._extents)]

    @property
    def floor(self) -> int:
        """The floor a repair recorded (0 if none)."""
        self._refresh()
        return self._floor

    def records(self) -> dict[str, int]:
        """Every removed key's last version (re-read first)."""
        with self._lock:
            self._refresh_locked()
            return dict(self._versions)

    def highest(self) -> int:
        """The highest version recorded for any key, or as the floor."""
        with self._lock:
            self._refresh_locked()
            return max([self._floor, *self._versions.values()])

    def version_of(self, key: str) -> int:
        """The last version ``key`` had before its log was removed (0 if never).

        Raises:
            CorruptionError: a record no twin covers is damaged, so the
                answer is unknown until ``check --repair``.
        """
        with self._lock:
            damage = self.damage()
            if damage:
                start, end = damage[0]
                raise CorruptionError(
                    f"{self.path}: damaged bytes at offset {start} ({end - start} bytes): "
                    "the last versions of removed keys are unknown; run castore check --repair"
                )
            return max(self._floor, self._versions.get(key, 0))

    def bury(self, items: list[tuple[str, int]], *, durable: bool) -> None:
        """Record the last version of each removed key, twice (fdatasync when ``durable``)."""
        records = [
            encode_frame(KIND_GRAVE, encode_record(Grave(key=k, version=v))) for k, v in items
        ]
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        with self.fs.open_locked(self.path, flags) as fd:
            _fs.append(fd, b"".join(r + r for r in records), durable=durable)

    def repair(self, floor: int, keep_copy: str, *, durable: bool) -> None:
        """Rewrite the file with its intact records and a ``floor``; keep the old bytes.

        The original is first copied to ``keep_copy`` (quarantine).
        """
        with self.fs.open_locked(self.path, os.O_RDWR) as fd:
            data = _fs.read_at(fd, 0, os.fstat(fd).st_size)
            self.fs.makedirs(os.path.dirname(keep_copy), durable=durable)
            self.fs.atomic_write(keep_copy, data, durable=durable)
            records = [f.payload for f in classify(data).frames if f.kind == KIND_GRAVE]
            records.append(encode_record(Grave(version=floor)))
            frames = [encode_frame(KIND_GRAVE, p) for p in dict.fromkeys(records)]
            self.fs.atomic_write(self.path, b"".join(f + f for f in frames), durable=durable)
        with self._lock:
            self._forget(0)
