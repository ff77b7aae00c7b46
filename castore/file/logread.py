"""Reading a ref log open on a descriptor: its tail, a full scan, single frames.

A ref log (docs/FORMAT.md §3-§6) is a sequence of frames: one ``H`` header, an
optional ``C`` frame, then, per version, an optional ``B`` blob frame immediately
followed by its ``E`` entry frame, both written by one ``write(2)``. These functions
read; :class:`castore.file.reflog.RefLog` decides what a reading means and writes.

The fast path reads the last frame backwards from the size the reader observed. A
full forward scan tells a torn tail (a crash: the previous version is current) from
damage (:func:`damage_after`: nothing can be said about the newest version).
"""

from __future__ import annotations

import os
import struct
import threading
from typing import NamedTuple

from blake3 import blake3

from castore.backend import lost_marker
from castore.errors import CorruptionError, NotFoundError, RecordError
from castore.file import fileio
from castore.file.damage import REPAIR_HINT, damage_windows, damaged_error, marker_time
from castore.file.frames import (
    CHECKSUM_BYTES,
    FRAME_OVERHEAD,
    MAX_PAYLOAD_BYTES,
    TAIL_READ_BYTES,
    LogBytes,
    classify,
    entry_before,
    entry_version,
    frame_at,
    last_frame,
)
from castore.file.records import (
    KIND_BLOB,
    KIND_COMPACTED,
    KIND_ENTRY,
    KIND_HEADER,
    Compaction,
    Header,
    decode_compaction,
    decode_entry,
    decode_header,
)
from castore.keys import Ref
from castore.records import Entry, VersionRanges
from castore.results import rfc3339
from castore.waits import would_wait

__all__ = [
    "Tail",
    "compacted_versions",
    "compaction_of",
    "damage_after",
    "entry_and_blob",
    "entry_at",
    "entry_in",
    "header_of",
    "history_by_scan",
    "newest_in",
    "read_all",
    "read_tail",
    "refuse_other",
    "scan",
]

_NOT_ENTRIES = (KIND_BLOB, KIND_HEADER, KIND_COMPACTED)
_HEAD = struct.Struct("<IB")  # a frame's length and kind
_U32 = struct.Struct("<I")
_hashers = threading.local()  # ``blake3``: one hasher per thread, reset before each use


class Tail(NamedTuple):
    """What a reader learned about a log at one moment.

    Attributes:
        size: the file size the read was based on.
        valid_end: end of the last valid frame; ``< size`` means a torn tail.
        entry: the newest entry, or None when the log has none yet.
        blob: the payload of the entry's own ``B`` frame when it was in the
            bytes read (saves a second read), else None.
        header: the header when it was read (scans only), else None.
        entry_start: file offset of the newest entry's frame (0 when none).
        before: the version of an earlier entry as high as the newest one's
            (the one just before it; scans: the highest of all), else 0. Not
            0: an entry out of order, which castore never appends (damage:
            the newest version is unknown, docs/FORMAT.md §7).
    """

    size: int
    valid_end: int
    entry: Entry | None
    blob: bytes | None
    header: Header | None
    entry_start: int = 0
    before: int = 0


def _tail_from_buffer(buf: bytes, base: int, size: int, fd: int) -> Tail | None:
    frame = last_frame(buf, base)
    if frame is None:
        return None
    if frame.kind == KIND_HEADER and frame.start == 0:
        return Tail(size, size, None, None, decode_header(frame.payload))
    if frame.kind != KIND_ENTRY:
        return None
    entry = decode_entry(frame.payload)
    blob = None
    loc = entry.blob
    if loc is not None and not loc.log and loc.offset >= base:
        start = loc.offset - base
        candidate = last_frame(buf[start : start + loc.length], loc.offset)
        digest_ok = candidate is not None and candidate.payload[:32].hex() == entry.hash
        if candidate is not None and candidate.kind == KIND_BLOB and digest_ok:
            blob = candidate.payload
    # Where the entry before starts looking: before this version's own blob when adjacent.
    own = blob is not None and loc is not None and loc.offset + loc.length == frame.start
    end = loc.offset if own and loc is not None else frame.start
    before = entry_before(buf, base, end, lambda at, n: fileio.read_at(fd, at, n), entry.version)
    return Tail(size, size, entry, blob, None, frame.start, before)


