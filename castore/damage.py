"""Damage in a log: which versions it may hide, and the entries that record them lost.

A damaged range (docs/FORMAT.md §7) sits between two intact entries, or after
the newest one. The versions in between may have been in it: readers report
them as damaged, and ``check --repair`` replaces the range by one
``OP_DAMAGED`` entry so the version line continues above them.

Pure: works on :class:`~castore.frames.LogBytes` and bytes; no I/O.
"""

from __future__ import annotations

import math
import re
import time

from castore.errors import CorruptionError
from castore.frames import FRAME_OVERHEAD, LogBytes
from castore.records import KIND_ENTRY, OP_DAMAGED, Audit, Entry, decode_entry, encode_record

__all__ = ["REPAIR_HINT", "damage_windows", "damaged_error", "lost_top", "marker", "with_markers"]

REPAIR_HINT = "run castore check --repair"
# The smallest E frame: a lost range at the end of a log holds at most this many bytes per version.
_MIN_ENTRY_FRAME = FRAME_OVERHEAD + len(b'{"version":1,"op":"set","time_ns":0}')
_VERSION_FIELD = re.compile(rb'"version":([0-9]{1,18})')


def damage_windows(log: LogBytes) -> list[tuple[int, int, int, int | None]]:
    """Each damaged range with the versions of the intact entries around it.

    Returns ``(start, end, before, after)``: ``before`` is the version of the
    last intact entry ahead of the damage (0 if none), ``after`` that of the
    first one behind it, or None when the damage follows every entry (the
    newest version is then unknown). Versions strictly between the two may
    have been in the damaged bytes.
    """
    out: list[tuple[int, int, int, int | None]] = []
    entries = [(f.start, decode_entry(f.payload)) for f in log.frames if f.kind == KIND_ENTRY]
    for start, end in log.damage:
        before = max((e.version for s, e in entries if s < start), default=0)
        after = min((e.first for s, e in entries if s >= end), default=None)
        out.append((start, end, before, after))
    return out


def damaged_error(path: str, start: int, end: int, what: str) -> CorruptionError:
    """The error for ``what`` (a key, a version) hidden by damage at ``start`` of ``path``."""
    return CorruptionError(
        f"{what}: {path} has damaged bytes at offset {start} ({end - start} bytes); " + REPAIR_HINT
    )


def lost_top(before: int, damaged: bytes) -> int:
    """The highest version damaged bytes after version ``before`` may have held."""
    parsed = [int(m) for m in _VERSION_FIELD.findall(damaged)]
    return max([before + math.ceil(len(damaged) / _MIN_ENTRY_FRAME), *parsed])


def with_markers(
    log: LogBytes, data: bytes, drop: set[int], reason: str, lost_by_index: int
) -> list[tuple[int, bytes]]:
    """The intact frames of a damaged log, with an ``OP_DAMAGED`` entry per lost range.

    A marker takes the place of the damaged bytes, so the version line
    continues above every version they may have held.
    """
    markers: dict[int, Entry] = {}
    now = time.time_ns()
    for start, end, before, after in damage_windows(log):
        top = lost_top(before, data[start:end]) if after is None else after - 1
        if top > before:
            markers[start] = marker(
                before + 1, top, now, f"damaged bytes at offset {start}; {reason}"
            )
    entries = [decode_entry(f.payload) for f in log.frames if f.kind == KIND_ENTRY]
    newest = max([e.version for e in entries] + [m.version for m in markers.values()] + [0])
    if lost_by_index > newest:
        markers[log.size] = marker(newest + 1, lost_by_index, now, f"log cut short; {reason}")
    out: list[tuple[int, bytes]] = []
    pending = sorted(markers.items())
    for f in log.frames:
        while pending and pending[0][0] < f.start:
            out.append((KIND_ENTRY, encode_record(pending.pop(0)[1])))
        if f.start not in drop:
            out.append((f.kind, f.payload))
    out.extend((KIND_ENTRY, encode_record(m)) for _, m in pending)
    return out


def marker(first: int, last: int, now: int, reason: str) -> Entry:
    """The ``OP_DAMAGED`` entry recording versions ``first``..``last`` as lost."""
    return Entry(
        version=last,
        op=OP_DAMAGED,
        time_ns=now,
        damaged_from=first if first < last else 0,
        audit=Audit(actor="castore check --repair", reason=reason),
    )
