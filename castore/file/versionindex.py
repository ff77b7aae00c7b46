"""Version index: ``<key-id>.vix`` maps each version of a ref to its entry frame.

Derived data (docs/FORMAT.md §5): one ``u64le`` per version, version v at
byte ``8 * (v - 1)``. The value is the file offset of the ``E`` frame, or a
marker: :data:`COMPACTED` (the version was dropped by compaction),
:data:`ABSENT` (this log never held that version: an import started higher,
or the key's earlier life was compacted away), or 0 (unknown: look it up by
scanning). Writers never touch it: the first reader that needs a version
the index lacks appends what is missing (:func:`open_caught_up`), without fsync;
rewrites rebuild it whole. A reader verifies every offset it uses (the frame
there must be the ``E`` frame of that version) and falls back to a scan. This makes
get-at-version and history pages cost the same at version 100 and 100,000.

A handle keeps the logs it reads versions of open with their indexes
(:class:`castore.file.readers.KeptReaders`): a warm get at a version costs a
``stat`` and two reads. An index is bounded by its log (:func:`index_limit`).
"""

from __future__ import annotations

import contextlib
import os
import struct

from castore.errors import RecordError
from castore.file import fileio, logread
from castore.file.frames import FRAME_OVERHEAD, Frame, scan_frames
from castore.file.records import KIND_COMPACTED, KIND_ENTRY, decode_compaction, decode_entry
from castore.file.tree import Tree
from castore.waits import would_wait

__all__ = [
    "ABSENT",
    "COMPACTED",
    "MAX_INDEXED_VERSION",
    "MAX_OFFSET",
    "MIN_INDEX_BYTES",
    "VIX_RECORD_BYTES",
    "highest_recorded",
    "index_limit",
    "lookup",
    "lookup_range",
    "may_record_beyond",
    "newest_version",
    "open_caught_up",
    "rebuild",
    "record_cut",
    "vix_path",
]

VIX_RECORD_BYTES = 8  # one u64le per version
COMPACTED = 1  # marker: version dropped by compaction (no frame can start at offset 1)
ABSENT = 2  # marker: this log never held the version
MAX_INDEXED_VERSION = 1 << 24  # 128 MiB of index at most; higher versions are found by a scan
MIN_INDEX_BYTES = 1 << 20  # an index may always cover the first 131,072 versions
_REC = struct.Struct("<Q")
_HEAD = struct.Struct("<IB")  # a frame's length and kind
MAX_OFFSET = 1 << 62  # larger values are damage (pread takes a signed 64-bit offset)


def vix_path(log_path: str) -> str:
    """The version index next to a ``.log`` file."""
    return log_path[: -len(".log")] + ".vix"


def _value(raw: int) -> int | None:  # an offset or a marker, else None (0: unknown)
    return raw if 0 < raw < MAX_OFFSET else None


def lookup(vix_fd: int, version: int) -> int | None:
    """Offset (or marker) of ``version``, or None when unknown (an offset is a hint)."""
    if not 1 <= version <= MAX_INDEXED_VERSION:
        return None
    raw = os.pread(vix_fd, VIX_RECORD_BYTES, (version - 1) * VIX_RECORD_BYTES)
    if len(raw) != VIX_RECORD_BYTES:
        return None
    return _value(_REC.unpack(raw)[0])