def read_tail(fd: int, size: int) -> Tail | None:
    """Read the newest entry of the log open on ``fd``, assuming it is ``size`` long.

    Returns:
        The tail, or None when the bytes before ``size`` do not end with a
        valid frame (a torn tail, or a write still in progress).

    Raises:
        RecordError: when a checksummed record does not decode.
    """
    if size == 0:
        return Tail(0, 0, None, None, None)
    start = max(0, size - TAIL_READ_BYTES)
    buf = fileio.read_at(fd, start, size - start)
    if len(buf) != size - start:
        return None
    tail = _tail_from_buffer(buf, start, size, fd)
    if tail is not None or start == 0:
        return tail
    # The newest frame may be longer than one page: read exactly its extent.
    length = int.from_bytes(buf[-4:], "little")
    begin = size - FRAME_OVERHEAD - length
    if begin < 0 or begin >= start:
        return None
    whole = fileio.read_at(fd, begin, size - begin)
    return _tail_from_buffer(whole, begin, size, fd)


def read_all(fd: int) -> tuple[bytes, int]:
    """Read a whole log; return its bytes and size."""
    size = os.fstat(fd).st_size
    return fileio.read_at(fd, 0, size), size


def scan(fd: int) -> tuple[Tail, LogBytes]:
    """Read the whole log forwards; return its tail and its bytes sorted (frames, damage).

    ``Tail.valid_end`` is where a torn tail starts (the size when none).
    Damage does not stop the scan: later frames are found past it, and
    :func:`damage_after` says whether it may hide the newest version.

    Raises:
        RecordError: when a checksummed record does not decode.
        WouldWait: this thread refused to wait (a whole file: :mod:`castore.waits`).
    """
    would_wait("a whole-log scan")
    buf, size = read_all(fd)
    log = classify(buf)
    header, entry_frame, before, newest = None, None, 0, 0
    for frame in log.frames:
        if frame.kind == KIND_HEADER and header is None:
            header = decode_header(frame.payload)
        elif frame.kind == KIND_ENTRY:
            before = max(before, newest)
            entry_frame = frame
            newest = entry_version(frame.payload)
    if entry_frame is None:
        return Tail(size, log.torn, None, None, header), log
    entry = decode_entry(entry_frame.payload)
    blob = None
    loc = entry.blob
    if loc is not None and not loc.log:
        for frame in log.frames:
            if frame.start == loc.offset and frame.kind == KIND_BLOB:
                blob = frame.payload if frame.payload[:32].hex() == entry.hash else None
    before = before if before >= entry.version else 0
    return Tail(size, log.torn, entry, blob, header, entry_frame.start, before), log


def damage_after(log: LogBytes, tail: Tail) -> tuple[int, int] | None:
    """The first damaged range after the newest intact entry (anywhere, if there is none).

    Such damage may be a newer version's entry: the log's newest version is
    then unknown, and neither readers nor writers may act on ``tail.entry``.
    """
    after = tail.entry_start if tail.entry is not None else -1
    return next(
        (
            (s, e)
            for s, e in log.damage
            # exactly one blob, header or compaction frame (its lengths and kind
            # intact) cannot hide an entry
            if s > after and not any(log.one_frame_of_kind(s, e, k) for k in _NOT_ENTRIES)
        ),
        None,
    )


_HEAD_READ = 512  # a header of names up to ~140 bytes each: one short read


