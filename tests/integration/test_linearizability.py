"""Linearizability of get / set / CAS / delete across processes (checker: tests/linearizability.py).

Several processes hammer two or three keys of one store for a bounded time,
recording every operation with ``time.monotonic_ns()`` around the call
(CLOCK_MONOTONIC is one clock for all processes of a machine). Each write
carries a unique ``reason``, so the tombstone version of every successful
delete is found in the key's history afterwards. The checker then verifies
that one sequential order, consistent with real time, explains every result.
On a store directory every other read goes through the CLI's quick read
(:func:`castore.file.peek.peek`) when it answers, so its answers are checked
the same way.

The first half of this file tests the checker itself on hand-made histories,
so that it cannot pass vacuously. The store comes from the ``store_location``
fixture (tests/conftest.py): every backend runs the real thing.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import time
import traceback
from typing import Any, Final

import pytest

from castore import ConflictError, Store
from castore.file.peek import peek
from castore.keys import Ref
from castore.urls import is_url
from tests.helpers import reap_processes
from tests.linearizability import Op, Report, check_history

DAG: Final = "lin"
KEYS: Final = ["a", "b", "c"]
PROCESSES: Final = 4
RUN_SECONDS: Final = 2.5
MAX_OPS_PER_PROCESS: Final = 6000
# Enough operations for the checks below, whatever the machine's speed: a process goes on
# past RUN_SECONDS until it has made this many (within a bound far below the join timeout).
MIN_OPS_PER_PROCESS: Final = 300
BOUND_SECONDS: Final = 40.0
JOIN_TIMEOUT_SECONDS: Final = 60.0


# -- the checker on hand-made histories --------------------------------------------------


Span = tuple[int, int]  # (start, end)


class History:
    """Builds a history op by op; times are plain integers."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def _add(
        self,
        kind: str,
        key: str,
        args: dict[str, Any],
        result: dict[str, Any],
        t: Span,
        p: int,
    ) -> History:
        self.ops.append(Op(p, len(self.ops), kind, key, args, result, t[0], t[1]))
        return self

    def set(
        self,
        t: Span,
        version: int,
        value: Any,
        *,
        created: bool | None = None,
        key: str = "k",
        p: int = 0,
    ) -> History:
        made = version == 1 if created is None else created
        return self._add("set", key, {"value": value}, {"version": version, "created": made}, t, p)

    def cas_ok(
        self, t: Span, expected: int, version: int, value: Any, *, key: str = "k", p: int = 0
    ) -> History:
        args = {"value": value, "expected": expected}
        return self._add("cas", key, args, {"ok": True, "version": version}, t, p)

    def cas_conflict(
        self, t: Span, expected: int, actual: int, value: Any = "x", *, key: str = "k", p: int = 0
    ) -> History:
        args = {"value": value, "expected": expected}
        return self._add("cas", key, args, {"ok": False, "actual": actual}, t, p)

    def get(
        self, t: Span, version: int, value: Any = None, *, key: str = "k", p: int = 0
    ) -> History:
        result = {"found": version > 0, "version": version, "value": value}
        return self._add("get", key, {}, result, t, p)

    def delete(self, t: Span, version: int | None, *, key: str = "k", p: int = 0) -> History:
        result = {"deleted": version is not None, "version": version}
        return self._add("delete", key, {}, result, t, p)

    def check(self) -> Report:
        return check_history(self.ops)


def assert_rejected(history: History, *words: str) -> None:
    report = history.check()
    assert not report.ok, "the checker accepted a non-linearizable history"
    text = "\n".join(report.violations)
    for word in words:
        assert word in text, text


def test_checker_accepts_a_sequential_history():
    h = History()
    h.set((0, 1), 1, "a").get((2, 3), 1, "a").cas_ok((4, 5), 1, 2, "b")
    h.cas_conflict((6, 7), 1, 2).delete((8, 9), 3).get((10, 11), 0)
    h.delete((12, 13), None).set((14, 15), 4, "c", created=True).get((16, 17), 4, "c")
    h.cas_ok((18, 19), 4, 5, "d").delete((20, 21), 6).cas_ok((22, 23), 0, 7, "e")
    report = h.check()
    assert report.ok, report.violations
    assert (report.ops, report.writes, report.reads, report.keys) == (12, 7, 5, 1)


