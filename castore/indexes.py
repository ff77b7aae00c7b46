r"""Derived indexes: digest -> blob location, and the keys of each namespace.

Both are append-only files that can be rebuilt from the ref logs (``check
--repair``), and both are cached per :class:`~castore.store.Store` handle and
refreshed incrementally: a reader remembers how far it read and reads only
what was appended since (docs/FORMAT.md §4, §5).

* Blob index ``index/<xx>.idx`` (``xx`` = first byte of the digest in hex):
  ``I`` frames ``digest[32] offset:u64le length:u32le log-path``. Written
  without fsync: losing an entry only loses a chance to deduplicate.
* Key index ``refs/<scope>/<ns-id>/KEYS``: one line per key,
  ``hex(utf8(key)) "\n"``. Written with fdatasync *before* the key's log gets
  its first record, so a listed key set is never smaller than the durable
  one. Lines that are not lowercase hex, or lack their newline, are ignored.
"""

from __future__ import annotations

import os
import struct

from castore import _fs
from castore.frames import encode_frame, scan_frames
from castore.records import BlobLoc

__all__ = ["KIND_INDEX", "BlobIndex", "Graveyard", "decode_loc"]

KIND_INDEX = ord("I")
_LOC = struct.Struct("<QI")
_HEX = frozenset(b"0123456789abcdef")
_NS_PREFIX = b"namespace "  # first line of a KEYS file


def decode_loc(payload: bytes) -> BlobLoc:
    """The location recorded by an ``I`` frame payload."""
    offset, length = _LOC.unpack_from(payload, 32)
    return BlobLoc(payload[44:].decode("utf-8"), offset, length)


_KEEP_LOCATIONS = 4  # per digest: a rewrite in progress or interrupted leaves the old one valid


def _remember(table: dict[bytes, list[BlobLoc]], payload: bytes) -> None:
    locs = table.setdefault(payload[:32], [])
    loc = decode_loc(payload)
    if loc in locs:
        locs.remove(loc)
    locs.insert(0, loc)
    del locs[_KEEP_LOCATIONS:]


class BlobIndex:
    """Digest -> :class:`BlobLoc` (``log`` relative to ``refs/``) for one store.

    Not thread-safe; one per Store handle. Safe across processes: appends
    take the shard file's lock, readers verify every frame.
    """

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "index")
        # shard path -> (inode, bytes read, digest -> locations newest first)
        self._shards: dict[str, tuple[int, int, dict[bytes, list[BlobLoc]]]] = {}
        self._dir_made = False

    def _path(self, digest: bytes) -> str:
        return os.path.join(self.dir, f"{digest[0]:02x}.idx")

    def _refresh(self, path: str) -> dict[bytes, list[BlobLoc]]:
        ino, pos, table = self._shards.get(path, (0, 0, {}))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return table
        if st.st_ino != ino or st.st_size < pos:
            ino, pos, table = st.st_ino, 0, {}
        if st.st_size > pos:
            with open(path, "rb") as fh:
                fh.seek(pos)
                buf = fh.read(st.st_size - pos)
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
        return list(self._refresh(self._path(digest)).get(digest, ()))

    @staticmethod
    def payload(digest: bytes, loc: BlobLoc) -> bytes:
        """The ``I`` frame recording that ``digest`` is stored at ``loc``."""
        body = b"".join((digest, _LOC.pack(loc.offset, loc.length), loc.log.encode("utf-8")))
        return encode_frame(KIND_INDEX, body)

    def forget(self) -> None:
        """Drop the cached shards (after they were rewritten)."""
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
            os.makedirs(self.dir, exist_ok=True)
            self._dir_made = True
        for path, frames in shards.items():
            data = b"".join(frames)
            with _fs.open_locked(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) as fd:
                st = os.fstat(fd)
                _fs.append(fd, data, durable=durable)
            ino, pos, table = self._shards.get(path, (0, 0, {}))
            if st.st_ino == ino and st.st_size == pos:  # nobody else appended: skip a re-read
                for frame in scan_frames(data, pos):
                    _remember(table, frame.payload)
                self._shards[path] = (ino, pos + len(data), table)


class Graveyard:
    r"""Last versions of keys whose logs compaction removed: ``GRAVES`` in a namespace dir.

    One line per removed key, ``hex(utf8(key)) " " version "\n"``, fdatasynced
    before the log is removed, so a re-created key continues after its old
    versions (versions never repeat). Cached and read incrementally.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._pos = 0
        self._versions: dict[str, int] = {}

    def version_of(self, key: str) -> int:
        """The last version ``key`` had before its log was removed (0 if never)."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return 0
        if size > self._pos:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                buf = fh.read(size - self._pos)
            complete = buf.rfind(b"\n") + 1
            for line in buf[:complete].split(b"\n"):
                parts = line.split(b" ")
                if len(parts) == 2 and _HEX.issuperset(parts[0]) and parts[1].isdigit():
                    text = parts[0].decode("ascii")
                    self._versions[text] = max(self._versions.get(text, 0), int(parts[1]))
            self._pos += complete
        return self._versions.get(key.encode("utf-8").hex(), 0)

    def bury(self, items: list[tuple[str, int]], *, durable: bool) -> None:
        """Record the last version of each removed key (fdatasync when ``durable``)."""
        lines = b"".join(b"%s %d\n" % (k.encode("utf-8").hex().encode(), v) for k, v in items)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        with _fs.open_locked(self.path, flags) as fd:
            _fs.append(fd, lines, durable=durable)
