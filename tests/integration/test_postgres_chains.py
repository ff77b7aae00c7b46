"""A version row lost from a PostgreSQL history is damage, never "no such version".

Each row holds ``prev``, the version its entry followed (castore/postgres/chains.py).
Every answer on a damaged store is compared with the same call on an undamaged
twin: equal, or ``CorruptionError``; the lost version itself is always the error.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

import castore
from castore import (
    CorruptionError,
    FormatVersionError,
    NotFoundError,
    Store,
    export_lines,
    import_lines,
)
from castore.postgres.location import parse
from tests.helpers import Cli

pytestmark = pytest.mark.integration

DAG: Final = "pg"
LENGTH: Final = 6


def query(location: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
    where = parse(location)
    with psycopg.connect(where.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description is not None else []


OLD_INSERT: Final = (  # a schema-1 castore's row: every column but prev
    "INSERT INTO versions (ref_id, version, scope, op, time_ns, digest, size, created_ns, "
    "audit, damaged_from, blob, inline) SELECT ref_id, version + 1, scope, op, time_ns + 1, "
    "digest, size, created_ns, audit, damaged_from, blob, inline FROM versions "
    "ORDER BY version DESC LIMIT 1"
)


def upgraded_from_version_1(location: str) -> None:
    """A filled store made a version-1 one (no ``prev``), then upgraded."""
    store = Store(location, dag=DAG)
    fill(store)
    store.close()
    query(location, "ALTER TABLE versions DROP COLUMN prev")
    query(location, "UPDATE castore_meta SET value = '1' WHERE name = 'schema_version'")
    castore.upgrade(location)


def lose(location: str, key: str, version: int) -> None:
    """Delete one version row by hand, as damage would."""
    gone = query(
        location,
        "DELETE FROM versions v USING refs r WHERE r.ref_id = v.ref_id AND r.key = %s "
        "AND v.version = %s RETURNING v.version",
        (key.encode(), version),
    )
    assert gone == [(version,)]


def answer(call: Callable[[], Any]) -> Any:
    """What a call gives: its result, or the kind of error it raised."""
    try:
        return call()
    except (CorruptionError, NotFoundError) as exc:
        return type(exc).__name__


def exported(store: Store) -> list[int]:
    return [json.loads(x)["version"] for x in list(export_lines(store))[1:-1]]


def reads(store: Store, key: str) -> dict[str, Any]:
    """Every read of ``key`` a user has: each version, its history (whole and paged), export."""
    out: dict[str, Any] = {}
    for v in range(1, LENGTH + 2):
        out[f"get {v}"] = answer(functools.partial(lambda v: store.get(key, version=v).value, v))
    out["get"] = answer(lambda: store.get(key).value)
    out["history"] = answer(lambda: [e.version for e in store.history(key).entries])

    def paged() -> list[int]:
        seen: list[int] = []
        before = None
        while True:
            page = store.history(key, limit=2, before_version=before)
            seen += [e.version for e in page.entries]
            if not page.entries or page.entries[-1].version == 1:
                return seen
            before = page.entries[-1].version

    out["history paged"] = answer(paged)
    out["export"] = answer(lambda: exported(store))
    return out


def fill(store: Store, key: str = "k") -> None:
    for n in range(1, LENGTH + 1):
        store.set(key, {"n": n})


@pytest.mark.parametrize("lost", [1, 3, LENGTH])
def test_a_lost_row_is_damage_on_every_read(new_postgres_location, lost):
    where = new_postgres_location()
    damaged, twin = Store(where, dag=DAG), Store(new_postgres_location(), dag=DAG)
    fill(damaged)
    fill(twin)
    lose(where, "k", lost)
    want, got = reads(twin, "k"), reads(damaged, "k")
    assert got[f"get {lost}"] == "CorruptionError"  # never "no version", never another one
    assert got["export"] == "CorruptionError"  # a backup never leaves it out quietly
    for call, expected in want.items():
        assert got[call] in (expected, "CorruptionError"), call
    if lost < LENGTH:  # the newest is also in the key's copy: its history still lists it
        assert got["history"] == got["history paged"] == "CorruptionError"
    assert twin.check().findings == []
    found = damaged.check()
    assert not found.ok
    assert found.findings


def test_check_repair_records_a_lost_middle_row_as_lost(postgres_location):
    store = Store(postgres_location, dag=DAG)
    fill(store)
    lose(postgres_location, "k", 3)
    report = store.check()
    assert [(f.path, f.problem, f.repaired) for f in report.findings] == [
        (
            f"versions/dag/{DAG}/k@4",
            "it followed version 3, whose row is missing (the row below it: version 2)",
            False,
        )
    ]
    assert store.check(repair=True).ok
    assert [(e.version, e.operation) for e in store.history("k").entries] == [
        (6, "set"), (5, "set"), (4, "set"), (3, "damaged"), (2, "set"), (1, "set")
    ]  # fmt: skip
    with pytest.raises(CorruptionError):
        store.get("k", version=3)
    assert store.get("k", version=2).value == {"n": 2}
    assert [f.problem for f in store.check().findings] == [
        "dag/pg/k versions 3-3 were lost to damage (version rows lost)"  # information only
    ]
    assert store.set("k", 7).version == LENGTH + 1


def test_gaps_a_history_has_legitimately_are_no_damage(postgres_location, tmp_path):
    # An import that skips versions (an export of a compacted key), and compaction here.
    source = Store(tmp_path / "files", dag=DAG)
    fill(source, "imported")
    source.compact(keep_last=2)
    lines = list(export_lines(source))
    store = Store(postgres_location, dag=DAG)
    import_lines(store, lambda: iter(lines))
    fill(store, "compacted")
    store.compact(keep_last=2, prefix="compacted")
    for key in ("imported", "compacted"):
        assert [e.version for e in store.history(key).entries] == [LENGTH, LENGTH - 1]
        for v in range(1, LENGTH - 1):
            with pytest.raises(NotFoundError):
                store.get(key, version=v)
        assert store.get(key, version=LENGTH - 1).value == {"n": LENGTH - 1}
    assert exported(store) == [5, 6, 5, 6]
    assert store.check().findings == []
    lose(postgres_location, "compacted", LENGTH - 1)  # the oldest kept row: its prev was dropped
    with pytest.raises(CorruptionError):
        store.get("compacted", version=LENGTH - 1)
    with pytest.raises(CorruptionError):
        store.history("compacted")


def test_a_version_an_import_skipped_reads_as_never_written(postgres_location):
    store = Store(postgres_location, dag=DAG)
    header = json.dumps({"format": "castore-export", "version": 1}).encode()
    records = [
        {"scope": "dag", "namespace": DAG, "key": "k", "version": v, "op": "set",
         "time_ns": v, "value": v, "hash": hashlib.sha256(b"%d" % v).hexdigest()}
        for v in (1, 2, 5)
    ]  # fmt: skip
    lines = [header] + [json.dumps(r).encode() for r in records]
    import_lines(store, lambda: iter(lines))
    assert [e.version for e in store.history("k").entries] == [5, 2, 1]
    with pytest.raises(NotFoundError, match="has no version 3"):
        store.get("k", version=3)
    assert store.check().findings == []


def test_a_store_of_schema_version_1_is_refused_until_upgraded(postgres_location, tmp_path):
    store = Store(postgres_location, dag=DAG)
    fill(store)
    store.close()
    query(postgres_location, "ALTER TABLE versions DROP COLUMN prev")
    query(postgres_location, "UPDATE castore_meta SET value = '1' WHERE name = 'schema_version'")
    with pytest.raises(FormatVersionError, match="schema version 1: run `castore upgrade`"):
        Store(postgres_location, dag=DAG).get("k")
    cli = Cli(tmp_path, postgres_location)
    refused = cli.run("get", "k")
    assert refused.returncode == 1
    assert refused.stderr.count(b"\n") == 1
    assert b"castore upgrade" in refused.stderr
    report = castore.upgrade(postgres_location)
    assert (report.from_version, report.to_version) == (1, 2)
    store = Store(postgres_location, dag=DAG)
    assert [e.version for e in store.history("k").entries] == list(range(LENGTH, 0, -1))
    store.set("k", 7)  # a row with its chain, above rows without
    assert store.get("k", version=3).value == {"n": 3}
    assert store.check().findings == []
    lose(postgres_location, "k", 3)  # a row written at version 1: its loss is not proven
    with pytest.raises(NotFoundError, match="has no version 3"):
        store.get("k", version=3)
    lose(postgres_location, "k", LENGTH)  # the row version 7 followed: proven
    with pytest.raises(CorruptionError):
        store.get("k", version=LENGTH)


@pytest.fixture
def busy(postgres_location: str) -> Iterator[tuple[Store, list[BaseException]]]:
    """A key compacted and overwritten by import (its history back) in a loop, by threads."""
    errors: list[BaseException] = []
    stop = threading.Event()
    store = Store(postgres_location, dag=DAG)
    fill(store)
    lines = list(export_lines(store))

    def loop(work: Callable[[Store], object]) -> None:
        mine = Store(postgres_location, dag=DAG)
        try:
            while not stop.is_set():
                work(mine)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    def compact(s: Store) -> object:
        return s.compact(keep_last=3)

    def overwrite(s: Store) -> object:
        return import_lines(s, lambda: iter(lines), on_conflict="overwrite")

    workers = [threading.Thread(target=loop, args=(w,)) for w in (compact, overwrite)]
    for w in workers:
        w.start()
    try:
        yield store, errors
    finally:
        stop.set()
        for w in workers:
            w.join()


def test_reads_racing_compaction_and_import_overwrites_see_no_false_damage(busy):
    store, errors = busy
    deadline = time.monotonic() + 3
    reads_done = 0
    while time.monotonic() < deadline:
        for v in range(1, 8):
            with contextlib.suppress(NotFoundError):
                store.get("k", version=v)
        list(store.history("k", limit=2).entries)
        store.history("k")
        exported(store)
        reads_done += 1
    assert errors == []
    assert reads_done > 5


def test_a_repair_never_records_versions_compaction_dropped_as_lost(postgres_location):
    # Found by a review of the repair: the lost range ran from the row below down to
    # version 1, over the versions compaction dropped ("versions 1-5 lost").
    store = Store(postgres_location, dag=DAG)
    for n in range(1, 9):
        store.set("k", n)
    store.compact(keep_last=4)
    lose(postgres_location, "k", 5)  # the oldest kept row: below it, only what was dropped
    assert store.check(repair=True).ok
    assert [(e.version, e.operation) for e in store.history("k").entries] == [
        (8, "set"), (7, "set"), (6, "set"), (5, "damaged")
    ]  # fmt: skip
    with pytest.raises(NotFoundError, match="version 4 was compacted"):
        store.get("k", version=4)
    with pytest.raises(CorruptionError):
        store.get("k", version=5)
    assert [(f.problem, f.severity) for f in store.check().findings] == [
        ("dag/pg/k versions 5-5 were lost to damage (version rows lost)", "info")
    ]


def test_a_castore_of_schema_version_1_left_running_across_the_upgrade_writes_nothing(
    postgres_location,
):
    # Oracle: DESIGN.md ("no castore writes a row without it afterwards") and the rows this
    # castore writes, whose loss reads as damage. A schema-1 castore opened before the
    # upgrade checked the version once and went on inserting rows without prev; one of
    # them lost read as "no version 5" and check said ok. (tools: the reviewer's script ran
    # the commit before 28dfdb4 as that writer; its inserts are the statement below.)
    upgraded_from_version_1(postgres_location)
    with pytest.raises(psycopg.errors.CheckViolation, match="upgrade this castore"):
        query(postgres_location, OLD_INSERT)
    store = Store(postgres_location, dag=DAG)
    written = store.set("k", 7)  # this castore's rows name their prev
    store.set("k", 8)
    assert store.check().ok
    lose(postgres_location, "k", written.version)
    with pytest.raises(CorruptionError):
        store.get("k", version=written.version)
    assert store.check(repair=True).ok  # a row written at version 1 can still be repaired
    query(postgres_location, "UPDATE versions SET audit = '\\x7b7b'::bytea WHERE version = 2")
    assert store.check(repair=True).ok
    with pytest.raises(CorruptionError, match="lost"):
        store.get("k", version=2)


@pytest.mark.parametrize("lost", ["middle", "newest"])
def test_a_repair_records_lost_versions_in_time_order_for_history_and_audit(
    postgres_location, lost
):
    # Found by the audit review: the lost range's entry took the repair's own time,
    # later than the version above it, so audit (newest first, since-bounded per
    # key) listed it after older writes and since= its time left it out. Oracle: the
    # directory store's repair and the quarantine (a lost entry takes its neighbour's
    # time), and backend.py's rule (times never decrease within a key).
    store = Store(postgres_location, dag=DAG)
    fill(store)
    if lost == "middle":
        lose(postgres_location, "k", 3)  # the row above it follows it: a broken chain
    else:
        query(postgres_location, "DELETE FROM versions WHERE version >= 4")  # the copy names 6
    time.sleep(0.01)
    store.set("other", 1)  # a write after the lost versions' and before the repair
    assert store.check(repair=True).ok
    assert "damaged" in [e.operation for e in store.history("k").entries]
    records = list(castore.audit_records(store))
    assert [r.version for r in records if r.key == "k"] == sorted(
        (r.version for r in records if r.key == "k"), reverse=True
    )
    assert [r.time_ns for r in records] == sorted((r.time_ns for r in records), reverse=True)
    assert records[0].key == "other"
    marker = next(r for r in records if r.operation == "damaged")
    since = list(castore.audit_records(store, since_ns=marker.time_ns))
    assert marker in since


def test_an_upgrade_gives_a_store_upgraded_before_the_trigger_existed_its_trigger(
    postgres_location,
):
    # Oracle: DESIGN.md ("no castore writes a row without it afterwards"). A store upgraded
    # from version 1 by a castore from before that trigger is at version 2 without it: a
    # schema-1 castore still running wrote rows without prev, and `upgrade` did nothing.
    upgraded_from_version_1(postgres_location)
    query(postgres_location, "DROP TRIGGER castore_rows_name_prev ON versions")
    query(postgres_location, "DROP FUNCTION castore_refuse_rows_without_prev()")
    report = castore.upgrade(postgres_location)
    assert (report.from_version, report.to_version) == (2, 2)
    with pytest.raises(psycopg.errors.CheckViolation, match="upgrade this castore"):
        query(postgres_location, OLD_INSERT)
    assert castore.upgrade(postgres_location).from_version == 2  # again: nothing to add
    assert [e.version for e in Store(postgres_location, dag=DAG).history("k").entries] == list(
        range(LENGTH, 0, -1)
    )


def test_an_upgrade_gives_a_store_made_at_version_2_the_trigger_too(postgres_location):
    # The review of this session's changes: a store upgraded from version 1 while empty
    # (or whose rows without prev compaction dropped) shows no sign of its past but the
    # missing trigger; every version-2 store without it gets it, and its writes go on.
    store = Store(postgres_location, dag=DAG)
    fill(store)
    trigger = (
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'castore_rows_name_prev'"
        " AND tgrelid = 'versions'::regclass"
    )
    assert query(postgres_location, trigger) == [(0,)]
    assert castore.upgrade(postgres_location).from_version == 2
    assert query(postgres_location, trigger) == [(1,)]
    assert store.set("k", 99).version == LENGTH + 1
    assert store.check().ok
