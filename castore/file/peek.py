"""The newest value of one ref log, read with the standard library and blake3 alone.

A ``castore get`` is a new process, and loading the library (msgspec above all)
costs more than the read (docs/PERFORMANCE.md, "CLI start-up"). So the CLI asks
:func:`peek` first. It answers only in the common case, and only with what the
store's reader would answer (FORMAT.md §6, "Readers"):

- the directory holds a store of the current format (``FORMAT``);
- the ref's log, opened below the root without following a link (:class:`Tree`),
  does not exist (no live version), or ends with an intact ``E`` frame (both
  lengths and the checksum);
- the namespace's ``GRAVES`` does not name the key (else the log may be an
  older copy put back after compaction removed the key: FORMAT.md §7);
- that entry is a tombstone (no live version), or a live version (``set`` or
  ``rollback``) whose ``B`` frame is in the same log where the entry says,
  intact, with the entry's digest, and whose value hashes to it (as
  :func:`castore.valuecodec.unpack` checks).

Anything else returns None and the caller asks :class:`castore.store.Store`,
whose reader applies every rule: no store, a lost version, an empty log,
a tail that is torn, damaged or still being written, a blob in another log or
moved, an entry that does not decode as castore writes it. So ``peek`` can
only answer less often than the store, never differently: the damage matrix
asks both at every read of a key's newest version (tests/damage/scenario.py),
and tests/integration/test_quick_get.py compares the CLI's lines on damaged
copies of a log.
"""

from __future__ import annotations

import json
import os
import stat

from castore import valuecodec
from castore.digests import small_sha256
from castore.errors import CastoreError
from castore.file import fileio
from castore.file.formatfile import check_format, read_format
from castore.file.frames import (
    BLOB_FRAME_MAX,
    FRAME_OVERHEAD,
    TAIL_READ_BYTES,
    entry_before,
    frame_at,
    last_frame,
)
from castore.file.stateappend import STATE_NAME
from castore.file.tree import Tree
from castore.keys import Ref, log_name

VIX_RECORD_BYTES: Final = 8  # castore.file.versionindex's, not imported (CLI start-up)
STATE_READ_BYTES: Final = 4 << 20  # a larger STATE or GRAVES is left to the store

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Any, Final, TypeAlias

    from castore.file.frames import Frame

    Tail: TypeAlias = tuple[Frame, dict[str, Any], bytes, int]
    """The newest ``E`` frame, its entry, and the tail bytes read with their offset."""

__all__ = [
    "ABSENT",
    "VIX_RECORD_BYTES",
    "behind_state",
    "blob_value",
    "buried",
    "indexes_beyond",
    "is_store",
    "names_ref",
    "newest_entry",
    "peek",
]

ABSENT = (0, "", b"")  # what peek answers for a key without a live version

_KIND_BLOB = ord("B")  # as castore.file.records names them (that module loads msgspec)
_KIND_ENTRY = ord("E")
_KIND_HEADER = ord("H")
_LIVE_OPS = frozenset(("set", "rollback"))
_DELETE = "delete"
_INT_FIELDS = ("version", "time_ns", "size", "created_ns", "damaged_from")  # records.Entry
_REQUIRED = frozenset(("version", "op", "time_ns"))  # its fields without a default
_AUDIT_INTS = frozenset(("pid", "rollback_from"))  # records.Audit's; the others are str
_HEX = frozenset("0123456789abcdef")  # a hash is 64 of them (records.decode_entry)
_NO_VALUE = frozenset(("delete", "damaged"))  # the ops whose hash is empty
_MAX_NS: Final = (1 << 63) - 1  # the latest time castore stores (records.decode_entry)
_SEPARATORS: Final = (",", ":")  # compact, as msgspec writes (with non-ASCII as UTF-8)


def peek(root: str, ref: Ref) -> tuple[int, str, bytes] | None:
    """The newest version of ``ref`` in the store at ``root`` (absolute), or None: ask the store.

    Returns:
        Its version number, hash and value (verified); :data:`ABSENT` when it has
        no live version (no log, or a tombstone last); None: ask the store.

    Never raises for what the store would report (a missing or foreign store, a
    link, damage, an I/O error): it returns None, and the store says it.
    """
    fs = Tree(root)
    try:
        if not is_store(fs, root):
            return None
        return _read(fs, os.path.join(root, "refs", log_name(ref)), ref)
    except (OSError, CastoreError, ValueError, RecursionError):
        return None
    finally:
        fs.close()


def is_store(fs: Tree, root: str) -> bool:
    """True if ``root`` (``fs``'s root) holds a store of the current format.

    False for anything else (no directory, no ``FORMAT``, another format, a
    link or an error): the store then says what it is.
    """
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):  # the root may be a link the user chose
            return False
        marker = os.path.join(root, "FORMAT")
        text = read_format(fs, marker)
        if text is None:
            return False
        check_format(marker, text)
    except (OSError, CastoreError):
        return False
    return True


