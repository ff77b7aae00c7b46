"""Evidence that acknowledged bytes were cut off a ref log: its version index (FORMAT.md §7).

The index (``castore.file.versionindex``) is built from the log only, so a
record of a version above the log's newest intact entry names a version the
log once held. It is evidence of a cut when the log no longer holds that
version where the record says: past the end of the log's intact frames (a
cut, a torn tail), or before it where another frame is now (an older,
longer copy of the log put in its place: a review found one defeated the
rule "before the end: the log still holds it"). A record whose offset holds
that very version's ``E`` frame is not: the log has it (an older entry
copied after it is judged as an entry out of order). Versions a compaction
dropped (its ``C`` frame) do not count, nor do those at or below the key's
grave (``GRAVES``), as for ``check``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from castore.errors import CorruptionError, UnsafePathError
from castore.file import fileio, logread
from castore.file.frames import FRAME_OVERHEAD, Frame, entry_version, frame_at
from castore.file.graves import Graveyard
from castore.file.records import KIND_COMPACTED, KIND_ENTRY, decode_compaction
from castore.file.tree import Tree
from castore.file.versionindex import (
    ABSENT,
    MAX_INDEXED_VERSION,
    MAX_OFFSET,
    VIX_RECORD_BYTES,
    may_record_beyond,
    newest_version,
    vix_path,
)

__all__ = ["cut_above", "cut_error", "cut_evidence", "cut_in", "recorded_above"]

Holds = Callable[[int, int], bool]  # (offset, version): the log holds that E frame there
_REC = struct.Struct("<Q")
_CHUNK_RECORDS = 1 << 17  # 1 MiB of index read at a time, from the end down
_ENTRY_READ_MAX = 1 << 20  # a longer frame is no entry castore wrote


def _cut_at(raw: int, version: int, end: int, holds: Holds) -> bool:
    """Whether a record (``raw``) of ``version`` above the newest entry proves a cut."""
    if not ABSENT < raw < MAX_OFFSET:  # unknown (0), a marker, or damage
        return False
    return raw >= end or not holds(raw, version)


def cut_above(data: bytes, newest: int, end: int, holds: Holds) -> int:
    """The highest version above ``newest`` whose record in index bytes ``data`` proves a cut.

    ``newest`` is the log's newest intact entry, ``end`` where its intact
    frames end, ``holds`` whether the log holds a version's ``E`` frame at an
    offset (see the module docstring). 0: no such version.
    """
    for version in range(len(data) // VIX_RECORD_BYTES, newest, -1):
        raw = _REC.unpack_from(data, (version - 1) * VIX_RECORD_BYTES)[0]
        if _cut_at(raw, version, end, holds):
            return version
    return 0


def _cut_above_in(fd: int, newest: int, end: int, holds: Holds) -> int:
    """:func:`cut_above` of the index open on ``fd``, in bounded memory.

    Only records past ``newest`` and at most :data:`MAX_INDEXED_VERSION` are
    read (the index never holds a higher one), a chunk at a time from the end
    down; a chunk of zeros (no record) is passed over at C speed, so even a
    planted sparse file costs at most 128 MiB of reads and 1 MiB of memory.
    """
    top = min(os.fstat(fd).st_size // VIX_RECORD_BYTES, MAX_INDEXED_VERSION)
    while top > newest:
        low = max(newest, top - _CHUNK_RECORDS)
        data = fileio.read_at(fd, low * VIX_RECORD_BYTES, (top - low) * VIX_RECORD_BYTES)
        if data.count(0) != len(data):  # versions low + 1 .. top, the highest first
            for index in range(len(data) // VIX_RECORD_BYTES - 1, -1, -1):
                raw = _REC.unpack_from(data, index * VIX_RECORD_BYTES)[0]
                if _cut_at(raw, low + index + 1, end, holds):
                    return low + index + 1
        top = low
    return 0


def recorded_above(fs: Tree, path: str, newest: int, end: int, holds: Holds) -> int:
    """:func:`cut_above` of the index at ``path`` (0: none, or no index).

    One ``stat`` in the common case (no index, or one no longer than
    ``newest``'s record); only a longer index is read.
    """
    try:
        if not may_record_beyond(fs.stat(path), newest):
            return 0
        fd = fs.open(path, os.O_RDONLY)
    except (FileNotFoundError, UnsafePathError):
        return 0
    try:
        return _cut_above_in(fd, newest, end, holds)
    finally:
        os.close(fd)


def _holds_in(log_fd: int) -> Holds:
    """Whether the log open on ``log_fd`` holds ``version``'s intact ``E`` frame at ``offset``."""

    def holds(offset: int, version: int) -> bool:
        head = fileio.read_at(log_fd, offset, 5)
        if len(head) != 5 or head[4] != KIND_ENTRY:
            return False
        length = int.from_bytes(head[:4], "little")
        if length > _ENTRY_READ_MAX:
            return False
        frame = frame_at(fileio.read_at(log_fd, offset, length + FRAME_OVERHEAD), 0, offset)
        return frame is not None and entry_version(frame.payload) == version

    return holds


def cut_evidence(fs: Tree, path: str, fd: int, newest: int, end: int) -> int:
    """The highest version the log's index proves was cut off the log (0 if none).

    ``newest``: the newest intact entry of the log open on ``fd``; ``end``:
    where its intact frames end. Versions a compaction dropped (its ``C``
    frame) do not count, nor does the index next to ``path`` when ``path``
    no longer names ``fd``'s file (a rewrite renamed another log over it: the
    index is that log's). The common case costs one ``stat`` (no index, or
    one no longer than ``newest``'s record).
    """
    top = recorded_above(fs, vix_path(path), newest, end, _holds_in(fd))
    if not top:
        return 0
    done = logread.compaction_of(fd)
    if done is not None and top <= max((high for _, high in done.versions), default=0):
        return 0
    if top <= _grave(fs, path, fd):  # a removal GRAVES records: check's rule too
        return 0
    return top if fs.names(path, fd) else 0


def _grave(fs: Tree, path: str, fd: int) -> int:
    """The version ``GRAVES`` records for the key of the log open on ``fd`` (0: none).

    Castores of format 1 and the first of format 2 emptied a removed key's
    log without a ``C`` frame and rebuilt its index after the rename: killed
    in between, the index names the removed versions, which the grave
    covers. The key's own record only: a repair's floor is where a
    re-created key starts, not a version any key had (it would cover every
    cut in the namespace).
    """
    header = logread.header_of(fd)
    if header is None:
        return 0
    graves = Graveyard(os.path.join(os.path.dirname(path), "GRAVES"), fs, remember=False)
    return graves.recorded(header.key)


def cut_error(what: str, path: str, cut: int, hint: str) -> CorruptionError:
    """The error that says versions up to ``cut`` were cut off the log at ``path``."""
    return CorruptionError(
        f"{what}: {path} no longer holds versions up to {cut}, which its version index "
        f"records (acknowledged bytes were cut off); {hint}"
    )


def cut_in(data: bytes, frames: list[Frame]) -> int:
    """:func:`cut_above` for a log's intact ``frames``, less what a compaction dropped."""
    entries = {f.start: entry_version(f.payload) for f in frames if f.kind == KIND_ENTRY}
    top = cut_above(
        data,
        newest_version(frames),
        frames[-1].end if frames else 0,
        lambda offset, version: entries.get(offset) == version,
    )
    dropped = [
        high
        for f in frames
        if f.kind == KIND_COMPACTED
        for _, high in decode_compaction(f.payload).versions
    ]
    return top if top > max(dropped, default=0) else 0
