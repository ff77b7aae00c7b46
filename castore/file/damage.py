"""Damage in a log: which versions it may hide, and the entries that record them lost.

A damaged range (docs/FORMAT.md §7) sits between two intact entries, or after
the newest one. The versions in between may have been in it: readers report
them as damaged, and ``check --repair`` replaces the range by one
``OP_DAMAGED`` entry so the version line continues above them.

Pure: works on :class:`~castore.frames.LogBytes` and bytes; no I/O.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import time
from typing import NamedTuple

import msgspec

from castore.backend import lost_marker
from castore.errors import CorruptionError
from castore.file.frames import FRAME_OVERHEAD, Frame, LogBytes
from castore.file.records import (
    KIND_BLOB,
    KIND_COMPACTED,
    KIND_ENTRY,
    KIND_HEADER,
    Header,
    decode_compaction,
    decode_entry,
    encode_record,
)
from castore.records import OP_DAMAGED, Entry, VersionRanges

__all__ = [
    "REPAIR_HINT",
    "RepairPlan",
    "Window",
    "damage_windows",
    "damaged_error",
    "disorder_error",
    "disorder_problem",
    "gone_error",
    "hides_nothing",
    "in_order",
    "intact_frames",
    "lost_top",
    "marker_time",
    "out_of_order",
    "rewritten",
    "value_lost",
    "window_top",
    "with_markers",
]

REPAIR_HINT = "run castore check --repair"
# The smallest E frame: a lost range at the end of a log holds at most this many bytes per version.
_MIN_ENTRY_FRAME = FRAME_OVERHEAD + len(b'{"version":1,"op":"set","time_ns":0}')
_VERSION_FIELD = re.compile(rb'"version":([0-9]{1,18})')


class Window(NamedTuple):
    """A damaged byte range and the versions it may have held (``low``..``high``).

    ``high`` is None when the range follows every intact entry: how many
    versions it held is unknown (:func:`lost_top` bounds it for a repair).
    """

    start: int
    end: int
    low: int
    high: int | None


def hides_nothing(log: LogBytes, start: int, end: int) -> bool:
    """True if a damaged range is exactly one blob, header or compaction frame.

    Both its length fields and its kind byte survived, so it held that frame
    and no entry: no version can be lost in it.
    """
    return any(
        log.one_frame_of_kind(start, end, k) for k in (KIND_BLOB, KIND_HEADER, KIND_COMPACTED)
    )


def damage_windows(log: LogBytes, floor: int = 0) -> list[Window]:
    """Each gap in the version line that damage may hide, with the versions it may hide.

    Between intact entries ``a`` and ``b`` the candidates are ``a+1``..``b-1``,
    less versions an intact ``C`` frame names as compacted; the damaged
    ranges between the same two entries (blob frames intact between them)
    make one window, from the first's start to the last's end. After the
    newest intact entry each range is open-ended and continues above every
    version the range before it may hold (:func:`window_top`), so no two
    windows name one version. ``floor`` is a version below which nothing
    can be lost (the key's grave). A range that is exactly one damaged blob
    frame hides no version. Entries out of order (:func:`in_order`) bound no
    window: a repair leaves them out, and a version older than the damage,
    copied after it, must not end the versions the damage may hide.
    """
    entries = _kept(
        [(f.start, decode_entry(f.payload)) for f in log.frames if f.kind == KIND_ENTRY]
    )
    compacted = VersionRanges(
        (low, high)
        for f in log.frames
        if f.kind == KIND_COMPACTED
        for low, high in decode_compaction(f.payload).versions
    )
    out: list[Window] = []
    for start, end in log.damage:
        if hides_nothing(log, start, end):
            continue
        before = max([floor, *(e.version for s, e in entries if s < start)])
        after = min((e.first for s, e in entries if s >= end), default=None)
        prior = out[-1] if out else None
        if prior is not None and any(prior.end <= s < start for s, _ in entries):
            prior = None  # an intact entry between them: another gap
        if after is None:
            if prior is not None and prior.high is None:  # the versions go on above its
                before = max(before, window_top(log, prior))
            out.append(Window(start, end, compacted.first_outside(before + 1), None))
            continue
        first, last = compacted.first_outside(before + 1), compacted.last_outside(after - 1)
        if first > last:  # every version between them was compacted
            continue
        if prior is not None and (prior.low, prior.high) == (first, last):
            out[-1] = prior._replace(end=end)  # the same gap: one window
        else:
            out.append(Window(start, end, first, last))
    return out


def damaged_error(path: str, start: int, end: int, what: str) -> CorruptionError:
    """The error for ``what`` (a key, a version) hidden by damage at ``start`` of ``path``."""
    return CorruptionError(
        f"{what}: {path} has damaged bytes at offset {start} ({end - start} bytes); " + REPAIR_HINT
    )


def disorder_error(path: str, version: int, before: int, what: str) -> CorruptionError:
    """The error for ``what`` whose newest entry (``version``) follows version ``before``."""
    return CorruptionError(
        f"{what}: {path} ends with version {version} after version {before} "
        "(an entry out of order: the newest version is unknown); " + REPAIR_HINT
    )


def gone_error(what: str, path: str, top: int, *, missing: bool) -> CorruptionError:
    """The error for ``what``, whose log (``path``) is missing or holds no entry.

    The namespace's ``STATE`` records version ``top`` above its grave: a lost log.
    """
    state = "is missing" if missing else "holds no version"
    return CorruptionError(
        f"{what}: {path} {state}, but the namespace's STATE records version {top} "
        "(the log was lost); " + REPAIR_HINT
    )


def out_of_order(versions: list[int]) -> set[int]:
    """Indexes of the entries (``versions``, in log order) a repair drops as out of order.

    castore appends versions in increasing order, so a log's real entries
    form an increasing run and anything else was put there by other means
    (an older entry's bytes copied to the end, a frame planted between two).
    The run kept is the longest one, so that the fewest entries go; of
    equally long ones, the one with the highest versions, so that no version
    a reader may have seen is given again.
    """
    if all(a < b for a, b in itertools.pairwise(versions)):
        return set()
    tails: list[int] = []  # tails[k]: the lowest version ending an increasing run of k + 1
    by_length: list[list[int]] = []  # indexes by the length of the longest run ending there
    for index, version in enumerate(versions):
        k = bisect.bisect_left(tails, version)
        if k == len(tails):
            tails.append(version)
            by_length.append([])
        tails[k] = version
        by_length[k].append(index)
    keep: list[int] = []
    below, bound = len(versions), math.inf
    for group in reversed(by_length):  # versions fall along each group: take the first that fits
        index = next(i for i in group if i < below and versions[i] < bound)
        keep.append(index)
        below, bound = index, versions[index]
    return set(range(len(versions))) - set(keep)


def in_order(placed: list[tuple[int, Entry]]) -> tuple[list[Entry], dict[int, int]]:
    """A log's entries (offset, entry) kept in order, and those out of order (offset -> version)."""
    dropped = out_of_order([e.version for _, e in placed])
    kept = [e for i, (_, e) in enumerate(placed) if i not in dropped]
    return kept, {placed[i][0]: placed[i][1].version for i in sorted(dropped)}


def _kept(placed: list[tuple[int, Entry]]) -> list[tuple[int, Entry]]:
    """The entries (offset, entry) :func:`in_order` keeps, with their offsets."""
    dropped = out_of_order([e.version for _, e in placed])
    return [p for i, p in enumerate(placed) if i not in dropped]


def disorder_problem(ref: str, version: int, offset: int) -> str:
    """How ``check`` names an entry out of order (:func:`in_order`)."""
    return f"{ref}: version {version} at offset {offset} is out of order (castore appends in order)"


def lost_top(before: int, damaged: bytes, *, one_entry: bool = False) -> int:
    """The highest version damaged bytes after version ``before`` may have held.

    Each entry frame holds at least ``_MIN_ENTRY_FRAME`` bytes and a version
    above the one before it, and a legible ``"version":N`` counts too. When
    the range is exactly one entry frame (``one_entry``: lengths intact, and
    the kind byte, or the frame itself, says entry), it held exactly one version.
    """
    parsed = [int(m) for m in _VERSION_FIELD.findall(damaged)]
    count = 1 if one_entry else math.ceil(len(damaged) / _MIN_ENTRY_FRAME)
    return max([before + count, *parsed])


def window_top(log: LogBytes, window: Window) -> int:
    """The highest version ``window`` may hide (bounded by :func:`lost_top` at the tail)."""
    if window.high is not None:
        return window.high
    base = log.size - len(log.data)
    damaged = log.data[window.start - base : window.end - base]
    one = log.one_entry_frame(window.start, window.end)
    return lost_top(window.low - 1, damaged, one_entry=one)


def rewritten(plan: RepairPlan, log: LogBytes, reason: str) -> list[tuple[int, bytes]] | None:
    """The frames a repair writes for ``log`` by ``plan``; None if ``log`` is not the one read."""
    if plan.seen is not None and not _grown_from(log, plan.seen):
        return None
    head = [] if plan.header is None else [(KIND_HEADER, encode_record(plan.header))]
    return head + with_markers(
        log, plan.drop, reason, plan.lost_by_index, plan.lost_values, plan.grave
    )


def _grown_from(log: LogBytes, seen: LogBytes) -> bool:
    """Whether ``log`` holds the bytes of ``seen`` where they were (appends may follow)."""
    base, seen_base = log.size - len(log.data), seen.size - len(seen.data)
    if log.size < seen.size or base > seen_base:
        return False
    return bytes(log.data[seen_base - base : seen.size - base]) == bytes(seen.data)


def marker_time(placed: list[tuple[int, Entry]], window: Window, default: int) -> int:
    """The time of a lost range's entry: the intact entry's before it, else after it.

    Times never decrease along a log (audit's ``since`` stops a key's walk at the
    first older entry), so a marker takes its neighbour's time. ``placed``: the
    log's entries with their offsets, in log order; ``default`` where there is none.
    Entries out of order (:func:`in_order`) are no neighbours: a copy of an older
    version would give it an older time.
    """
    kept = _kept(placed)
    before = [e.time_ns for at, e in kept if at < window.start]
    after = [e.time_ns for at, e in kept if at >= window.end]
    return before[-1] if before else after[0] if after else default


def with_markers(
    log: LogBytes,
    drop: set[int],
    reason: str,
    lost_by_index: int,
    lost_values: set[int],
    grave: int = 0,
) -> list[tuple[int, bytes]]:
    """The intact frames of a damaged log, with an ``OP_DAMAGED`` entry per lost range.

    A marker takes the place of the damaged bytes, so the version line
    continues above every version they may have held. Frames at the offsets
    in ``drop`` (blobs that fail verification, entries out of order:
    :func:`out_of_order`) are left out, and the
    entries of ``lost_values`` (their value has no intact copy) become
    ``OP_DAMAGED`` entries that keep their hash, time and audit.
    """
    markers: dict[int, Entry] = {}
    now = time.time_ns()
    placed = [(f.start, decode_entry(f.payload)) for f in log.frames if f.kind == KIND_ENTRY]
    for window in damage_windows(log, grave):
        top = window_top(log, window)
        if top >= window.low:
            where = f"damaged bytes at offset {window.start}; {reason}"
            stamp = marker_time(placed, window, now)
            markers[window.start] = lost_marker(window.low, top, stamp, where)
    entries = [e for _, e in placed]
    newest = max([grave, *(e.version for e in entries), *(m.version for m in markers.values())])
    done = [
        high
        for f in log.frames
        if f.kind == KIND_COMPACTED
        for _, high in decode_compaction(f.payload).versions
    ]
    newest = max([newest, *done])  # compaction dropped those: not lost
    repeated = _repeated_markers(placed, drop)
    if lost_by_index > newest or repeated:
        stamp = max([now, *(e.time_ns for e in entries)])
        why = "log cut short" if lost_by_index > newest else _REPEATED
        top = max(lost_by_index, newest + repeated)
        markers[log.size] = lost_marker(newest + 1, top, stamp, f"{why}; {reason}")
    out: list[tuple[int, bytes]] = []
    pending = sorted(markers.items())
    for f in log.frames:
        while pending and pending[0][0] < f.start:
            out.append((KIND_ENTRY, encode_record(pending.pop(0)[1])))
        if f.start in drop:
            continue
        payload = f.payload
        if f.kind == KIND_ENTRY:
            entry = decode_entry(payload)
            if entry.version in lost_values and entry.op != OP_DAMAGED:
                payload = encode_record(value_lost(entry, reason))
        out.append((f.kind, payload))
    out.extend((KIND_ENTRY, encode_record(m)) for _, m in pending)
    return out


_REPEATED = "a marker an earlier repair wrote repeated a version"


def _repeated_markers(placed: list[tuple[int, Entry]], drop: set[int]) -> int:
    """Lost-version markers dropped as out of order after the newest entry kept.

    castore before 2026-12-06 labelled two damaged ranges after a log's newest
    intact entry alike (``damaged 9``, ``damaged 9``): the second stood for a
    version above the first, and one was acknowledged. Each such marker still
    counts as a version lost above the kept ones, so none is given again.
    """
    kept = [at for at, _ in placed if at not in drop]
    last = kept[-1] if kept else -1
    return sum(1 for at, e in placed if at > last and at in drop and e.op == OP_DAMAGED)


def value_lost(entry: Entry, reason: str) -> Entry:
    """``entry`` recorded as damaged: its value has no intact copy left."""
    audit = msgspec.structs.replace(
        entry.audit, reason=f"value lost (no intact copy of blob {entry.hash}); {reason}"
    )
    return msgspec.structs.replace(entry, op=OP_DAMAGED, blob=None, audit=audit)


class RepairPlan(NamedTuple):
    """What the rewrite of one damaged log keeps, drops and records."""

    drop: set[int]  # offsets of frames left out: failed blobs, entries out of order
    header: Header | None  # a header recovered from KEYS, if the log lost its own
    lost_by_index: int  # versions up to this were in the log (its version index says)
    lost_values: set[int]  # versions whose value has no intact copy
    grave: int  # the key's last version before compaction removed it
    known: Header | None = None  # the log's own header, when intact
    seen: LogBytes | None = None  # the log as read for this plan (a rewrite of another is refused)


def intact_frames(log: LogBytes, path: str, cannot: str) -> list[Frame]:
    """``log``'s frames, for a whole-store count that damage would make wrong (gc, stats).

    A torn tail is no damage (its bytes are left out). ``cannot``: what the caller
    cannot know, for the error.

    Raises:
        CorruptionError: damaged bytes (FORMAT.md §7), which may hide entries and blobs.
    """
    if log.damage:
        start, end = log.damage[0]
        raise CorruptionError(
            f"{path} has damaged bytes at offset {start} ({end - start} bytes): "
            f"{cannot}; run castore check --repair first"
        )
    return log.frames