def _read(fs: Tree, path: str, ref: Ref) -> tuple[int, str, bytes] | None:
    try:
        fd = fs.open(path, os.O_RDONLY)  # without blocking, a regular file only
    except FileNotFoundError:  # the log, or a directory on its way
        # A version index without its log, or a record in the namespace's STATE, may
        # tell of a lost log: the store judges.
        if fs.exists(path[: -len(".log")] + ".vix"):
            return None
        return None if _state_names(fs, os.path.dirname(path), ref.key) else ABSENT
    try:
        return _newest(fs, path, fd, ref.key) if names_ref(fd, ref) else None
    finally:
        os.close(fd)


def _state_names(fs: Tree, nsdir: str, key: str) -> bool:
    """True if the namespace's ``STATE`` may record ``key`` (its UTF-8 bytes occur there).

    Every record names its key in plain UTF-8 (``P`` raw, ``S`` and snapshot
    rows as msgpack strings), so a file without those bytes records nothing
    of it. A file past :data:`STATE_READ_BYTES` is not read (True).
    """
    try:
        data = fs.read_file(os.path.join(nsdir, STATE_NAME), STATE_READ_BYTES + 1)
    except FileNotFoundError:
        return False
    return len(data) > STATE_READ_BYTES or key.encode("utf-8") in data


def names_ref(fd: int, ref: Ref) -> bool:
    """True if the log's first frame is an intact header naming ``ref`` (else: ask the store)."""
    head = fileio.read_at(fd, 0, TAIL_READ_BYTES)
    if len(head) >= 4 and len(head) < int.from_bytes(head[:4], "little") + FRAME_OVERHEAD:
        return False  # a header this long is rare: the store reads it
    frame = frame_at(head, 0)
    if frame is None or frame.kind != _KIND_HEADER:
        return False
    named = json.loads(frame.payload)
    fields = (
        (named.get(f) for f in ("scope", "namespace", "key")) if isinstance(named, dict) else ()
    )
    return tuple(fields) == tuple(ref)


def _newest(fs: Tree, path: str, fd: int, key: str) -> tuple[int, str, bytes] | None:
    tail = newest_entry(fd, os.fstat(fd).st_size)
    version = tail[1]["version"] if tail is not None else 0
    if (
        tail is None
        or indexes_beyond(fs, path, version)
        or buried(fs, path, key)
        or behind_state(fs, path, key, version)
    ):
        return None
    entry = tail[1]
    if entry["op"] == _DELETE:
        return ABSENT
    value = blob_value(fd, tail)
    return None if value is None else (entry["version"], entry.get("hash", ""), value)


def indexes_beyond(fs: Tree, log_path: str, version: int) -> bool:
    """Whether the log's version index may record a version above ``version``.

    Such a record is evidence that acknowledged bytes were cut off the log
    (FORMAT.md §7): the store's reader decides. One ``stat``: an index no
    longer than ``version`` records (the common case, or none) cannot.
    """
    try:
        size = fs.stat(log_path[: -len(".log")] + ".vix").st_size
    except FileNotFoundError:
        return False
    return size // VIX_RECORD_BYTES > version


def behind_state(fs: Tree, log_path: str, key: str, version: int) -> bool:
    """Whether the namespace's ``STATE`` may record a version of ``key`` above ``version``.

    Such a record is evidence that the log lost acknowledged bytes (cut short,
    or an older copy put back with its index; FORMAT.md §7): the store's
    reader decides. One failed ``open`` in the common case (no ``STATE``);
    else every msgpack string of the key there (a snapshot row or an ``S``
    record: ``[key, version, ...]``) must be followed by a version no higher.
    """
    try:
        data = fs.read_file(
            os.path.join(os.path.dirname(log_path), STATE_NAME), STATE_READ_BYTES + 1
        )
    except FileNotFoundError:
        return False
    if len(data) > STATE_READ_BYTES:
        return True  # a larger STATE is left to the store
    name = key.encode("utf-8")
    size = len(name)
    head = bytes([0xA0 | size]) if size < 32 else b"\xd9" + bytes([size]) if size < 256 else b""
    if not head:
        return name in data  # a long key: any mention asks the store
    needle, at = head + name, data.find(head + name)
    while at >= 0:
        found = _uint_at(data, at + len(needle))
        if found is None or found > version:
            return True
        at = data.find(needle, at + 1)
    return False


def _uint_at(data: bytes, at: int) -> int | None:
    """The msgpack unsigned integer at ``at`` in ``data``, or None if there is none."""
    first = data[at] if at < len(data) else -1
    if 0 <= first < 0x80:
        return first
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(first, 0)
    if not width or at + 1 + width > len(data):
        return None
    return int.from_bytes(data[at + 1 : at + 1 + width], "big")