def test_checker_accepts_overlapping_ops_in_either_order():
    h = History()
    h.set((0, 1), 1, "a")
    # Concurrent write of version 2 and reads that see 1 or 2.
    h.set((10, 20), 2, "b", p=1).get((11, 19), 2, "b", p=2).get((12, 18), 1, "a", p=3)
    # A read overlapping a delete may see the key absent or still present.
    h.delete((30, 40), 3, p=1).get((31, 39), 0, p=2).get((32, 38), 2, "b", p=3)
    h.get((41, 42), 0)
    report = h.check()
    assert report.ok, report.violations


def test_checker_rejects_a_read_that_ends_before_its_write_starts():
    h = History()
    h.set((0, 1), 1, "a").set((2, 3), 2, "b")
    h.get((4, 5), 3, "c", p=1)  # sees version 3 ...
    h.set((6, 7), 3, "c")  # ... which is written only after the read finished
    assert_rejected(h, "real-time order violated")


def test_checker_rejects_a_stale_read():
    h = History()
    h.set((0, 1), 1, "a").set((2, 3), 2, "b")
    h.get((4, 5), 1, "a", p=1)  # version 2 had finished before this read started
    assert_rejected(h, "real-time order violated")


def test_checker_rejects_a_read_going_back_in_time():
    h = History()
    h.set((0, 1), 1, "a").set((2, 100), 2, "b", p=1)
    h.get((3, 4), 2, "b", p=2).get((5, 6), 1, "a", p=3)  # new value, then the old one
    assert_rejected(h, "real-time order violated")


def test_checker_rejects_a_stale_not_found():
    h = History()
    h.set((0, 1), 1, "a").get((2, 3), 0, p=1)
    assert_rejected(h, "stale read")


def test_checker_rejects_not_found_after_recreation():
    h = History()
    h.set((0, 1), 1, "a").delete((2, 3), 2).set((4, 5), 3, "b", created=True)
    h.get((6, 7), 0, p=1)  # only the tombstone (2) explains it, but 3 finished before
    assert_rejected(h, "stale read")


def test_checker_rejects_not_found_then_an_older_value():
    h = History()
    h.set((0, 1), 1, "a").delete((2, 10), 2, p=1)
    h.get((3, 4), 0, p=2)  # the delete is visible: position 2 ...
    h.get((5, 6), 1, "a", p=3)  # ... so version 1 cannot be seen afterwards
    assert_rejected(h, "real-time order violated")


def test_checker_rejects_a_wrong_value():
    h = History()
    h.set((0, 1), 1, "a").get((2, 3), 1, "b")
    assert_rejected(h, "returned 'b'")


def test_checker_rejects_duplicate_versions():
    h = History()
    h.set((0, 1), 1, "a").set((0, 1), 1, "b", p=1)
    assert_rejected(h, "written twice")


def test_checker_rejects_a_version_nobody_wrote():
    h = History()
    h.set((0, 1), 1, "a").set((2, 3), 3, "c")
    assert_rejected(h, "version 2 exists but no recorded write")


def test_checker_rejects_a_cas_that_did_not_see_its_expected_version():
    h = History()
    h.set((0, 1), 1, "a").set((2, 3), 2, "b").cas_ok((4, 5), 1, 3, "c")
    assert_rejected(h, "CAS expected 1")


def test_checker_rejects_a_conflict_with_the_expected_version():
    h = History()
    h.set((0, 1), 1, "a").cas_conflict((2, 3), 1, 1)
    assert_rejected(h, "actual == expected")


def test_checker_rejects_a_conflict_reporting_a_stale_version():
    h = History()
    h.set((0, 1), 1, "a").set((2, 3), 2, "b").cas_conflict((4, 5), 7, 1)
    assert_rejected(h, "real-time order violated")


def test_checker_rejects_a_wrong_created_flag_and_a_delete_of_nothing():
    h = History()
    h.set((0, 1), 1, "a").set((2, 3), 2, "b", created=True)
    assert_rejected(h, "created=True")
    h = History()
    h.set((0, 1), 1, "a").delete((2, 3), 2).delete((4, 5), 3)
    assert_rejected(h, "delete at version 3 of an absent key")


def test_checker_rejects_a_delete_missing_from_the_history():
    h = History()
    h.set((0, 1), 1, "a").delete((2, 3), -1)
    assert_rejected(h, "no version in the history")