def header_of(fd: int) -> Header | None:
    """The header frame at the start of the log open on ``fd``, or None if it is not intact."""
    buf = fileio.read_at(fd, 0, _HEAD_READ)  # most headers: every write checks one
    if len(buf) >= FRAME_OVERHEAD:
        length = int.from_bytes(buf[:4], "little")
        if length + FRAME_OVERHEAD > len(buf) and length <= MAX_PAYLOAD_BYTES:
            buf = fileio.read_at(fd, 0, length + FRAME_OVERHEAD)
    frame = frame_at(buf, 0)
    if frame is None or frame.kind != KIND_HEADER:
        return None
    try:
        return decode_header(frame.payload)
    except RecordError:
        return None


def entry_at(fd: int, offset: int) -> tuple[Entry, int] | None:
    """The entry whose ``E`` frame starts at ``offset``, with the frame's end; None if not one.

    Raises:
        RecordError: when a checksummed record does not decode.
    """
    buf = fileio.read_at(fd, offset, TAIL_READ_BYTES)
    if len(buf) < FRAME_OVERHEAD:
        return None
    length = int.from_bytes(buf[:4], "little")
    if length + FRAME_OVERHEAD > len(buf):
        buf = fileio.read_at(fd, offset, length + FRAME_OVERHEAD)
    frame = frame_at(buf, 0, offset)
    if frame is None or frame.kind != KIND_ENTRY:
        return None
    return decode_entry(frame.payload), frame.end


def entry_and_blob(
    fd: int, offset: int, version: int, start: int, end: int
) -> tuple[Entry, bytes | None] | None:
    """The entry of ``version`` whose ``E`` frame starts at ``offset``, and its blob's payload.

    One read takes the bytes from ``start`` to ``end``: the caller's guess at
    where the entry's ``B`` frame begins (they are written together, FORMAT.md
    §6) and the entry frame ends. Both frames are verified as
    :func:`~castore.file.frames.frame_at` does (lengths, checksum), then their
    kind, the entry's version and the blob frame's extent; the blob's payload
    still has to pass :func:`~castore.file.records.decode_blob` (digest field,
    sha256). The blob is None when it is not in the bytes read (a value seen
    before, a larger frame): the blob reader then reads it.

    Returns:
        None when no intact ``E`` frame of ``version`` starts at ``offset``.

    Raises:
        RecordError: when a checksummed record does not decode.
    """
    buf = os.pread(fd, end - start, start)  # a short read fails the checks below
    frame = _frame_in(buf, offset - start)
    if frame is None:  # longer than the read, or not a frame
        found = entry_at(fd, offset)
        return (found[0], None) if found is not None and found[0].version == version else None
    if frame[0] != KIND_ENTRY:
        return None
    entry = decode_entry(frame[1])
    if entry.version != version:
        return None
    loc = entry.blob
    if loc is None or loc.log or loc.offset < start:
        return entry, None
    at = loc.offset - start
    blob = _frame_in(buf, at)
    if blob is None or blob[0] != KIND_BLOB or blob[2] != at + loc.length:
        return entry, None  # the blob reader looks further (and reports damage)
    return entry, blob[1]


def _frame_in(buf: bytes, at: int) -> tuple[int, bytes, int] | None:
    """``(kind, payload, end)`` of the frame at ``at`` in ``buf`` if it is intact, else None.

    :func:`~castore.file.frames.frame_at`'s checks (both lengths, the
    checksum) with fewer copies, on this thread's reused hasher (a new one
    costs more than hashing a small frame): the warm get at a version.
    """
    if at < 0 or at + FRAME_OVERHEAD > len(buf):
        return None
    length, kind = _HEAD.unpack_from(buf, at)
    end = at + FRAME_OVERHEAD + length
    if end > len(buf) or _U32.unpack_from(buf, end - 4)[0] != length:
        return None
    body = buf[at : at + 5 + length]
    try:
        hasher = _hashers.blake3
    except AttributeError:
        hasher = _hashers.blake3 = blake3()
    hasher.reset()  # first: a call interrupted mid-way leaves nothing behind
    hasher.update(body)
    if hasher.digest(CHECKSUM_BYTES) != buf[end - 4 - CHECKSUM_BYTES : end - 4]:
        return None
    return kind, body[5:], end


