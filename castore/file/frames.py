"""Self-checking frames: the record grammar shared by every castore log file.

A frame (docs/FORMAT.md §3) is::

    frame    := length:u32le  type:u8  payload[length]  checksum[16]  length:u32le
    checksum := blake3(length:u32le || type || payload), first 16 bytes

The length appears at both ends, so a log can be read backwards from its end
(the newest record) in O(1), and forwards from its start. A frame whose two
lengths disagree or whose checksum fails is not a frame. :func:`classify`
tells the two kinds of invalid bytes apart (docs/FORMAT.md §7): a *torn
tail*, which only an interrupted, never acknowledged append can leave, and
*damage*, which nothing but a fault after the fact can.

Pure: works on ``bytes``; no I/O.
"""

from __future__ import annotations

import collections
import re
import struct
from collections.abc import Callable, Iterator

import blake3

from castore.jsonrules import MAX_VALUE_BYTES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import NamedTuple

    class _FrameFields(NamedTuple):
        kind: int
        payload: bytes
        start: int
        end: int

    class _LogBytesFields(NamedTuple):
        frames: list[Frame]
        damage: list[tuple[int, int]]
        torn: int
        size: int
        data: bytes = b""

else:  # the same tuple types, without loading typing at run time
    _FrameFields = collections.namedtuple("_FrameFields", ("kind", "payload", "start", "end"))
    _LogBytesFields = collections.namedtuple(
        "_LogBytesFields", ("frames", "damage", "torn", "size", "data"), defaults=(b"",)
    )

__all__ = [
    "BEFORE_UNKNOWN",
    "BLOB_FRAME_MAX",
    "CHECKSUM_ALGO",
    "CHECKSUM_BYTES",
    "FORMAT_VERSION",
    "FRAME_OVERHEAD",
    "MAX_PAYLOAD_BYTES",
    "TAIL_READ_BYTES",
    "Frame",
    "LogBytes",
    "classify",
    "classify_twinned",
    "encode_frame",
    "entry_before",
    "entry_version",
    "frame_at",
    "last_frame",
    "scan_frames",
]

FORMAT_VERSION = 2  # docs/FORMAT.md §2; 1 had GRAVES as unchecked text lines
CHECKSUM_ALGO = "blake3"
CHECKSUM_BYTES = 16  # blake3 output truncated to 128 bits
FRAME_OVERHEAD = 4 + 1 + CHECKSUM_BYTES + 4  # 25 bytes around each payload
MAX_PAYLOAD_BYTES = 64 << 20  # 64 MiB: anything larger is a corrupt length field
TAIL_READ_BYTES = 4096  # one read from a log's end: holds the newest entry and, usually, its blob
BLOB_FRAME_MAX = FRAME_OVERHEAD + 33 + MAX_VALUE_BYTES  # a B frame of a value at the limit, raw

_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<IB")


_KINDS = frozenset(range(ord("A"), ord("Z") + 1))  # frame kinds are ASCII capitals
_ENTRY, _BLOB, _HEADER = ord("E"), ord("B"), ord("H")  # castore.file.records' (this is pure)
_VERSION_FIELD = b'{"version":'  # how every entry castore encodes begins (records.Entry)
_ENTRY_FRAME_READ_MAX = 1 << 20  # a longer entry frame before the newest is not read
# B frames entry_before passes on its way back: its own, lone ones, copies someone appended.
# Bounded: compaction, gc and an import's overwrite leave runs of thousands before an entry.
_BLOBS_PASSED = 16
# entry_before's answer when the bytes before the newest entry are damaged (above every version).
BEFORE_UNKNOWN = 1 << 64


class Frame(_FrameFields):
    """A verified frame: its type byte, payload and byte range (kind, payload, start, end)."""

    __slots__ = ()


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