def buried(fs: Tree, log_path: str, key: str) -> bool:
    """Whether the namespace's ``GRAVES`` may record ``key`` (compaction removed it once).

    Such a key's log may be an older copy put back (FORMAT.md §7): the
    store's reader decides. One failed ``open`` in the common case (no
    ``GRAVES``); else the file is searched for the key as a JSON string.
    """
    try:
        data = fs.read_file(os.path.join(os.path.dirname(log_path), "GRAVES"), STATE_READ_BYTES + 1)
    except FileNotFoundError:
        return False
    if len(data) > STATE_READ_BYTES:
        return True  # a larger GRAVES is left to the store
    if any(ord(c) < 0x20 or c in '"\\' for c in key):  # escaped in JSON: ask the store
        return bool(data)
    return f'"{key}"'.encode() in data


def newest_entry(fd: int, size: int) -> Tail | None:
    """The ``E`` frame that ends the first ``size`` bytes of the log, if it is the common case.

    Returns:
        The frame, its entry (exactly as castore writes one, version 1 or
        more), and the bytes read from the end (with their offset); None if
        the tail is anything else (the store's reader decides what it is).
    """
    start = max(0, size - TAIL_READ_BYTES)
    buf = fileio.read_at(fd, start, size - start)
    if len(buf) != size - start:
        return None
    frame = last_frame(buf, start)
    if frame is None or frame.kind != _KIND_ENTRY:
        return None
    entry = _entry(frame.payload)
    if entry is None or entry["version"] < 1:
        return None
    if entry_before(
        buf, start, frame.start, lambda at, n: fileio.read_at(fd, at, n), entry["version"]
    ):
        return None  # an entry out of order (docs/FORMAT.md §7): the store's reader refuses it
    return frame, entry, buf, start


def blob_value(fd: int, tail: Tail) -> bytes | None:
    """The value of the live entry of ``tail`` if its ``B`` frame is in this log; verified.

    None for a tombstone or another op, a blob in another log, or a frame
    that is not intact, not this value's or not JSON (the store decides).
    """
    frame, entry, buf, start = tail
    digest: str = entry.get("hash", "")
    blob = entry.get("blob")
    if entry["op"] not in _LIVE_OPS or blob is None or blob[0] != "":
        return None  # no blob, or one in another log: the store's reader finds it
    offset, length = blob[1], blob[2]
    if offset < 0 or offset + length > frame.start or length > BLOB_FRAME_MAX:
        return None  # the blob comes before its entry, and holds at most MAX_VALUE_BYTES
    if offset >= start:  # usually: written together with the entry
        found = frame_at(buf, offset - start, start)
    else:
        found = frame_at(fileio.read_at(fd, offset, length), 0, offset)
    if found is None or found.kind != _KIND_BLOB or found.end != offset + length:
        return None
    payload = found.payload
    if len(payload) < 33 or payload[:32].hex() != digest:
        return None
    value = valuecodec.unpacked(payload[32], payload[33:], digest)
    if small_sha256(value) != digest:  # CPython's own: a CLI get loads no OpenSSL
        return None
    json.loads(value.decode("utf-8"), parse_constant=_not_json)  # the store decodes it too
    return value


def _not_json(name: str) -> None:
    """``json``'s hook for NaN and Infinity, which are not JSON: decline."""
    raise ValueError(f"{name} is not JSON")


def _entry(payload: bytes) -> dict[str, Any] | None:
    """The entry of an ``E`` payload if it is exactly as castore writes one, else None.

    castore writes entries as compact JSON in UTF-8 (msgspec, ``records.Entry``),
    which the standard library writes back byte for byte; anything else (another
    encoding or spacing, NaN, a lone surrogate, a field of another type) is left
    to the store's reader, which decides whether it is a record at all.
    """
    text = payload.decode("utf-8")
    entry = json.loads(text, parse_constant=_not_json)
    if (
        type(entry) is not dict
        or json.dumps(entry, ensure_ascii=False, separators=_SEPARATORS) != text
        or not entry.keys() >= _REQUIRED
    ):
        return None
    if not all(_is_int(entry.get(name, 0)) for name in _INT_FIELDS):
        return None
    if not (0 < entry["time_ns"] <= _MAX_NS and 0 <= entry.get("created_ns", 0) <= _MAX_NS):
        return None  # a time no castore writes (records.decode_entry): damage
    op, digest = entry.get("op"), entry.get("hash", "")
    if type(op) is not str or type(digest) is not str:
        return None
    named = len(digest) == 64 and _HEX.issuperset(digest) if digest else op in _NO_VALUE
    if not named:  # not a sha256 digest, or a version with a value and no hash: damage
        return None
    blob = entry.get("blob")
    if blob is not None and not (
        type(blob) is list
        and len(blob) == 3
        and type(blob[0]) is str
        and all(map(_is_int, blob[1:]))
    ):
        return None
    audit = entry.get("audit", {})
    if type(audit) is not dict:
        return None
    for name, item in audit.items():
        if not (_is_int(item) if name in _AUDIT_INTS else type(item) is str):
            return None
    return entry


def _is_int(item: object) -> bool:
    """An integer that msgspec decodes into an ``int`` field (64 bits)."""
    return type(item) is int and -(1 << 63) <= item < 1 << 64