def compaction_of(fd: int) -> Compaction | None:
    """The log's compaction frame (it follows the header), if it has an intact one."""
    head = fileio.read_at(fd, 0, TAIL_READ_BYTES)
    header = frame_at(head, 0)
    if header is None:
        return None
    frame = frame_at(head, header.end)
    if frame is None:  # longer than the first read
        length = int.from_bytes(head[header.end : header.end + 4], "little")
        frame = frame_at(fileio.read_at(fd, header.end, length + FRAME_OVERHEAD), 0, header.end)
    if frame is None or frame.kind != KIND_COMPACTED:
        return None
    return decode_compaction(frame.payload)


def compacted_versions(fd: int) -> VersionRanges:
    """Versions named by the log's compaction frame."""
    done = compaction_of(fd)
    return VersionRanges(done.versions if done is not None else ())


def history_by_scan(fd: int, before: int, limit: int) -> list[Entry]:
    """History from a full scan, newest first; a damaged range becomes an ``OP_DAMAGED`` marker."""
    log = scan(fd)[1]
    placed = [(f.start, decode_entry(f.payload)) for f in log.frames if f.kind == KIND_ENTRY]
    entries = [e for _, e in placed]
    for window in damage_windows(log):
        if window.high is not None:
            size = window.end - window.start
            reason = f"damaged bytes at offset {window.start} ({size} bytes); {REPAIR_HINT}"
            stamp = marker_time(placed, window, 0)  # as check --repair's marker will have
            entries.append(lost_marker(window.low, window.high, stamp, reason))
    entries.sort(key=lambda e: e.version)
    newest_first = [e for e in reversed(entries) if e.version < before]
    return newest_first[:limit] if limit else newest_first


def refuse_other(fd: int, ref: Ref, path: str) -> None:
    """Refuse the log on ``fd`` if its intact header names another ref than ``ref``.

    A log copied over another key's (by hand, a restore gone wrong, a hostile
    writer) holds valid frames of the wrong key: they must never be served or
    continued as this key's. A log without an intact header yet (being
    created, or damaged) is left to the reads and ``check``.

    Raises:
        CorruptionError: naming the ref the header names.
    """
    named = header_of(fd)
    if named is not None and (named.scope, named.namespace, named.key) != ref:
        other = Ref(named.scope, named.namespace, named.key)
        raise CorruptionError(
            f"{ref}: {path} is the log of {other} (its header says so); castore check reports it"
        )


def entry_in(log: LogBytes, version: int, what: str, path: str) -> Entry | None:
    """The entry holding ``version`` in a scanned log (a damaged range's too), or None.

    Raises:
        NotFoundError: a ``C`` frame says compaction dropped it.
        CorruptionError: damage in the log may hide it (``what``, ``path``: for the message).
    """
    for frame in log.frames:
        if frame.kind == KIND_ENTRY:
            entry = decode_entry(frame.payload)
            if entry.first <= version <= entry.version:
                return entry  # a damaged range raises when its value is read
        elif frame.kind == KIND_COMPACTED:
            dropped = decode_compaction(frame.payload).dropped_by(version)
            if dropped is not None:
                raise NotFoundError(
                    f"{what} version {version} was compacted ({dropped[0]}, {rfc3339(dropped[1])})"
                )
    for window in damage_windows(log):
        if window.low <= version and (window.high is None or version <= window.high):
            raise damaged_error(path, window.start, window.end, f"{what} version {version}")
    return None


def newest_in(fd: int) -> Entry | None:
    """The newest intact entry of the log on ``fd``, past a torn tail (a copy made mid-write)."""
    tail = read_tail(fd, os.fstat(fd).st_size)
    return (tail if tail is not None else scan(fd)[0]).entry
