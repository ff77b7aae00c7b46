"""A log's frames read forwards in bounded chunks, while they chain from its start to its end.

A whole-store count (``stats``) reads every log. Read whole, a log of
100,000 versions held its 34 MB of bytes, a copy of every payload and what
was decoded from them at once. Here the reader holds at most
:data:`CHUNK_BYTES` of the file, or one longer frame, at a time.

The frames are those :func:`~castore.file.frames.classify` finds in an
intact log, verified by the same :func:`~castore.file.frames.frame_at` (both
lengths and the checksum), in the same order. Where the chain stops before
the end of the file (a torn tail, damage, a short read) :class:`UnchainedError`
is raised, and the caller reads the log whole for ``classify`` to tell a torn
tail from damage (docs/FORMAT.md §7), as before: a log whose frames chain to
its end is the only one read in chunks, and ``classify`` finds no damage and
no torn tail in it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

from castore.file.fileio import read_at
from castore.file.frames import FRAME_OVERHEAD, MAX_PAYLOAD_BYTES, Frame, frame_at

__all__ = ["CHUNK_BYTES", "UnchainedError", "chained_frames"]

CHUNK_BYTES: Final = 1 << 20  # the bytes of a log read at a time (a longer frame: itself)

_U32 = struct.Struct("<I")


class UnchainedError(Exception):
    """The frames stop chaining before the end of the file: read it whole."""


def chained_frames(fd: int, size: int, chunk: int = 0) -> Iterator[Frame]:
    """Every frame of the first ``size`` bytes on ``fd``, in order, read ``chunk`` bytes at a time.

    ``chunk`` 0 reads :data:`CHUNK_BYTES` at a time.

    Raises:
        UnchainedError: the bytes at some offset are not a whole valid frame (nothing
            about the rest is said), or a read came back short.
    """
    chunk = chunk or CHUNK_BYTES
    buf, base, pos = b"", 0, 0  # buf holds the file's bytes from offset base
    while pos < size:
        at = pos - base
        length = _U32.unpack_from(buf, at)[0] if len(buf) - at >= 4 else 0
        need = FRAME_OVERHEAD + length
        if length > MAX_PAYLOAD_BYTES or pos + need > size:
            raise UnchainedError  # a corrupt length, or a frame cut short: classify says which
        if len(buf) - at < need:
            want = min(size - pos, max(chunk, need))
            buf, base = read_at(fd, pos, want), pos
            if len(buf) != want:
                raise UnchainedError
            continue
        frame = frame_at(buf, at, base)
        if frame is None:
            raise UnchainedError
        yield frame
        pos = frame.end
