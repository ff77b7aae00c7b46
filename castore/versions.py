"""Version index: ``<key-id>.vix`` maps each version of a ref to its entry frame.

Derived data (docs/FORMAT.md §5): ``u64le`` file offset of the ``E`` frame of
version v at byte ``8 * (v - 1)``; 0 means "no such version here" (a gap
left by an import or by compaction). Written after the log append, under
the ref's lock, without fsync. A writer that finds the index out of step with
the log rebuilds it from a scan; a reader verifies every offset it uses (the
frame there must be an ``E`` frame of that version) and falls back to a scan.
This makes get-at-version and history pages cost the same for the 100th and
the 100,000th version.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from castore import _fs, reflog
from castore.frames import Frame
from castore.records import KIND_ENTRY, decode_entry

__all__ = [
    "MAX_INDEXED_VERSION",
    "VIX_RECORD_BYTES",
    "lookup",
    "lookup_range",
    "rebuild",
    "record",
    "vix_path",
]

VIX_RECORD_BYTES = 8  # one u64le offset per version
_REC = struct.Struct("<Q")
MAX_INDEXED_VERSION = 1 << 24  # 128 MiB of index at most; higher versions are found by a scan
_MAX_OFFSET = 1 << 62  # larger offsets are damage (pread takes a signed 64-bit offset)


def vix_path(log_path: str) -> str:
    """The version index next to a ``.log`` file."""
    return log_path[: -len(".log")] + ".vix"


def lookup(vix_fd: int, version: int) -> int | None:
    """Offset of version ``version``'s entry frame, or None when unknown (a hint)."""
    if not 1 <= version <= MAX_INDEXED_VERSION:
        return None
    raw = os.pread(vix_fd, VIX_RECORD_BYTES, (version - 1) * VIX_RECORD_BYTES)
    if len(raw) != VIX_RECORD_BYTES:
        return None
    offset: int = _REC.unpack(raw)[0]
    return offset if 0 < offset < _MAX_OFFSET else None


def lookup_range(vix_fd: int, low: int, high: int) -> dict[int, int]:
    """Offsets of versions ``low..high`` (inclusive) that the index knows, in one read."""
    low, high = max(low, 1), min(high, MAX_INDEXED_VERSION)
    if high < low:
        return {}
    raw = _fs.read_at(vix_fd, (low - 1) * VIX_RECORD_BYTES, (high - low + 1) * VIX_RECORD_BYTES)
    out = {}
    for i in range(len(raw) // VIX_RECORD_BYTES):
        offset = _REC.unpack_from(raw, i * VIX_RECORD_BYTES)[0]
        if 0 < offset < _MAX_OFFSET:
            out[low + i] = offset
    return out


def rebuild(frames: Iterable[Frame]) -> bytes:
    """The whole index content for a log's frames (from :func:`castore.reflog.scan`)."""
    offsets: dict[int, int] = {}
    for frame in frames:
        if frame.kind == KIND_ENTRY:
            version = decode_entry(frame.payload).version
            if 1 <= version <= MAX_INDEXED_VERSION:
                offsets[version] = frame.start
    if not offsets:
        return b""
    table = bytearray(VIX_RECORD_BYTES * max(offsets))
    for version, start in offsets.items():
        _REC.pack_into(table, (version - 1) * VIX_RECORD_BYTES, start)
    return bytes(table)


def record(
    vix: str, previous: tuple[int, int] | None, new: list[tuple[int, int]], log_fd: int
) -> None:
    """Add ``new`` (version, offset) pairs; rebuild first if the index is out of step.

    Args:
        vix: path of the index.
        previous: (version, offset) of the log's newest entry before the write, or None.
        new: the entries just appended.
        log_fd: the locked log, scanned when a rebuild is needed.
    """
    fd = os.open(vix, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        expected = min(previous[0], MAX_INDEXED_VERSION) * VIX_RECORD_BYTES if previous else 0
        in_step = size == expected and (previous is None or lookup(fd, previous[0]) == previous[1])
        if not in_step:
            os.ftruncate(fd, 0)
            table = rebuild(reflog.scan(log_fd)[1])
            os.pwrite(fd, table, 0)
            return  # the scan already saw the new entries
        for version, offset in new:
            if version <= MAX_INDEXED_VERSION:
                os.pwrite(fd, _REC.pack(offset), (version - 1) * VIX_RECORD_BYTES)
    finally:
        os.close(fd)
