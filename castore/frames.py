"""Self-checking frames: the record grammar shared by every castore log file.

A frame (docs/FORMAT.md §3) is::

    frame    := length:u32le  type:u8  payload[length]  checksum[16]  length:u32le
    checksum := blake3(length:u32le || type || payload), first 16 bytes

The length appears at both ends, so a log can be read backwards from its end
(the newest record) in O(1), and forwards from its start. A frame whose two
lengths disagree or whose checksum fails is not a frame: readers skip it,
writers truncate a torn tail before appending.

Pure: works on ``bytes``; no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import blake3

__all__ = [
    "CHECKSUM_ALGO",
    "CHECKSUM_BYTES",
    "FRAME_OVERHEAD",
    "MAX_PAYLOAD_BYTES",
    "Frame",
    "encode_frame",
    "frame_at",
    "last_frame",
    "scan_frames",
]

CHECKSUM_ALGO = "blake3"
CHECKSUM_BYTES = 16  # blake3 output truncated to 128 bits
FRAME_OVERHEAD = 4 + 1 + CHECKSUM_BYTES + 4  # 25 bytes around each payload
MAX_PAYLOAD_BYTES = 64 << 20  # 64 MiB: anything larger is a corrupt length field

_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<IB")


class Frame(NamedTuple):
    """A verified frame: its type byte, payload and byte range in the file."""

    kind: int
    payload: bytes
    start: int
    end: int


def _checksum(head: bytes, payload: bytes) -> bytes:
    hasher = blake3.blake3(head)
    hasher.update(payload)
    return hasher.digest(CHECKSUM_BYTES)


def encode_frame(kind: int, payload: bytes) -> bytes:
    """Frame ``payload`` with type byte ``kind`` (an ASCII letter)."""
    head = _HEAD.pack(len(payload), kind)
    return b"".join((head, payload, _checksum(head, payload), _U32.pack(len(payload))))


def frame_at(buf: bytes | memoryview, start: int, base: int = 0) -> Frame | None:
    """Parse and verify the frame that begins at ``start`` in ``buf``.

    Args:
        buf: bytes holding (part of) a log.
        start: offset of the frame within ``buf``.
        base: file offset of ``buf[0]``, added to the reported range.

    Returns:
        The frame, or None when the bytes there are not a whole valid frame.
    """
    if start < 0 or start + FRAME_OVERHEAD > len(buf):
        return None
    length, kind = _HEAD.unpack_from(buf, start)
    end = start + FRAME_OVERHEAD + length
    if length > MAX_PAYLOAD_BYTES or end > len(buf):
        return None
    if _U32.unpack_from(buf, end - 4)[0] != length:
        return None
    payload = bytes(buf[start + 5 : start + 5 + length])
    checksum = bytes(buf[end - 4 - CHECKSUM_BYTES : end - 4])
    if _checksum(bytes(buf[start : start + 5]), payload) != checksum:
        return None
    return Frame(kind, payload, base + start, base + end)


def last_frame(buf: bytes | memoryview, base: int = 0) -> Frame | None:
    """Parse the frame that ends exactly at the end of ``buf`` (reading backwards).

    Returns:
        The frame, or None when the tail of ``buf`` is not a whole valid frame
        (a torn write, or a frame longer than ``buf``).
    """
    if len(buf) < FRAME_OVERHEAD:
        return None
    length = _U32.unpack_from(buf, len(buf) - 4)[0]
    start = len(buf) - FRAME_OVERHEAD - length
    if length > MAX_PAYLOAD_BYTES or start < 0:
        return None
    frame = frame_at(buf, start, base)
    if frame is None or frame.end != base + len(buf):
        return None
    return frame


def scan_frames(buf: bytes | memoryview, base: int = 0) -> Iterator[Frame]:
    """Yield every valid frame of ``buf`` in order, resynchronising past damage.

    Valid frames are chained by their lengths. After bytes that are not a
    valid frame (a torn or corrupt record) the scan searches forward one byte
    at a time for the next valid frame, so one bad record never hides the
    records after it. Cost is linear in ``len(buf)`` for intact logs.
    """
    pos = 0
    size = len(buf)
    while pos + FRAME_OVERHEAD <= size:
        frame = frame_at(buf, pos, base)
        if frame is not None:
            yield frame
            pos = frame.end - base
        else:
            pos += 1
