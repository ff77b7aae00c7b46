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

import bisect
import os
import struct

from castore import _fs
from castore.frames import encode_frame, scan_frames
from castore.records import BlobLoc

__all__ = ["KIND_INDEX", "BlobIndex", "Graveyard", "KeyIndex", "decode_loc", "namespace_of"]

KIND_INDEX = ord("I")
_LOC = struct.Struct("<QI")
_HEX = frozenset(b"0123456789abcdef")
_NS_PREFIX = b"namespace "  # first line of a KEYS file


def decode_loc(payload: bytes) -> BlobLoc:
    """The location recorded by an ``I`` frame payload."""
    offset, length = _LOC.unpack_from(payload, 32)
    return BlobLoc(payload[44:].decode("utf-8"), offset, length)


class BlobIndex:
    """Digest -> :class:`BlobLoc` (``log`` relative to ``refs/``) for one store.

    Not thread-safe; one per Store handle. Safe across processes: appends
    take the shard file's lock, readers verify every frame.
    """

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "index")
        self._shards: dict[str, tuple[int, int, dict[bytes, BlobLoc]]] = {}
        self._dir_made = False

    def _path(self, digest: bytes) -> str:
        return os.path.join(self.dir, f"{digest[0]:02x}.idx")

    def _refresh(self, path: str) -> dict[bytes, BlobLoc]:
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
                table[frame.payload[:32]] = decode_loc(frame.payload)
                pos = frame.end
        self._shards[path] = (ino, pos, table)
        return table

    def lookup(self, digest: bytes) -> BlobLoc | None:
        """The newest recorded location of ``digest``, or None (a hint: verify it)."""
        return self._refresh(self._path(digest)).get(digest)

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
                    table[frame.payload[:32]] = decode_loc(frame.payload)
                self._shards[path] = (ino, pos + len(data), table)


class KeyIndex:
    """The sorted keys ever created in one namespace directory (cached).

    Not thread-safe; one per namespace per Store handle.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._ino = 0
        self._pos = 0
        self._sorted: list[str] = []  # hex of each key's UTF-8, sorted = byte order
        self._known: set[str] = set()

    def refresh(self) -> None:
        """Read whatever was appended since the last refresh."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if st.st_ino != self._ino or st.st_size < self._pos:
            self._ino, self._pos, self._sorted, self._known = st.st_ino, 0, [], set()
        if st.st_size <= self._pos:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._pos)
            buf = fh.read(st.st_size - self._pos)
        complete = buf.rfind(b"\n") + 1  # a line without its newline is still being written
        fresh = []
        for line in buf[:complete].split(b"\n"):
            if line and len(line) % 2 == 0 and _HEX.issuperset(line):
                text = line.decode("ascii")
                if text not in self._known:
                    self._known.add(text)
                    fresh.append(text)
        self._pos += complete
        if len(fresh) > 64:
            self._sorted = sorted(self._sorted + fresh)
        else:
            for text in fresh:
                bisect.insort(self._sorted, text)

    def __contains__(self, key: str) -> bool:
        return key.encode("utf-8").hex() in self._known

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (byte-wise), in byte-wise order."""
        self.refresh()
        low = prefix.encode("utf-8").hex()
        start = bisect.bisect_left(self._sorted, low)
        out = []
        for text in self._sorted[start:]:
            if not text.startswith(low):
                break
            try:
                out.append(bytes.fromhex(text).decode("utf-8"))
            except UnicodeDecodeError:
                continue  # a damaged line; check --repair rebuilds KEYS
        return out

    def add(self, key: str, namespace: str, *, durable: bool) -> None:
        """Append ``key`` (fdatasync when ``durable``); fsync the directory if new.

        The first line of a new file names the namespace: ``namespace <hex>``.
        """
        line = key.encode("utf-8").hex().encode("ascii") + b"\n"
        created = not os.path.exists(self.path)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        with _fs.open_locked(self.path, flags) as fd:
            size = os.fstat(fd).st_size
            if size == 0:
                line = _NS_PREFIX + namespace.encode("utf-8").hex().encode("ascii") + b"\n" + line
            elif _fs.read_at(fd, size - 1, 1) != b"\n":
                line = b"\n" + line  # a torn last line stays alone on its line
            _fs.append(fd, line, durable=durable)
        if created and durable:
            _fs.fsync_dir(os.path.dirname(self.path))

    def remove(self, keys: set[str], *, durable: bool) -> None:
        """Rewrite the file without ``keys`` (atomically: temporary file, fsync, rename)."""
        drop = {k.encode("utf-8").hex().encode("ascii") for k in keys}
        with _fs.open_locked(self.path, os.O_RDWR) as fd:
            data = _fs.read_at(fd, 0, os.fstat(fd).st_size)
            complete = data[: data.rfind(b"\n") + 1]
            kept = [line for line in complete.split(b"\n") if line and line not in drop]
            _fs.atomic_write(self.path, b"".join(x + b"\n" for x in kept), durable=durable)


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


def namespace_of(keys_path: str) -> str | None:
    """The namespace named by the first line of a ``KEYS`` file, or None."""
    try:
        with open(keys_path, "rb") as fh:
            first = fh.readline(2 * 4096 + 32)
    except FileNotFoundError:
        return None
    if not first.startswith(_NS_PREFIX) or not first.endswith(b"\n"):
        return None
    try:
        return bytes.fromhex(first[len(_NS_PREFIX) : -1].decode("ascii")).decode("utf-8")
    except ValueError:
        return None
