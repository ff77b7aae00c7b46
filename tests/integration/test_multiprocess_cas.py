"""Compare-and-swap increments from separate processes lose no update (issue 12).

4 processes x 250 increments, each through its own handle (a connection of its
own on PostgreSQL), while readers check that every value equals its version;
once more while another process runs compaction and gc in a loop. The store
comes from the ``store_location`` fixture (tests/conftest.py): every backend.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback
from typing import Any, Final

import pytest

from castore import ConflictError, NotFoundError, Store
from castore.backends import is_postgres
from tests.helpers import assert_clean_log, log_path, read_versions, reap_processes, underlying

pytestmark = pytest.mark.integration

DAG: Final = "counter-dag"
KEY: Final = "counter"
WRITERS: Final = 4
INCREMENTS: Final = 150
READERS: Final = 2
TOTAL: Final = WRITERS * INCREMENTS
DEADLINE_SECONDS: Final = 240.0
KEEP_LAST: Final = 5  # what the maintenance loop's compaction keeps of the counter
# gc's grace period in the loop: far above a write's duration (with 0, a file store's gc
# may remove a writer's temporary file in flight), yet gc frees what compaction dropped.
GC_GRACE_SECONDS: Final = 1.0


def _writer(root: str, durable: bool, start: Any, maintained: Any, results: Any) -> None:
    conflicts = 0
    try:
        store = Store(root, dag=DAG, durable=durable)
        start.wait(60)
        for i in range(INCREMENTS):
            if i == INCREMENTS // 2 and maintained is not None:  # a round overlaps the rest
                maintained.wait(60)
            while True:
                cur = store.get(KEY)
                value = cur.value if cur.found else 0
                if value != cur.version:
                    raise AssertionError(f"read version {cur.version} holding value {value}")
                try:
                    res = store.set(KEY, value + 1, expected_version=cur.version)
                except ConflictError as exc:
                    if exc.expected != cur.version or exc.actual <= cur.version:
                        raise AssertionError(f"bad conflict {exc!r} after reading {cur}") from exc
                    conflicts += 1
                    continue
                if res.version != value + 1:
                    raise AssertionError(f"set {value + 1} gave version {res.version}")
                break
        results.put(("writer", os.getpid(), conflicts, None))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        results.put(("writer", os.getpid(), conflicts, traceback.format_exc()))


def _reader(root: str, start: Any, stop: Any, results: Any) -> None:
    reads = 0
    last = 0
    try:
        cached = Store(root, dag=DAG)
        start.wait(60)
        while not stop.is_set():
            # Mostly one handle (its read cache), sometimes a fresh one (no cache).
            store = cached if reads % 16 else Store(root, dag=DAG)
            cur = store.get(KEY)
            value = cur.value if cur.found else 0
            if type(value) is not int or not 0 <= value <= TOTAL:
                raise AssertionError(f"read {value!r}")
            if value != cur.version:
                raise AssertionError(f"version {cur.version} holds {value}")
            if value < last:
                raise AssertionError(f"went backwards: {last} then {value}")
            last = value
            reads += 1
        results.put(("reader", os.getpid(), reads, None))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        results.put(("reader", os.getpid(), reads, traceback.format_exc()))


def _maintainer(root: str, start: Any, stop: Any, maintained: Any, results: Any) -> None:
    """Compact the counter to its last versions and collect garbage, in a loop.

    ``maintained`` is set after the first round: the writers wait for it halfway, so
    that at least one round runs while they write (it once finished after them).
    """
    rounds = 0
    try:
        store = Store(root, dag=DAG)
        start.wait(60)
        while not stop.is_set():
            store.compact(keep_last=KEEP_LAST)
            store.gc(grace_seconds=GC_GRACE_SECONDS)
            rounds += 1
            maintained.set()
        results.put(("maintainer", os.getpid(), rounds, None))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        results.put(("maintainer", os.getpid(), rounds, traceback.format_exc()))


Report = tuple[str, int, int, str | None]  # kind, pid, conflicts, reads or rounds, traceback


def _collect(results: Any, count: int, deadline: float) -> list[Report]:
    out: list[Report] = []
    while len(out) < count:
        try:
            out.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            break
    return out


@pytest.mark.parametrize("maintenance", [False, True], ids=["alone", "with-compact-and-gc"])
def test_cas_increments_lose_no_update(store_location, maintenance, record_property):
    durable = True
    root = store_location
    Store(root, dag=DAG).set("before", 0)  # create the store before the race
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    stop = ctx.Event()
    results = ctx.Queue()
    maintained = ctx.Event() if maintenance else None
    began = time.monotonic()
    deadline = began + DEADLINE_SECONDS
    with reap_processes() as procs:
        writers = [
            ctx.Process(
                target=_writer, args=(root, durable, start, maintained, results), daemon=True
            )
            for _ in range(WRITERS)
        ]
        readers = [
            ctx.Process(target=_reader, args=(root, start, stop, results), daemon=True)
            for _ in range(READERS)
        ]
        if maintenance:
            readers.append(
                ctx.Process(
                    target=_maintainer, args=(root, start, stop, maintained, results), daemon=True
                )
            )
        for proc in writers + readers:
            proc.start()
            procs.append(proc)
        start.set()
        done = _collect(results, WRITERS, deadline)
        stop.set()
        done += _collect(results, len(readers), time.monotonic() + 30)
    elapsed = time.monotonic() - began

    errors = [err for _, _, _, err in done if err]
    assert not errors, "\n".join(errors)
    maintainers = ["maintainer"] if maintenance else []
    assert sorted(kind for kind, *_ in done) == (
        maintainers + ["reader"] * READERS + ["writer"] * WRITERS
    )
    assert all(proc.exitcode == 0 for proc in writers + readers)
    conflicts = sum(n for kind, _, n, _ in done if kind == "writer")
    reads = sum(n for kind, _, n, _ in done if kind == "reader")
    rounds = sum(n for kind, _, n, _ in done if kind == "maintainer")
    record_property("seconds", round(elapsed, 2))
    record_property("conflicts", conflicts)
    record_property("reads", reads)
    record_property("maintenance_rounds", rounds)
    assert reads > 0
    assert rounds > 0 or not maintenance

    store = Store(root, dag=DAG)
    final = store.get(KEY)
    assert (final.found, final.value, final.version) == (True, TOTAL, TOTAL)
    if maintenance:
        _assert_compacted_history(store)
        return
    for version in range(1, TOTAL + 1):
        old = store.get(KEY, version=version)
        assert (old.found, old.version, old.value) == (True, version, version)
    stored = underlying(root)  # a served store's own location: its log is checked too
    if is_postgres(stored):
        assert [e.version for e in store.history(KEY).entries] == list(range(TOTAL, 0, -1))
        assert store.check().ok
        return

    path = log_path(stored, "dag", DAG, KEY)
    assert_clean_log(path)
    versions = read_versions(stored, path)
    assert [v.entry.version for v in versions] == list(range(1, TOTAL + 1))
    assert {v.entry.op for v in versions} == {"set"}
    assert [v.value for v in versions] == [str(n).encode() for n in range(1, TOTAL + 1)]


def _assert_compacted_history(store: Store) -> None:
    """After compaction ran beside the writers: the kept versions are the newest, dense, right."""
    kept = [e.version for e in store.history(KEY).entries]
    assert kept == list(range(TOTAL, TOTAL - len(kept), -1)), kept[:20]
    assert len(kept) >= KEEP_LAST
    for version in range(1, TOTAL + 1):
        if version in kept:
            old = store.get(KEY, version=version)
            assert (old.found, old.version, old.value) == (True, version, version)
        else:
            with pytest.raises(NotFoundError):
                store.get(KEY, version=version)
    assert store.check().ok
    # Versions never repeat after compaction: the counter goes on at TOTAL + 1.
    with pytest.raises(ConflictError):
        store.set(KEY, 0, expected_version=KEEP_LAST)
    assert store.set(KEY, TOTAL + 1, expected_version=TOTAL).version == TOTAL + 1
    store.compact(keep_last=1)
    store.gc(grace_seconds=0)
    assert [e.version for e in store.history(KEY).entries] == [TOTAL + 1]
    assert store.set(KEY, TOTAL + 2).version == TOTAL + 2
    assert store.check().ok