def test_checker_keeps_keys_apart():
    h = History()
    h.set((0, 1), 1, "a", key="x").set((2, 3), 1, "b", key="y").get((4, 5), 1, "a", key="x")
    assert h.check().ok
    h.get((6, 7), 0, key="y")
    assert_rejected(h, "y: stale read")


# -- the real thing -------------------------------------------------------------------------


def _more(elapsed: float, done: int) -> bool:
    """Whether a worker goes on: for RUN_SECONDS, then until MIN_OPS_PER_PROCESS (bounded)."""
    return elapsed < RUN_SECONDS or (done < MIN_OPS_PER_PROCESS and elapsed < BOUND_SECONDS)


def _worker(root: str, proc: int, seed: int, start_at: float, out: str) -> None:
    try:
        rng = random.Random(seed)
        store = Store(root, dag=DAG, durable=False)
        known = dict.fromkeys(KEYS, 0)  # the last version this process saw per key
        ops: list[dict[str, Any]] = []
        while time.time() < start_at:
            time.sleep(0.001)
        begun = time.monotonic()
        seq = 0
        while seq < MAX_OPS_PER_PROCESS and _more(time.monotonic() - begun, seq):
            seq += 1
            key = rng.choice(KEYS)
            roll = rng.random()
            reason = f"p{proc}:{seq}"
            value = {"p": proc, "n": seq}
            handle = store if seq % 50 else Store(root, dag=DAG, durable=False)
            args: dict[str, Any] = {}
            if roll < 0.40:
                kind = "get"
                t0 = time.monotonic_ns()
                quick = (
                    None
                    if is_url(root) or seq % 2
                    else peek(os.path.abspath(root), Ref("dag", DAG, key))
                )
                if quick is None:
                    res = handle.get(key)
                    t1 = time.monotonic_ns()
                    result = {"found": res.found, "version": res.version, "value": res.value}
                else:  # the CLI's quick read answered
                    t1 = time.monotonic_ns()
                    version, raw = quick[0], quick[2]
                    read = json.loads(raw) if version else None
                    result = {"found": bool(version), "version": version, "value": read}
                    args = {"quick": True}
                known[key] = result["version"]
            elif roll < 0.60:
                kind, args = "set", {"value": value}
                t0 = time.monotonic_ns()
                wrote = handle.set(key, value, reason=reason)
                t1 = time.monotonic_ns()
                result = {"version": wrote.version, "created": wrote.created}
                known[key] = wrote.version
            elif roll < 0.85:
                expected = known[key] if rng.random() < 0.8 else rng.randint(0, known[key] + 1)
                kind, args = "cas", {"value": value, "expected": expected}
                t0 = time.monotonic_ns()
                try:
                    wrote = handle.set(key, value, expected_version=expected, reason=reason)
                except ConflictError as exc:
                    t1 = time.monotonic_ns()
                    result = {"ok": False, "actual": exc.actual}
                    known[key] = exc.actual
                else:
                    t1 = time.monotonic_ns()
                    result = {"ok": True, "version": wrote.version}
                    known[key] = wrote.version
            else:
                kind = "delete"
                t0 = time.monotonic_ns()
                gone = handle.delete(key, reason=reason)
                t1 = time.monotonic_ns()
                result = {"deleted": gone.deleted}
                known[key] = 0
            ops.append(
                {"seq": seq, "kind": kind, "key": key, "args": args, "result": result,
                 "start": t0, "end": t1, "reason": reason}
            )  # fmt: skip
        payload: dict[str, Any] = {"ops": ops, "error": None}
    except BaseException:  # noqa: BLE001 - the parent reports it
        payload = {"ops": [], "error": traceback.format_exc()}
    with open(out + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(payload, fh)
    os.replace(out + ".tmp", out)


def _load(root: str, outs: list[str]) -> tuple[list[Op], list[str]]:
    """Read every process's record; fill in tombstone versions from the histories."""
    store = Store(root, dag=DAG)
    by_reason: dict[str, dict[str, int]] = {}
    for key in KEYS:
        by_reason[key] = {e.reason: e.version for e in store.history(key).entries}
    ops: list[Op] = []
    errors: list[str] = []
    for proc, out in enumerate(outs):
        with open(out, encoding="utf-8") as fh:
            payload = json.load(fh)
        if payload["error"]:
            errors.append(f"process {proc}:\n{payload['error']}")
        for rec in payload["ops"]:
            result = dict(rec["result"])
            versions = by_reason[rec["key"]]
            if rec["kind"] == "delete" and result["deleted"]:
                result["version"] = versions.get(rec["reason"], -1)
            elif (
                rec["kind"] in ("set", "cas")
                and result.get("version") is not None
                and versions.get(rec["reason"]) != result["version"]
            ):  # the history must hold the acknowledged write under its own version
                errors.append(
                    f"{rec['key']}: write {rec['reason']} acknowledged as version "
                    f"{result['version']}, history says {versions.get(rec['reason'])}"
                )
            ops.append(
                Op(proc, rec["seq"], rec["kind"], rec["key"], rec["args"], result,
                   rec["start"], rec["end"])
            )  # fmt: skip
    return ops, errors


@pytest.mark.integration
@pytest.mark.remote_postgresql  # over the wire onto PostgreSQL too (tests/conftest.py)
def test_concurrent_history_is_linearizable(store_location, tmp_path, record_property):
    root = store_location
    Store(root, dag=DAG).close()
    ctx = multiprocessing.get_context("spawn")
    outs = [str(tmp_path / f"ops-{proc}.json") for proc in range(PROCESSES)]
    start_at = time.time() + 2.0  # after every spawned interpreter has imported castore
    with reap_processes(JOIN_TIMEOUT_SECONDS) as procs:
        for proc, out in enumerate(outs):
            worker = ctx.Process(
                target=_worker, args=(root, proc, 1000 + proc, start_at, out), daemon=True
            )
            worker.start()
            procs.append(worker)
        deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
        for started in procs:
            started.join(max(0.1, deadline - time.monotonic()))
        codes = [started.exitcode for started in procs]
    assert codes == [0] * PROCESSES, codes
    ops, errors = _load(root, outs)
    assert not errors, "\n".join(errors)
    report = check_history(ops)
    kinds = {kind: sum(op.kind == kind for op in ops) for kind in ("get", "set", "cas", "delete")}
    conflicts = sum(op.kind == "cas" and not op.result["ok"] for op in ops)
    quick = sum(op.kind == "get" and bool(op.args.get("quick")) for op in ops)
    by_start = sorted(ops, key=lambda op: op.start)
    overlaps = sum(
        b.start < a.end and a.process != b.process for a, b in itertools.pairwise(by_start)
    )
    record_property("ops_checked", report.ops)
    record_property("writes", report.writes)
    record_property("reads", report.reads)
    record_property("cas_conflicts", conflicts)
    record_property("quick_reads", quick)
    record_property("overlapping_neighbours", overlaps)
    record_property("violations", len(report.violations))
    for kind, count in kinds.items():
        record_property(f"ops_{kind}", count)
    assert report.ops > 1000, report
    assert all(count > 0 for count in kinds.values()), kinds
    assert conflicts > 0, "no CAS conflict"
    assert is_url(root) or quick > 100, f"only {quick} reads went through the quick path"
    assert overlaps > 100, "the processes hardly ran at the same time"
    assert report.ok, f"{len(report.violations)} violations in {report.ops} ops:\n" + "\n".join(
        report.violations[:20]
    )
    assert Store(root, dag=DAG).check().ok
    # Not vacuous on this very history: make one read stale and it must be rejected.
    tampered = _make_one_read_stale(ops)
    assert tampered is not None, "no read to tamper with"
    assert not check_history(tampered).ok


def _make_one_read_stale(ops: list[Op]) -> list[Op] | None:
    """A copy of ``ops`` where one found read returns the version before the one it saw,
    although the write of the version it saw had finished before the read started."""
    writes = {
        (op.key, op.result["version"]): op
        for op in ops
        if op.kind == "set" or (op.kind == "cas" and op.result["ok"])
    }
    for index, op in enumerate(ops):
        if op.kind != "get" or not op.result["found"]:
            continue
        seen = op.result["version"]
        mine, older = writes.get((op.key, seen)), writes.get((op.key, seen - 1))
        if mine is not None and older is not None and mine.end < op.start:
            result = {"found": True, "version": seen - 1, "value": older.args["value"]}
            stale = Op(op.process, op.seq, op.kind, op.key, op.args, result, op.start, op.end)
            return [*ops[:index], stale, *ops[index + 1 :]]
    return None
