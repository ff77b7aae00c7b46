"""A linearizability checker for histories of get / set / CAS / delete on versioned keys.

castore numbers the writes of each key 1, 2, 3, ... so the order of the writes
is known: it is the version order. What remains to check is that every
operation fits into that order consistently with real time:

* each write has a **position** ``(version, 0)``;
* each read has the position ``(v, 1)`` of the version ``v`` whose state it
  saw (just after write ``v``, before write ``v + 1``): a found get saw ``v``;
  a CAS conflict saw its ``actual`` version; a not-found get, a CAS conflict
  with ``actual == 0`` and ``delete -> False`` saw *some* state where the key
  was absent: a tombstone's version, or 0 (before the first write). The
  checker picks the earliest such state that real time allows;
* **real time**: if A ended before B started, ``position(A) <= position(B)``.

With those positions, sorting the operations by position (ties among reads
in any real-time-consistent order) is a sequential history that respects
real time; the history is linearizable iff, in addition, each operation is
legal in it:

* writes of a key have unique versions, dense from 1 (no version without a
  recorded write);
* a found read returns exactly the value written at its version;
* a CAS that succeeded at version ``v`` with ``expected = e`` saw live version
  ``e`` just before: ``e == v - 1`` and ``v - 1`` is a set, or ``e == 0`` and
  ``v - 1`` is a tombstone or 0; a CAS conflict's ``actual`` differs from ``expected``;
* a set's ``created`` is true iff the state before it had no live version;
* a successful delete removed a live version (``v - 1`` is a set).

The check is O(n log n) per key: operations are processed in order of their
start time while a heap of finished operations yields, for each operation,
the highest position among those that ended before it started.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Op", "Report", "check_history"]

Position = tuple[int, int]  # (version, 0 for the write of that version / 1 for a read after it)


@dataclass(frozen=True)
class Op:
    """One completed operation as a client saw it.

    ``kind`` is ``get``, ``set``, ``cas`` or ``delete``. ``start`` and ``end``
    are ``time.monotonic_ns()`` taken just before the call and just after it
    returned. Results by kind:

    * get: ``found`` (bool), ``version`` (0 when not found), ``value``;
    * set: ``version``, ``created``;
    * cas: ``expected`` (in ``args``); ``ok``; then ``version`` (success) or ``actual``;
    * delete: ``deleted``; ``version`` of the tombstone when deleted (from the history).
    """

    process: int
    seq: int
    kind: str
    key: str
    args: dict[str, Any]
    result: dict[str, Any]
    start: int
    end: int

    def describe(self) -> str:
        return (
            f"p{self.process}#{self.seq} {self.kind}({self.key}, {self.args}) -> {self.result} "
            f"[{self.start}..{self.end}]"
        )


@dataclass
class Report:
    """What the checker saw: operations, writes and reads per key, and violations."""

    ops: int = 0
    writes: int = 0
    reads: int = 0
    keys: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _write_version(op: Op) -> int | None:
    """The version an op wrote, or None when it wrote nothing."""
    r = op.result
    if op.kind == "set" or (op.kind == "cas" and r.get("ok")):
        return int(r["version"])
    if op.kind == "delete" and r.get("deleted"):
        return int(r["version"]) if r.get("version") is not None else -1
    return None


def _observed(op: Op) -> int | None:
    """The live version a read saw, 0 when it saw the key absent; None for writes."""
    r = op.result
    if op.kind == "get":
        return int(r["version"]) if r["found"] else 0
    if op.kind == "cas" and not r.get("ok"):
        return int(r["actual"])
    if op.kind == "delete" and not r.get("deleted"):
        return 0
    return None


def _check_key(key: str, ops: list[Op], report: Report) -> None:
    bad = report.violations
    state: dict[int, tuple[str, Any]] = {0: ("absent", None)}  # version -> (op, value)
    writer: dict[int, Op] = {}
    for op in ops:
        version = _write_version(op)
        if version is None:
            continue
        report.writes += 1
        if version < 1:
            bad.append(f"{key}: acknowledged write has no version in the history: {op.describe()}")
            continue
        if version in writer:
            bad.append(
                f"{key}: version {version} written twice: "
                f"{writer[version].describe()} and {op.describe()}"
            )
            continue
        writer[version] = op
        if op.kind == "delete":
            state[version] = ("delete", None)
        else:
            state[version] = ("set", op.args["value"])
    top = max(writer, default=0)
    for version in range(1, top + 1):
        if version not in writer:
            bad.append(f"{key}: version {version} exists but no recorded write made it")
    tombstones = sorted(v for v, (kind, _) in state.items() if kind != "set")

    def live_before(version: int) -> int:
        """The live version just before write ``version`` (0 when absent)."""
        prev = state.get(version - 1)
        if prev is None:
            return -1  # unknown (a gap, reported above)
        return version - 1 if prev[0] == "set" else 0

    # Legality of each op in the version order.
    for version, op in writer.items():
        before = live_before(version)
        if before < 0:
            continue
        if op.kind == "cas" and op.args["expected"] != before:
            bad.append(f"{key}: CAS expected {op.args['expected']} but wrote after {before}")
        if op.kind == "set" and bool(op.result.get("created")) != (before == 0):
            bad.append(f"{key}: set created={op.result.get('created')} after live {before}")
        if op.kind == "delete" and before == 0:
            bad.append(f"{key}: delete at version {version} of an absent key: {op.describe()}")
    for op in ops:
        seen = _observed(op)
        if seen is None:
            continue
        report.reads += 1
        if op.kind == "cas" and seen == op.args["expected"]:
            bad.append(f"{key}: CAS conflict with actual == expected: {op.describe()}")
        if seen > 0:
            found = state.get(seen)
            if found is None or found[0] != "set":
                bad.append(f"{key}: read saw version {seen}, which is not a set: {op.describe()}")
            elif op.kind == "get" and op.result["value"] != found[1]:
                bad.append(
                    f"{key}: read of version {seen} returned {op.result['value']!r}, "
                    f"written {found[1]!r}: {op.describe()}"
                )

    # Real time: process by start; everything that ended before an op started is done.
    order = sorted(ops, key=lambda o: (o.start, o.end))
    finished: list[tuple[int, int]] = []  # heap of (end, index into positions)
    positions: list[Position] = []
    owners: list[Op] = []
    done_max: Position = (-1, 0)
    done_by: Op | None = None
    for op in order:
        while finished and finished[0][0] < op.start:
            _, index = heapq.heappop(finished)
            if positions[index] > done_max:
                done_max, done_by = positions[index], owners[index]
        version = _write_version(op)
        seen = _observed(op)
        pos: Position
        if version is not None:
            pos = (version, 0)
        elif seen is not None and seen > 0:
            pos = (seen, 1)
        else:  # saw the key absent: the earliest absent state real time allows
            floor = max(done_max[0], 0)
            candidates = [t for t in tombstones if t >= floor]
            if not candidates:
                bad.append(
                    f"{key}: stale read: {op.describe()} saw the key absent, but "
                    f"{done_by.describe() if done_by else '?'} finished before it started "
                    f"at version {done_max[0]} and no delete follows"
                )
                pos = (floor, 1)
            else:
                pos = (candidates[0], 1)
        if pos < done_max:
            assert done_by is not None
            bad.append(
                f"{key}: real-time order violated: {done_by.describe()} (position {done_max}) "
                f"finished before {op.describe()} (position {pos}) started"
            )
        positions.append(pos)
        owners.append(op)
        heapq.heappush(finished, (op.end, len(positions) - 1))


def check_history(ops: list[Op]) -> Report:
    """Check a whole recorded history (all keys); see the module docstring."""
    report = Report(ops=len(ops))
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.end < op.start:
            report.violations.append(f"op ends before it starts: {op.describe()}")
        by_key[op.key].append(op)
    report.keys = len(by_key)
    for key in sorted(by_key):
        _check_key(key, by_key[key], report)
    return report
