"""What a version is, whatever stores it: :class:`Entry`, its :class:`Audit`, its operations.

Every backend returns these; the file backend also writes them into its
``E`` frames (:mod:`castore.file.records`, docs/FORMAT.md §3).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import msgspec

__all__ = [
    "OP_DAMAGED",
    "OP_DELETE",
    "OP_ROLLBACK",
    "OP_SET",
    "Audit",
    "BlobLoc",
    "Entry",
    "VersionRanges",
    "merged_ranges",
]

OP_SET = "set"
OP_DELETE = "delete"
OP_ROLLBACK = "rollback"
OP_DAMAGED = "damaged"  # versions lost to damage; written by check --repair (FORMAT.md §7)


class Audit(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who wrote a version. Empty fields are omitted on disk."""

    dag_name: str = ""
    run_id: str = ""
    step_name: str = ""
    attempt: str = ""
    user: str = ""
    host: str = ""
    pid: int = 0
    actor: str = ""
    reason: str = ""
    rollback_from: int = 0
    request_id: str = ""  # the client's id of the write (an http:// store): a retry is applied once


class BlobLoc(msgspec.Struct, frozen=True, array_like=True):
    """Where a blob frame was written: a location *hint*, verified on read.

    ``log`` is the log's path relative to the store's ``refs/`` directory,
    or ``""`` for the log that holds this entry.
    """

    log: str
    offset: int
    length: int


class Entry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One version of a ref: a set (or rollback) pointing at a blob, or a tombstone."""

    version: int
    op: str
    time_ns: int
    hash: str = ""
    size: int = 0
    blob: BlobLoc | None = None
    created_ns: int = 0
    audit: Audit = Audit()
    damaged_from: int = 0  # OP_DAMAGED: the versions damaged_from..version were lost

    @property
    def live(self) -> bool:
        """True unless this entry is a tombstone (a damaged version counts as existing)."""
        return self.op != OP_DELETE

    @property
    def first(self) -> int:
        """The lowest version this entry stands for (several for a damaged range)."""
        return self.damaged_from or self.version


def merged_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive version ranges merged where they overlap or touch, in order.

    Works on the bounds, never on the versions between them: one ``damaged``
    entry or compaction record may stand for 2^62 versions in a few bytes.
    """
    out: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


class VersionRanges:
    """A set of versions kept as merged inclusive ranges (compaction records name them so).

    Membership and the nearest version outside cost a bisection, whatever
    the number of versions the ranges span.
    """

    __slots__ = ("_highs", "_lows")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        merged = merged_ranges(ranges)
        self._lows = [low for low, _ in merged]
        self._highs = [high for _, high in merged]

    def _at(self, version: int) -> int:
        """The index of the range holding ``version``, or -1."""
        i = bisect.bisect_right(self._lows, version) - 1
        return i if i >= 0 and version <= self._highs[i] else -1

    def __contains__(self, version: object) -> bool:
        return isinstance(version, int) and self._at(version) >= 0

    def __bool__(self) -> bool:
        return bool(self._lows)

    def first_outside(self, version: int) -> int:
        """The lowest version at or above ``version`` that no range holds."""
        i = self._at(version)
        return version if i < 0 else self._highs[i] + 1

    def last_outside(self, version: int) -> int:
        """The highest version at or below ``version`` that no range holds."""
        i = self._at(version)
        return version if i < 0 else self._lows[i] - 1
