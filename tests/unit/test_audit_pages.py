"""The audit merge's memory: a packed record per key, pages of a bounded number of entries.

Oracle: the writes as the test made them (a model: every write and delete, in
the order they were made, newest first), on every backend (``store_location``,
tests/conftest.py). The bound is counted, not timed: the entries that the
backend's history pages returned and that something besides the test still
holds, at each record the audit yields.
"""

import sys
import time
from collections.abc import Iterator

import pytest

from castore import Store
from castore import audit as audit_module
from castore.audit import AuditRecord, audit
from castore.records import Entry

Write = tuple[str, str, int, str]  # namespace, key, version, operation
LARGEST_PAGE = 256  # castore.audit.PAGE_SIZES[-1] (named here: the test runs on older code too)


def handle(root: str) -> Store:
    return Store(root, dag="d", durable=False, run_id="r")


@pytest.fixture
def written(store_location: str) -> tuple[str, list[Write]]:
    """Keys across two namespaces whose histories cross the page sizes, written interleaved.

    Key ``long`` has 280 versions (pages of 1, 16 and 256, then one more
    read), ``p17`` 17 (1 + 16: the second page ends exactly at version 1);
    eight keys written round robin, two deleted, one removed by compaction.
    """
    s = handle(store_location)
    writes: list[Write] = []

    def put(ns: str, key: str, value: int, op: str = "set") -> None:
        version = sum(1 for w in writes if w[:2] == (ns, key)) + 1
        if op == "set":
            s.set(key, value, scope="custom", namespace=ns)
        else:
            s.delete(key, scope="custom", namespace=ns)
        writes.append((ns, key, version, op))

    put("a", "gone", 0)
    put("a", "gone", 0, "delete")
    time.sleep(0.01)
    s.compact(keep_within_seconds=0.005, scope="custom", namespace="a")  # removes "gone"
    writes = [w for w in writes if w[1] != "gone"]
    for i in range(280):
        put("b", "long", i)
        if i < 17:
            put("a", "p17", i)
        if i < 40:
            put("a" if i % 2 else "b", f"rr{i % 8}", i)
        if i in (30, 35):
            put("a" if i % 2 else "b", f"rr{i % 8}", i, "delete")
    return store_location, writes[::-1]


def ident(record: AuditRecord) -> Write:
    return (record.namespace, record.key, record.version, record.operation)


class Pages:
    """Every entry the backend's history pages returned, to count those held elsewhere."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries: list[Entry] = []
        self.largest = 0  # the longest page returned
        history = store.backend.history

        def counted(ref, before, limit):
            page = history(ref, before, limit)
            self.entries.extend(page)
            self.largest = max(self.largest, len(page))
            return page

        monkeypatch.setattr(store.backend, "history", counted)

    def held(self) -> int:
        """Entries referenced by more than this list (counted as an object held by it alone)."""
        alone = next(sys.getrefcount(e) for e in [object()])
        return sum(1 for e in self.entries if sys.getrefcount(e) > alone)


def counted_audit(store: Store, pages: Pages, **filters: object) -> Iterator[tuple[Write, int]]:
    for record in audit(store, **filters):  # type: ignore[arg-type]
        yield ident(record), pages.held()


@pytest.mark.parametrize("held", [1, 20, 300, 16384])
def test_audit_holds_a_bounded_number_of_entries(written, monkeypatch, held):
    root, want = written
    monkeypatch.setattr(audit_module, "ENTRIES_HELD", held, raising=False)
    store = handle(root)
    pages = Pages(store, monkeypatch)
    got = list(counted_audit(store, pages))
    assert [w for w, _ in got] == want
    # Before: one decoded entry per key at least (its pending one), and whole pages.
    assert max(n for _, n in got) <= held
    if held == 16384:
        assert pages.largest == LARGEST_PAGE
    assert pages.held() == 0


def test_many_keys_written_in_turn_are_read_in_pages(store_location, monkeypatch):
    # A first version held the pages of the 64 keys read last: 100 keys written in turn
    # then lost their page before their turn came again, and were read an entry per call.
    s = handle(store_location)
    for v in range(20):
        for i in range(100):
            s.set(f"k{i:02d}", v)
    monkeypatch.setattr(audit_module, "ENTRIES_HELD", 1600, raising=False)
    store = handle(store_location)
    calls: list[int] = []
    history = store.backend.history

    def counted(ref, before, limit):
        calls.append(limit)
        return history(ref, before, limit)

    monkeypatch.setattr(store.backend, "history", counted)
    got = [(r.key, r.version) for r in audit(store)]
    assert got == [(f"k{i:02d}", v + 1) for v in range(20) for i in range(100)][::-1]
    assert len(calls) == 100 * 3  # per key: its newest, then 16 (the cap), then the last 3


def test_audit_keeps_no_entry_per_key(store_location, monkeypatch):
    s = handle(store_location)
    for i in range(40):
        s.set(f"k{i:02d}", i)
    monkeypatch.setattr(audit_module, "ENTRIES_HELD", 4, raising=False)
    store = handle(store_location)
    pages = Pages(store, monkeypatch)
    got = list(counted_audit(store, pages))
    assert [w for w, _ in got] == [("d", f"k{i:02d}", 1, "set") for i in range(40)][::-1]
    assert max(n for _, n in got) == 0  # before: the 39 keys not yet printed, each an entry


@pytest.mark.parametrize("held", [1, 16384])
def test_filtered_audits_of_small_pages_are_the_models(written, monkeypatch, held):
    root, want = written
    monkeypatch.setattr(audit_module, "ENTRIES_HELD", held, raising=False)
    store = handle(root)
    every = list(audit(store))
    assert [ident(r) for r in every] == want
    times = [r.time_ns for r in every]
    since, until = times[len(times) * 2 // 3], times[len(times) // 3]
    got = [ident(r) for r in audit(store, since_ns=since, until_ns=until, namespace="a")]
    assert got == [ident(r) for r in every if since <= r.time_ns <= until and r.namespace == "a"]
    assert [ident(r) for r in audit(store, run_id="other")] == []
    assert [ident(r) for r in audit(store, scope="custom", namespace="b", run_id="r")] == [
        w for w in want if w[0] == "b"
    ]