def lookup_range(vix_fd: int, low: int, high: int) -> dict[int, int]:
    """Offsets (or markers) of versions ``low..high`` (inclusive) that are known, in one read."""
    low, high = max(low, 1), min(high, MAX_INDEXED_VERSION)
    if high < low:
        return {}
    raw = fileio.read_at(vix_fd, (low - 1) * VIX_RECORD_BYTES, (high - low + 1) * VIX_RECORD_BYTES)
    out = {}
    for i in range(len(raw) // VIX_RECORD_BYTES):
        value = _value(_REC.unpack_from(raw, i * VIX_RECORD_BYTES)[0])
        if value is not None:
            out[low + i] = value
    return out


def may_record_beyond(st: os.stat_result, version: int) -> bool:
    """Whether an index of this size can record a version above ``version`` (read it to know)."""
    return st.st_size // VIX_RECORD_BYTES > version


def highest_recorded(data: bytes) -> int:
    """The highest version an index's bytes give an entry offset for (0 if none)."""
    for version in range(len(data) // VIX_RECORD_BYTES, 0, -1):
        value = _value(_REC.unpack_from(data, (version - 1) * VIX_RECORD_BYTES)[0])
        if value is not None and value not in (COMPACTED, ABSENT):
            return version
    return 0


def lost_log(fs: Tree, log_path: str, grave: int) -> int:
    """For a log that does not exist: the highest version its index records above ``grave``.

    The index is built from the log only, and compaction removes both
    (recording the last version in ``grave`` first), so such a version was
    in a log that was lost. 0: no index, or nothing above ``grave``.
    """
    would_wait("a lost log's whole version index")  # a rare path: not on an event loop
    try:
        data = fs.read_file(vix_path(log_path))
    except FileNotFoundError:
        return 0
    top = highest_recorded(data)
    return top if top > grave and not fs.exists(log_path) else 0  # not created meanwhile


def record_cut(fs: Tree, vix: str, version: int, offset: int) -> None:
    """Record in the index at ``vix`` that ``version``'s entry frame was at ``offset``.

    For a handle that read or wrote ``version`` in a log that now ends below
    it, or is gone (FORMAT.md §7, "A cut a handle saw"): ``offset`` is at or
    past the end of the log's intact frames, so the record is the evidence
    every reader, writer and ``check`` finds (``castore.file.cuts``,
    :func:`lost_log`). Versions between stay 0 (unknown); a marker already
    recorded for ``version`` is kept. No fsync, as for every record of the
    index.

    Raises:
        OSError: the index cannot be written (a read-only store).
    """
    if not 1 <= version <= MAX_INDEXED_VERSION or not ABSENT < offset < MAX_OFFSET:
        return
    fd = fs.open(vix, os.O_RDWR | os.O_CREAT)
    try:
        with fileio.locked(fd, vix):
            if lookup(fd, version) not in (COMPACTED, ABSENT):  # a marker is kept
                os.pwrite(fd, _REC.pack(offset), (version - 1) * VIX_RECORD_BYTES)
    finally:
        os.close(fd)


def index_limit(log_end: int) -> int:
    """The highest version the index of a log whose intact frames end at ``log_end`` covers.

    Never larger than its log, or :data:`MIN_INDEX_BYTES` (FORMAT.md §5): a log
    whose versions start far up (an import, a key made again after compaction
    removed it) would make it markers, 8 bytes for every version below.
    (Not the file's size: a torn tail a writer cuts later must not count.)
    """
    return min(MAX_INDEXED_VERSION, max(MIN_INDEX_BYTES, log_end) // VIX_RECORD_BYTES)


def rebuild(frames: list[Frame]) -> bytes:
    """The whole index content for a log's intact frames (:func:`castore.file.logread.scan`)."""
    limit = index_limit(frames[-1].end if frames else 0)
    offsets: dict[int, int] = {}
    for frame in frames:
        if frame.kind == KIND_ENTRY:
            version = decode_entry(frame.payload).version
            if 1 <= version <= limit:
                offsets[version] = frame.start
        elif frame.kind == KIND_COMPACTED:
            for low, high in decode_compaction(frame.payload).versions:
                for version in range(max(low, 1), min(high, limit) + 1):
                    offsets.setdefault(version, COMPACTED)
    if not offsets:
        return b""
    top = max(offsets)
    return b"".join(_REC.pack(offsets.get(v, ABSENT)) for v in range(1, top + 1))


def open_caught_up(fs: Tree, vix: str, log_fd: int, want: int) -> int:
    """Open the index, extended if needed so that it covers version ``want``; return its fd.

    Writers never touch the index; the first reader that needs a version it
    lacks scans only the log bytes after the last indexed entry (or the whole
    log if the index does not match it) and appends the missing records, under
    the index file's lock. An index that already covers ``want`` (or all an
    index of this log may hold) costs one ``open`` and one ``fstat``. The
    caller closes the descriptor.

    -1 when the log on ``log_fd`` is no longer linked (a rewrite or gc
    replaced or removed it since the caller opened it): the index at ``vix``
    belongs to what the path names now, and one built from this file would
    outlive it as false evidence of lost versions.

    Raises:
        OSError: the index cannot be opened or written (a read-only store).
    """
    st = os.fstat(log_fd)
    if not st.st_nlink:
        return -1
    want = min(want, index_limit(st.st_size))  # higher versions: the caller scans
    fd = fs.open(vix, os.O_RDWR | os.O_CREAT)
    try:
        if os.fstat(fd).st_size // VIX_RECORD_BYTES < want:
            would_wait(vix)  # extending it reads the log since the last record: not on a loop
            with fileio.locked(fd, vix):
                _extend(fd, log_fd, want)
                gone = not os.fstat(log_fd).st_nlink  # removed meanwhile: not its index
                if gone:
                    with contextlib.suppress(FileNotFoundError):
                        fs.unlink(vix)
            if gone:
                os.close(fd)
                return -1
    except BaseException:
        os.close(fd)
        raise
    return fd


def _extend(fd: int, log_fd: int, want: int) -> None:
    """Append the records the index lacks: the log's entries after its last indexed one.

    An index whose last record is not where the log has that version is out of
    step with the log: it is left for check, which reads an index naming
    versions the log lost as evidence of a cut (FORMAT.md §7); lookups scan.
    Else (none yet, a marker last, a version missing after it) the log is read
    whole and the part of :func:`rebuild` past the index appended, if what the
    index holds is its start; not if no version the index may hold comes next.
    """
    top = os.fstat(fd).st_size // VIX_RECORD_BYTES
    if top >= want:
        return  # another reader extended it while we waited for the lock
    offset = lookup(fd, top) if top else None
    after = 0  # where the next entry may start
    if offset is not None and offset not in (COMPACTED, ABSENT):
        found = logread.entry_at(log_fd, offset)
        if found is None or found[0].version != top:
            return
        after = found[1]
    if _next_version(log_fd, after) > index_limit(os.fstat(log_fd).st_size):
        return
    table = _appended(log_fd, after, top) if after else None
    if table is not None:
        os.pwrite(fd, table, top * VIX_RECORD_BYTES)
        return
    whole = rebuild(logread.scan(log_fd)[1].frames)
    held = top * VIX_RECORD_BYTES
    if len(whole) > held and fileio.read_at(fd, 0, held) == whole[:held]:
        os.pwrite(fd, whole[held:], held)


def _next_version(fd: int, start: int) -> int:
    """The version of the first entry at or after ``start``, verified (0: none in 8 frames)."""
    for _ in range(8):  # a header, a compaction, blobs, then the entry (damage: never skip)
        head = os.pread(fd, _HEAD.size, start)
        if len(head) < _HEAD.size:
            return 0
        length, kind = _HEAD.unpack_from(head)
        if kind == KIND_ENTRY:
            with contextlib.suppress(RecordError):
                found = logread.entry_at(fd, start)  # verified
                return found[0].version if found is not None else 0
            return 0
        start += FRAME_OVERHEAD + length
    return 0


def _appended(log_fd: int, start: int, top: int) -> bytes | None:
    """The records of the entries from ``start`` on, after ``top``; None at a missing version."""
    size = os.fstat(log_fd).st_size
    frames = list(scan_frames(fileio.read_at(log_fd, start, size - start), start))
    limit = index_limit(frames[-1].end if frames else start)
    table, last = bytearray(), top
    for frame in frames:
        if frame.kind != KIND_ENTRY:
            continue
        version = decode_entry(frame.payload).version
        if version <= last:
            continue  # out of order: readers and check judge it, the index skips it
        if version > limit:
            break
        if version != last + 1:
            return None
        table += _REC.pack(frame.start)
        last = version
    return bytes(table)


def newest_version(frames: list[Frame]) -> int:
    """The version of the newest of a log's intact ``frames`` that is an entry (0: none)."""
    last = next((f for f in reversed(frames) if f.kind == KIND_ENTRY), None)
    return decode_entry(last.payload).version if last is not None else 0