def entry_before(
    buf: bytes, base: int, end: int, read: Callable[[int, int], bytes], at_least: int
) -> int:
    """The version of the entry before file offset ``end``, if it is ``at_least`` or more (else 0).

    Versions increase along a log, so the entry before the newest holds a
    lower version: one as high (``at_least`` is the newest's) is an entry out
    of order (docs/FORMAT.md §7). ``end`` is where the newest entry's frame
    starts; up to ``_BLOBS_PASSED`` ``B`` frames before it (its own, lone
    ones a crash left, copies someone appended) are passed by their lengths.
    ``buf`` holds the log's bytes from file offset ``base``; ``read(offset,
    length)`` reads what they lack (bounded reads). The frame found there is
    verified (its checksum: a damaged version or kind byte may read as an
    entry in order, or as a header). The header, a compaction frame or a
    longer frame answers 0; bytes that are not an intact frame there, or a
    header that does not begin the log (a copy), answer
    :data:`BEFORE_UNKNOWN`: damage before the newest entry may have held
    any version, so only a scan of the whole log can say whether the newest
    is in order.
    """
    passed = 0
    while True:
        if end - base >= 4:  # the common case: every byte needed is in ``buf``
            length = _U32.unpack_from(buf, end - base - 4)[0]
        else:
            raw = read(end - 4, 4) if end >= 4 else b""
            if len(raw) != 4:
                return 0
            length = _U32.unpack(raw)[0]
        start = end - FRAME_OVERHEAD - length
        if start < 0 or length > MAX_PAYLOAD_BYTES:
            return BEFORE_UNKNOWN
        inside = start >= base
        head = buf[start - base : start - base + 5] if inside else read(start, 5)
        if len(head) != 5 or _HEAD.unpack(head) != (length, head[4]):
            return BEFORE_UNKNOWN
        if head[4] == _BLOB and passed < _BLOBS_PASSED:
            passed += 1
            end = start  # a blob: its entry's, or a crash's lone one; the entry is before it
            continue
        if head[4] not in _KINDS:
            return BEFORE_UNKNOWN
        if head[4] == _BLOB or length > _ENTRY_FRAME_READ_MAX:
            return 0  # more blobs than are passed, or a longer frame: not read
        data = buf[start - base : end - base] if inside else read(start, end - start)
        frame = frame_at(data, 0, start)  # verified: a damaged version may read as lower
        if frame is None or (frame.kind == _HEADER and start > 0):
            return BEFORE_UNKNOWN  # damaged (its kind and version unknown), or a copy planted
        version = entry_version(frame.payload) if frame.kind == _ENTRY else 0
        return version if version >= at_least else 0


def entry_version(payload: bytes) -> int:
    """The version an ``E`` payload begins with, as castore encodes entries (0: not so)."""
    stop = payload.find(b",", len(_VERSION_FIELD))
    digits = payload[len(_VERSION_FIELD) : stop]
    if not payload.startswith(_VERSION_FIELD) or not digits.isdigit() or len(digits) > 19:
        return 0
    return int(digits)


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
        frame = frame_at(buf, pos, base) or _next_frame(buf, pos + 1, base)
        if frame is None:
            return
        yield frame
        pos = frame.end - base


class LogBytes(_LogBytesFields):
    """A log file's bytes sorted into intact frames, damage and a torn tail.

    Attributes:
        frames: every intact frame, in file order.
        damage: ``(start, end)`` byte ranges that are neither frames nor a
            torn tail: a fault changed bytes that were written completely.
        torn: start of the torn tail (``size`` when there is none).
        size: the number of bytes examined.
        data: the bytes examined (``data[0]`` is at file offset ``size - len(data)``).
    """

    __slots__ = ()

    def one_frame_of_kind(self, start: int, end: int, kind: int) -> bool:
        """True if the damaged range ``[start, end)`` is exactly one frame of ``kind``.

        Both length fields and the kind byte survived (only the payload or
        checksum changed), so the range was that frame and nothing else.
        """
        found = self._one_frame(start, end)
        if found is None or found[0] != kind:
            return False
        # The checksum covers the kind byte: the damaged byte may be that one. A frame
        # that verifies as an entry, or whose payload begins as an entry's, was one.
        return kind == _ENTRY or not self._entry_like(
            start - (self.size - len(self.data)), found[1]
        )

    def one_entry_frame(self, start: int, end: int) -> bool:
        """True if the damaged range ``[start, end)`` is exactly one entry's frame.

        Its length fields survived, and its kind byte says ``E`` or the frame
        is an entry's whatever that byte says (:meth:`one_frame_of_kind`).
        """
        found = self._one_frame(start, end)
        base = self.size - len(self.data)
        return found is not None and (
            found[0] == _ENTRY or self._entry_like(start - base, found[1])
        )

    def _one_frame(self, start: int, end: int) -> tuple[int, int] | None:
        """The kind byte and length of the one frame ``[start, end)`` is, lengths intact."""
        base = self.size - len(self.data)
        if end - start < FRAME_OVERHEAD or start < base:
            return None
        length: int
        found: int
        length, found = _HEAD.unpack_from(self.data, start - base)
        trailing: int = _U32.unpack_from(self.data, end - base - 4)[0]
        if trailing != length or end - start != FRAME_OVERHEAD + length:
            return None
        return found, length

    def _entry_like(self, at: int, length: int) -> bool:
        """Whether the frame at ``data[at:]`` (of ``length``) may be an entry's, damaged."""
        payload = bytes(self.data[at + 5 : at + 5 + length])
        checksum = bytes(self.data[at + 5 + length : at + 5 + length + CHECKSUM_BYTES])
        if _checksum(_HEAD.pack(length, _ENTRY), payload) == checksum:
            return True
        return _VERSION_FIELD in payload[: len(_VERSION_FIELD) + 8]


# Where a frame may start: its length's high byte is at most 3 (<= 64 MiB) and its kind
# is an ASCII capital; the match is 3 bytes after the frame's start.
_CANDIDATE = re.compile(rb"[\x00-\x03][A-Z]")


def _next_frame(buf: bytes | memoryview, pos: int, base: int) -> Frame | None:
    """The first valid frame starting at or after ``pos``.

    Only positions whose header is plausible are verified, so a search
    through megabytes of text or compressed data costs a regex scan, not a
    checksum per byte.
    """
    size = len(buf)
    for match in _CANDIDATE.finditer(buf, pos + 3, max(pos + 3, size - FRAME_OVERHEAD + 5)):
        frame = frame_at(buf, match.start() - 3, base)
        if frame is not None:
            return frame
    return None


def _torn(buf: bytes | memoryview, pos: int) -> bool:
    """True if the bytes from ``pos`` to the end can only be a cut-short append.

    An interrupted append leaves a *prefix* of its frames: the frame that
    begins at ``pos`` declares (with a plausible kind and length) an end
    beyond the end of the file, and no frame follows. A frame whose extent
    fits in the file but fails its check is damage, and so is a frame whose
    trailing length, read from the end of the file, points back at ``pos``
    (its leading length was changed). Zero-filled bytes are damage too: no
    frame kind is 0 (FORMAT.md §7 explains why that is the safe reading).
    """
    size = len(buf)
    if size - pos < FRAME_OVERHEAD:
        return True  # too short to have been a whole frame: never acknowledged
    length, kind = _HEAD.unpack_from(buf, pos)
    if kind not in _KINDS or length > MAX_PAYLOAD_BYTES:
        return False
    if pos + FRAME_OVERHEAD + length <= size:
        return False
    if size - pos >= FRAME_OVERHEAD:
        trailing = _U32.unpack_from(buf, size - 4)[0]
        if size - FRAME_OVERHEAD - trailing == pos:
            return False
    return _next_frame(buf, pos + 1, 0) is None


def classify(buf: bytes | memoryview, base: int = 0) -> LogBytes:
    """Sort a whole log's bytes into intact frames, damage ranges and a torn tail.

    Frames are chained by their lengths from the start. Where the chain
    breaks, the rest of the file is a torn tail if :func:`_torn` says only
    an interrupted append explains it; otherwise the bytes up to the next
    valid frame are damage and the chain resumes there, so one damaged
    record never hides the records after it. Linear in ``len(buf)``.
    """
    frames: list[Frame] = []
    damage: list[tuple[int, int]] = []
    size = len(buf)
    pos = 0
    while pos < size:
        frame = frame_at(buf, pos, base)
        if frame is not None:
            frames.append(frame)
            pos = frame.end - base
            continue
        if _torn(buf, pos):
            return LogBytes(frames, damage, base + pos, base + size, bytes(buf))
        following = _next_frame(buf, pos + 1, base)
        end = size if following is None else following.start - base
        damage.append((base + pos, base + end))
        pos = end
    return LogBytes(frames, damage, base + size, base + size, bytes(buf))


def classify_twinned(buf: bytes, base: int = 0) -> LogBytes:
    """:func:`classify` for a file of twinned frames (``GRAVES``), each pair checked once.

    Where a frame's bytes are followed by the same bytes, the first frame's checks
    vouch for both (a command that creates a key reads every grave). From the first
    place that is not so (damage, a torn append), :func:`classify` sorts the rest.
    The first frame's checks are :func:`frame_at`'s, inlined: half the time.
    """
    frames: list[Frame] = []
    pos, size = 0, len(buf)
    while size - pos >= 2 * FRAME_OVERHEAD:
        length, kind = _HEAD.unpack_from(buf, pos)
        body = pos + 5 + length  # the head and payload end, the checksum begins
        twin = body + CHECKSUM_BYTES + 4  # the second copy's start
        end = twin + twin - pos
        if length > MAX_PAYLOAD_BYTES or end > size or buf[pos:twin] != buf[twin:end]:
            break
        checksum = blake3.blake3(buf[pos:body]).digest(CHECKSUM_BYTES)  # of head and payload
        if _U32.unpack_from(buf, twin - 4)[0] != length or checksum != buf[body : twin - 4]:
            break
        payload = buf[pos + 5 : body]
        frames.append(Frame(kind, payload, base + pos, base + twin))
        frames.append(Frame(kind, payload, base + twin, base + end))
        pos = end
    rest = classify(memoryview(buf)[pos:], base + pos)
    return LogBytes([*frames, *rest.frames], rest.damage, rest.torn, rest.size, buf)
