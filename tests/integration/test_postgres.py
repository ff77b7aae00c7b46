"""The PostgreSQL backend itself (issue 12): what the shared behaviour suite cannot show.

The backend-independent suites run on PostgreSQL through the ``store_location``
fixture (tests/conftest.py). Here: export/import round trips between the two
backends, clients SIGKILLed at random and a server restarted under load, the
schema's version and creation, hostile names that must never reach SQL as text,
and connection loss. Every test needs a server (``new_postgres_location``: skipped
without ``CASTORE_TEST_POSTGRES``, failed where CASTORE_REQUIRE_POSTGRES=1); the
ones that restart it also need ``CASTORE_TEST_POSTGRES_DIR`` (``restart_postgres``).
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import queue
import random
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

import castore
from castore import (
    ConflictError,
    FormatVersionError,
    InvalidValueError,
    NotFoundError,
    Store,
    StoreUnavailableError,
    export_lines,
    import_lines,
)
from castore.postgres.connection import Database
from castore.postgres.location import parse
from castore.valuecodec import CODEC_ZSTD
from tests.helpers import CASTORE_PATH, Cli, reap_processes

pytestmark = pytest.mark.integration

DAG: Final = "pg"
BIG: Final = {"text": "lorem ipsum dolor " * 20_000, "rows": [{"id": i} for i in range(300)]}
TABLES: Final = {"blobs", "castore_meta", "compactions", "refs", "versions"}


# -- helpers --------------------------------------------------------------------------------


def query(location: str, statement: str | sql.Composed, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the location's server, in its schema; its rows (if any)."""
    where = parse(location)
    with psycopg.connect(where.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description is not None else []


def hold_updates(location: str, table: str, lock: int) -> None:
    """A trigger holding each committed update of ``table`` until advisory ``lock`` is free."""
    schema = sql.Identifier(parse(location).schema)
    query(
        location,
        sql.SQL(
            "CREATE FUNCTION {}.hold() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_advisory_xact_lock({}); RETURN NULL; END $$"
        ).format(schema, sql.Literal(lock)),
    )
    query(
        location,
        sql.SQL(
            "CREATE TRIGGER hold AFTER UPDATE ON {}.{} FOR EACH ROW EXECUTE FUNCTION {}.hold()"
        ).format(schema, sql.Identifier(table), schema),
    )


def tables_of(location: str) -> set[str]:
    rows = query(
        location,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r'",
        (parse(location).schema,),
    )
    return {name for (name,) in rows}


def export_bytes(s: Store) -> bytes:
    return b"".join(export_lines(s))


def reader(data: bytes) -> Callable[[], Iterator[bytes]]:
    return lambda: iter(data.splitlines(keepends=True))


def timeless(data: bytes) -> list[dict[str, Any]]:
    """The export's records without their times (two stores written at different moments)."""
    out = []
    for line in data.splitlines()[1:-1]:  # between the header and the end line
        record = json.loads(line)
        record.pop("time_ns")
        record.pop("created_ns", None)  # absent on a delete
        out.append(record)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- export and import between the backends -------------------------------------------------


def populate(s: Store) -> None:
    """Keys in every scope, deletes, rollbacks, a compacted key, a long history, a big value."""
    s.set("cursor", {"last_id": 1})
    s.set("cursor", {"last_id": 2}, reason="bump")
    s.delete("cursor", reason="reset")
    s.rollback("cursor", to_version=1, reason="undo")
    s.rollback("cursor", to_version=3)  # back to the tombstone: a delete
    s.set("cursor", {"last_id": 3})
    for n in range(6):
        s.set("compacted", {"n": n})
    for n in range(260):  # more than a page of versions (the backend reads 256 at a time)
        s.set("long", n)
    s.set("gone", 1)
    s.delete("gone", reason="gone")
    s.set("big", BIG)
    s.set("big-twin", BIG)  # the same value: stored once
    s.set("numbers", b'{"x":1.2300,"y":-0.0,"z":1e400,"big":123456789012345678901234567890}')
    s.set("null", None)
    s.set("caf\u00e9/\U0001f600", "\u00e9\u2028")
    s.set("k", "global", scope="global")
    s.set("k", "custom a", scope="custom", namespace="a")
    s.set("k", "custom \u00e9", scope="custom", namespace="\u00e9")
    s.set("k", "root", scope="root_dag", namespace="root")
    report = s.compact(keep_last=2, prefix="compacted")
    assert (report.refs_compacted, report.versions_dropped) == (1, 4)


def handle(location: str | Path) -> Store:
    return Store(location, dag=DAG, durable=False, actor="alice", run_id="run-1", step="save")


def test_export_import_round_trip_between_file_and_postgresql(tmp_path, new_postgres_location):
    # A file store exported, imported into PostgreSQL and exported again: byte-identical.
    file_source = handle(tmp_path / "file-source")
    populate(file_source)
    first = export_bytes(file_source)
    locations = [new_postgres_location() for _ in range(3)]  # Store.root hides the password
    into_pg = handle(locations[0])
    report = import_lines(into_pg, reader(first))
    assert report.versions == len(first.splitlines()) - 2  # the header and the end line
    assert export_bytes(into_pg) == first
    assert export_bytes(handle(locations[0])) == first  # a fresh handle, a fresh connection
    back = handle(tmp_path / "back")
    import_lines(back, reader(export_bytes(into_pg)))
    assert export_bytes(back) == first

    # The reverse: a PostgreSQL store exported, imported into a file store, exported again.
    pg_source = handle(locations[1])
    populate(pg_source)
    second = export_bytes(pg_source)
    into_file = handle(tmp_path / "file-copy")
    import_lines(into_file, reader(second))
    assert export_bytes(into_file) == second
    again = handle(locations[2])
    import_lines(again, reader(export_bytes(into_file)))
    assert export_bytes(again) == second

    # Both backends stored the same history (only the times differ), in the same order.
    assert timeless(first) == timeless(second)
    audits = [r["audit"] for r in timeless(second) if r["key"] == "cursor"]
    assert [a.get("reason", "") for a in audits] == ["", "bump", "reset", "undo", "", ""]
    assert {(a["actor"], a["run_id"], a["step_name"]) for a in audits} == {
        ("alice", "run-1", "save")
    }
    for s, location in zip((into_pg, pg_source, again), locations, strict=True):
        # The big value is one zstd blob, shared by both keys.
        digest = bytes.fromhex(s.get("big").hash)
        assert query(location, "SELECT codec FROM blobs WHERE digest = %s", (digest,)) == [
            (CODEC_ZSTD,)
        ]
        assert s.get("big-twin").value == BIG
        assert [e.version for e in s.history("compacted").entries] == [6, 5]
        with pytest.raises(NotFoundError):
            s.get("compacted", version=4)
        assert s.get("long", version=1).value == 0
        assert s.check().ok
    # Imported histories go on where they ended, on both backends.
    for s in (into_pg, back, into_file, again):
        assert s.set("compacted", 9, expected_version=6).version == 7
        assert s.rollback("cursor", to_version=2).version == 7
        assert s.set("gone", 2, expected_version=0).version == 3


# -- compare-and-swap, SIGKILLed clients and a restarted server ------------------------------

KILL_KEYS: Final = ("a", "b", "c", "d", "e")
KILL_WORKERS: Final = 4
KILL_RUN_SECONDS: Final = 5.0


def _acknowledging_writer(location: str, seed: int, acks: str) -> None:
    """Write at random forever; after each acknowledged write, append it to ``acks``.

    One ``write(2)`` per record on an ``O_APPEND`` descriptor: a SIGKILL loses at
    most the record of the write in flight, never half a line of an earlier one.
    An unavailable server (a restart) or a conflict acknowledges nothing.
    """
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        rng = random.Random(seed)
        store = Store(location, dag=DAG)  # durable: an acknowledged write is committed
        seq = 0
        while True:
            seq += 1
            key = rng.choice(KILL_KEYS)
            reason = f"w{seed}:{seq}"
            roll = rng.random()
            value: dict[str, Any] = {"w": seed, "n": seq}
            if roll < 0.15:
                value["pad"] = "lorem ipsum " * 3000 + reason  # a compressed value
            try:
                if roll < 0.1:
                    if not store.delete(key, reason=reason).deleted:
                        continue
                    ack: dict[str, Any] = {"key": key, "op": "delete", "reason": reason}
                else:
                    if roll < 0.5:
                        seen = store.get(key).version
                        done = store.set(key, value, expected_version=seen, reason=reason)
                    else:
                        done = store.set(key, value, reason=reason)
                    ack = {"key": key, "op": "set", "version": done.version, "hash": done.hash}
                    ack["reason"] = reason
            except ConflictError:
                continue
            except StoreUnavailableError:
                time.sleep(0.02)
                continue
            ack["t"] = time.monotonic()
            os.write(fd, (json.dumps(ack) + "\n").encode())
    except BaseException:
        os.write(fd, (json.dumps({"error": traceback.format_exc()}) + "\n").encode())
        raise


def _read_acks(paths: list[Path]) -> list[dict[str, Any]]:
    acks = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            acks.append(json.loads(line))
    return acks


@pytest.mark.parametrize("restart", [False, True], ids=["kills", "kills-and-server-restart"])
def test_sigkilled_clients_lose_no_acknowledged_write(
    postgres_location, tmp_path, request, record_property, restart
):
    # Clients SIGKILLed at random moments (and the server restarted abruptly once,
    # mid-load): every acknowledged write is readable, versions stay dense, check passes.
    restart_server = request.getfixturevalue("restart_postgres") if restart else None
    Store(postgres_location, dag=DAG).set("a", "first")  # the store exists before the load
    rng = random.Random(12)
    ctx = multiprocessing.get_context("fork")  # no start-up time: the kills hit running writers
    paths: list[Path] = []
    kills = 0
    restarted_at = None
    with reap_processes(5.0) as procs:

        def spawn() -> None:
            path = tmp_path / f"acks-{len(paths)}.jsonl"
            paths.append(path)
            worker = ctx.Process(
                target=_acknowledging_writer,
                args=(postgres_location, len(paths), str(path)),
                daemon=True,
            )
            worker.start()
            procs.append(worker)

        for _ in range(KILL_WORKERS):
            spawn()
        began = time.monotonic()
        deadline = began + KILL_RUN_SECONDS
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.7))
            halfway = time.monotonic() - began > KILL_RUN_SECONDS / 2
            if restart_server is not None and restarted_at is None and halfway:
                stopped = time.monotonic()
                restart_server()
                restarted_at = time.monotonic()
                record_property("restart_seconds", round(restarted_at - stopped, 2))
                deadline = max(deadline, restarted_at + KILL_RUN_SECONDS / 2)  # load after it
                continue
            running = [p for p in procs if p.exitcode is None]
            if not running:  # every writer failed: their acks say why
                break
            victim = rng.choice(running)
            victim.kill()  # SIGKILL
            victim.join(5)
            kills += 1
            spawn()
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()
                kills += 1
            proc.join(5)
        codes = [proc.exitcode for proc in procs]
    acks = _read_acks(paths)
    errors = [a["error"] for a in acks if "error" in a]
    assert not errors, "\n".join(errors)
    assert all(code == -9 for code in codes), codes  # every worker died of SIGKILL only
    writes = [a for a in acks if a["op"] == "set"]
    record_property("kills", kills)
    record_property("acknowledged", len(acks))
    assert kills >= 8
    assert len(writes) > 100, len(writes)
    if restarted_at is not None:
        after = [a for a in acks if a["t"] > restarted_at]
        record_property("acknowledged_after_restart", len(after))
        assert after, "no write was acknowledged after the restart"

    store = Store(postgres_location, dag=DAG)
    acked = [(a["key"], a["version"]) for a in writes]
    assert len(acked) == len(set(acked)), "a version was acknowledged twice"
    for key in KILL_KEYS:
        history = store.history(key).entries
        versions = [e.version for e in history]
        assert versions == list(range(len(versions), 0, -1)), f"{key}: not dense: {versions[:20]}"
        by_version = {e.version: e for e in history}
        by_reason = {e.reason: e for e in history}
        for ack in (a for a in acks if a["key"] == key):
            if ack["op"] == "delete":
                assert by_reason[ack["reason"]].operation == "delete", ack
                continue
            entry = by_version[ack["version"]]
            assert (entry.hash, entry.reason, entry.operation) == (
                ack["hash"],
                ack["reason"],
                "set",
            ), ack
            got = store.get(key, version=ack["version"])
            assert (got.found, got.version, got.hash) == (True, ack["version"], ack["hash"])
    assert store.check().ok
    assert store.set("a", "after").version == len(store.history("a").entries)


# -- the schema: its version, foreign tables, creation ---------------------------------------


@pytest.mark.parametrize("text", ["²", "", "x1"])
def test_a_schema_version_that_is_not_a_number_is_refused_not_raised(postgres_location, text):
    """A hostile ``castore_meta`` row: ``"²".isdigit()`` is true, and int() raised ValueError."""
    Store(postgres_location, dag=DAG).set("k", 1)
    sql = "UPDATE castore_meta SET value = %s WHERE name = 'schema_version'"
    query(postgres_location, sql, (text,))
    with pytest.raises(FormatVersionError, match="holds no schema version"):
        Store(postgres_location, dag=DAG).get("k")


def test_a_store_of_a_newer_schema_version_is_refused(postgres_location):
    Store(postgres_location, dag=DAG).set("k", 1)
    query(postgres_location, "UPDATE castore_meta SET value = '99' WHERE name = 'schema_version'")
    store = Store(postgres_location, dag=DAG)  # a new handle: it has not seen the store yet
    operations: list[Callable[[], object]] = [
        lambda: store.get("k"),
        lambda: store.set("k", 2),
        lambda: store.delete("k"),
        store.list,
        lambda: store.history("k"),
        store.stats,
        store.check,
        lambda: castore.upgrade(postgres_location),
    ]
    for operation in operations:
        with pytest.raises(FormatVersionError, match=r"\b99\b"):
            operation()
    assert query(postgres_location, "SELECT count(*) FROM versions") == [(1,)]
    assert query(postgres_location, "SELECT value FROM castore_meta") == [("99",)]


def test_a_schema_holding_other_tables_is_refused(postgres_location):
    schema = sql.Identifier(parse(postgres_location).schema)
    where = parse(postgres_location)
    with psycopg.connect(where.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(sql.SQL("CREATE TABLE {}.customers (name text)").format(schema))
        conn.execute(sql.SQL("INSERT INTO {}.customers VALUES ('ada')").format(schema))
    store = Store(postgres_location, dag=DAG)
    for operation in (
        lambda: store.set("k", 1),
        lambda: store.get("k"),
        lambda: castore.upgrade(postgres_location),
    ):
        with pytest.raises(FormatVersionError, match="schema"):
            operation()
    assert tables_of(postgres_location) == {"customers"}
    assert query(postgres_location, "SELECT name FROM customers") == [("ada",)]


def test_upgrade_creates_the_schema_then_reports_it_current(postgres_location):
    first = castore.upgrade(postgres_location)
    assert (first.from_version, first.to_version) == (0, 2)
    assert tables_of(postgres_location) == TABLES
    again = castore.upgrade(postgres_location)
    assert (again.from_version, again.to_version) == (2, 2)
    store = Store(postgres_location, dag=DAG)
    assert store.get("k").found is False
    assert store.set("k", 1).version == 1
    later = castore.upgrade(postgres_location)
    assert (later.from_version, later.to_version) == (2, 2)
    assert store.get("k").value == 1


def _create_at_once(locations: list[str], barrier: Any, upgrade: bool, out: Any) -> None:
    results: list[tuple[Any, ...]] = []
    for location in locations:
        try:
            barrier.wait(60)
            if upgrade:
                report = castore.upgrade(location)
                results.append(("upgrade", location, report.from_version, report.to_version))
            else:
                Store(location, dag=DAG).set(f"p{os.getpid()}", os.getpid())
                results.append(("set", location, 0, 0))
        except Exception:  # noqa: BLE001 - the parent reports it
            results.append(("error", location, traceback.format_exc(), 0))
    out.put(results)


def test_processes_creating_the_store_at_the_same_moment_all_succeed(new_postgres_location):
    # Two writers and two upgrades start on each fresh schema at once (a barrier each).
    locations = [new_postgres_location() for _ in range(8)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    out = ctx.Queue()
    with reap_processes(60) as procs:
        for upgrade in (False, False, True, True):
            proc = ctx.Process(
                target=_create_at_once, args=(locations, barrier, upgrade, out), daemon=True
            )
            proc.start()
            procs.append(proc)
        results = [r for _ in procs for r in out.get(timeout=120)]
    errors = [r[2] for r in results if r[0] == "error"]
    assert not errors, "\n".join(errors)
    for location in locations:
        upgrades = [r[2:] for r in results if r[1] == location and r[0] == "upgrade"]
        assert len(upgrades) == 2
        assert all(to == 2 and before in (0, 2) for before, to in upgrades), upgrades
        assert sum(before == 0 for before, _ in upgrades) <= 1, upgrades  # created once
        assert len(Store(location, dag=DAG).list().entries) == 2
        assert tables_of(location) == TABLES


# -- hostile names: bound parameters only, byte-wise order as the file backend's -------------

HOSTILE_KEYS: Final = (
    "it's",
    'say "hi"',
    "'; DROP TABLE refs; --",
    "x'); DELETE FROM versions; --",
    "a\x00b",
    "\x00",
    "nul\x00",
    "%s",
    "%(k)s",
    "{0}",
    "$1",
    "back`tick",
    "semi;colon",
    "caf\u00e9",
    "cafe",
    "\U0001f600",
    "\u65e5\u672c/\u8a9e",
    "\u00ff",
    "\uffff",
    "\U0010ffff",
    "Z",
    "a",
    "a\x01",
    "a\x7f",
    "a/b",
    "ab",
    "e" * 4096,
    "\u00e9" * 2048,
)
HOSTILE_NAMESPACES: Final = (
    "'; DROP TABLE refs; --",
    "ns\x00nul",
    "o'brien",
    "\u00e9t\u00e9",
    "%s",
    "n" * 4096,
)
PREFIXES: Final = ("", "a", "'", "\x00", "e", "caf", "\u00e9", "\U0001f600", "x'); ")


def _write_hostile(s: Store, location: str | Path) -> None:
    for namespace in HOSTILE_NAMESPACES:
        for n, key in enumerate(HOSTILE_KEYS):
            s.set(key, {"key": key, "namespace": namespace}, scope="custom", namespace=namespace)
            if n % 5 == 0:
                s.set(key, [key, n], scope="custom", namespace=namespace)
            if n % 7 == 3:
                s.delete(key, scope="custom", namespace=namespace)
    hostile_dag = Store(location, dag="d'; DROP SCHEMA public; --", durable=False)
    hostile_dag.set("'; DROP TABLE blobs; --", "dag")


def test_hostile_keys_and_namespaces_round_trip_in_byte_order(tmp_path, postgres_location):
    pg = Store(postgres_location, dag=DAG, durable=False)
    files = Store(tmp_path / "files", dag=DAG, durable=False)
    _write_hostile(pg, postgres_location)
    _write_hostile(files, tmp_path / "files")
    for namespace in HOSTILE_NAMESPACES:
        for prefix in PREFIXES:
            listed = pg.list(prefix, scope="custom", namespace=namespace)
            expected = files.list(prefix, scope="custom", namespace=namespace)
            keys = [e.key for e in listed.entries]
            assert keys == [e.key for e in expected.entries], (namespace[:20], prefix)
            assert keys == sorted(keys, key=lambda k: k.encode("utf-8"))
            assert [e.version for e in listed.entries] == [e.version for e in expected.entries]
            assert listed.skipped == []
        for key in HOSTILE_KEYS:
            got = pg.get(key, scope="custom", namespace=namespace)
            want = files.get(key, scope="custom", namespace=namespace)
            assert (got.found, got.version, got.hash, got.value_json) == (
                want.found,
                want.version,
                want.hash,
                want.value_json,
            )
            assert pg.get(key, scope="custom", namespace=namespace, version=1).value == {
                "key": key,
                "namespace": namespace,
            }
            history = pg.history(key, scope="custom", namespace=namespace).entries
            assert [e.version for e in history] == [
                e.version for e in files.history(key, scope="custom", namespace=namespace).entries
            ]
    hostile = Store(postgres_location, dag="d'; DROP SCHEMA public; --")
    assert hostile.get("'; DROP TABLE blobs; --").value == "dag"
    # The same export, in the same order, times aside: every name came back byte for byte.
    assert timeless(export_bytes(pg)) == timeless(export_bytes(files))
    assert tables_of(postgres_location) == TABLES
    assert pg.check().ok


def test_keys_and_namespaces_of_4096_incompressible_bytes(tmp_path, postgres_location):
    # README: keys and namespaces up to 4,096 bytes work. Text that does not compress
    # (all but the shortest real-world keys past a few kB) must work as "e" * 4096 does.
    rng = random.Random(4096)
    key = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(1365))  # 4,095 bytes
    namespace = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(1365))
    for location in (str(tmp_path / "files"), postgres_location):
        s = Store(location, dag=DAG, durable=False)
        assert s.set(key, 1).version == 1
        assert s.set("k", 2, scope="custom", namespace=namespace).version == 1
        assert s.set(key, 3, scope="custom", namespace=namespace).version == 1
        assert s.get(key, scope="custom", namespace=namespace).value == 3
        assert [e.key for e in s.list(scope="custom", namespace=namespace).entries] == sorted(
            ["k", key], key=lambda k: k.encode("utf-8")
        )


def test_nul_characters_in_audit_fields_round_trip(tmp_path, postgres_location):
    # A NUL is valid in a DAG name (the dag scope's namespace), a reason, an actor, a run
    # id or a step; the file backend keeps them, so the PostgreSQL backend must too.
    for location in (str(tmp_path / "files"), postgres_location):
        s = Store(location, dag="d\x00ag", actor="a\x00", run_id="r\x00", step="s\x00")
        assert s.set("k", 1, reason="why\x00not").version == 1
        (entry,) = s.history("k").entries
        assert (entry.dag_name, entry.reason, entry.actor, entry.run_id, entry.step_name) == (
            "d\x00ag",
            "why\x00not",
            "a\x00",
            "r\x00",
            "s\x00",
        )


# -- connection loss --------------------------------------------------------------------------


def test_an_idle_handle_reconnects_after_a_server_restart(postgres_location, restart_postgres):
    store = Store(postgres_location, dag=DAG)
    writer = Store(postgres_location, dag=DAG)
    assert store.set("k", 1).version == 1
    assert writer.set("w", 1).version == 1
    restart_postgres()
    # The next call on each idle handle finds its connection broken and makes a new one.
    assert store.get("k").value == 1
    assert writer.set("w", 2).version == 2
    assert store.set("k", 2, expected_version=1).version == 2
    restart_postgres()
    assert writer.set("k", 3, expected_version=2).version == 3
    assert [e.version for e in store.history("k").entries] == [3, 2, 1]
    assert store.list().entries[0].key == "k"
    assert store.check().ok


def test_a_transparent_reconnect_logs_no_error(postgres_location, caplog):
    # An idle handle whose session the server ended (a restart, an idle timeout, an
    # administrator) reconnects on its next call: transparently, so nothing is logged.
    store = Store(postgres_location, dag=DAG)
    store.set("k", 1)
    operations: list[Callable[[], object]] = [
        lambda: store.set("k", 2),
        lambda: store.get("k"),
        lambda: store.delete("k"),
        store.list,
    ]
    for operation in operations:
        pid = store.backend.db.backend_pid()  # type: ignore[attr-defined]
        assert query(postgres_location, "SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
        with caplog.at_level(logging.DEBUG):
            operation()
        assert store.backend.db.backend_pid() != pid  # type: ignore[attr-defined]
        noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert noise == [], noise
    assert [e.version for e in store.history("k").entries] == [3, 2, 1]


def test_an_unreachable_server_is_unavailable_without_credentials():
    port = free_port()  # nothing listens there
    secret = "s3cr3t-" + os.urandom(6).hex()
    locations = [
        f"postgresql://castore:{secret}@127.0.0.1:{port}/castore_test?schema=state",
        f"postgres://127.0.0.1:{port}/db?user=castore&password={secret}&connect_timeout=5",
    ]
    for location in locations:
        store = Store(location, dag=DAG)
        assert secret not in repr(store)
        for operation in (
            functools.partial(store.get, "k"),
            functools.partial(store.set, "k", 1),
            store.list,
            functools.partial(castore.upgrade, location),
        ):
            with pytest.raises(StoreUnavailableError) as exc:
                operation()
            shown = [
                str(exc.value),
                repr(exc.value),
                "".join(traceback.format_exception(exc.value)),
            ]
            assert f"127.0.0.1:{port}" in str(exc.value)
            for text in shown:
                assert secret not in text, text


@pytest.mark.parametrize(
    ("userinfo", "query", "secret", "refused"),
    [
        ("castore:pa/ss9{tag}", "", "ss9{tag}", True),  # an unencoded "/": the host was cut there
        (
            "castore:p@ss9{tag}",
            "",
            "ss9{tag}",
            True,
        ),  # an unencoded "@": libpq names the rest as host
        ("castore:sec%00ret9{tag}", "", "ret9{tag}", True),  # libpq echoes a bad escape as written
        ("castore:p%41ss%zz{tag}", "", "{tag}", True),
        ("castore:ok", "password=q%41%zz{tag}", "{tag}", True),
        # Found by the thirteenth session's review: a "," or brackets after an "@" showed
        # the password's tail (and sent it to DNS as a host name to resolve).
        ("castore:x@hostA,Hunter{tag}", "", "Hunter{tag}", True),
        ("castore:ab@[Hunter{tag}]", "", "Hunter{tag}", True),
        ("castore:Pa@s:w0{tag}", "", "s:w0{tag}", True),
        ("castore:Secretpart?ss{tag}", "", "Secretpart", True),  # libpq: "Secretpart?ss…"
        ("castore:pass{tag}", "", "pass{tag}", False),  # a wrong password
    ],
)
def test_a_password_libpq_cannot_read_is_never_shown(
    postgres_location, userinfo, query, secret, refused
):
    # Found by a review: each of these showed the password, or its tail, in the error,
    # in repr(store) and on the CLI's stderr. A URL libpq would misread is now refused
    # before libpq sees it (exit 2), so no part of it reaches a host lookup.
    tag = os.urandom(6).hex()
    host = parse(postgres_location).conninfo.partition("://")[2].rpartition("@")[2]
    location = f"postgresql://{userinfo.format(tag=tag)}@{host}"
    location += f"?{query.format(tag=tag)}" if query else ""
    secret = secret.format(tag=tag)
    with pytest.raises(InvalidValueError if refused else StoreUnavailableError) as exc:
        Store(location, dag=DAG).get("k")
    cli = subprocess.run(
        [sys.executable, "-m", "castore", "--dag", DAG, "get", "k"],
        env={**os.environ, "CASTORE_DIR": location},
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == (2 if refused else 1), cli.stderr
    shown = [str(exc.value), repr(exc.value), cli.stderr, cli.stdout]
    shown += [repr(e) for e in (exc.value.__context__, exc.value.__cause__) if e is not None]
    for text in shown:
        assert secret not in text, text
        assert tag not in text, text
    if refused:
        assert "percent-encode" in str(exc.value)
    else:
        assert "cannot connect" in str(exc.value)
        assert exc.value.__context__ is None  # the driver's own words are not kept either


def test_a_wrong_password_is_unavailable_without_it(postgres_location):
    where = parse(postgres_location)
    secret = "wrong-" + os.urandom(6).hex()
    scheme, _, rest = where.conninfo.partition("://")
    host = rest.rpartition("@")[2]
    location = f"{scheme}://castore:{secret}@{host}?schema={where.schema}"
    with pytest.raises(StoreUnavailableError) as exc:
        Store(location, dag=DAG).get("k")
    assert secret not in str(exc.value)
    assert secret not in repr(exc.value)


# -- fork: a child never uses nor ends the parent's connection -------------------------------

FORK_SCRIPT: Final = """
import os, sys, time
from castore import Store

location, how = sys.argv[1], sys.argv[2]
store = Store(location, dag="pg")
store.set("parent", 1)
session = store.backend.db.backend_pid()
child = os.fork()
if child == 0:  # the child: it uses its copy of the handle, or closes it, or just exits
    if how == "use":
        store.set("child", 1)
        os._exit(0 if store.get("child").value == 1 else 1)
    if how == "close":
        store.close()
        os._exit(0)
    sys.exit(0)  # a normal exit: interpreter shutdown, finalizers and all
_, status = os.waitpid(child, 0)
time.sleep(0.3)  # a session the child ended would be gone by now
print(status, session, flush=True)
print(store.set("parent", 2).version, store.backend.db.backend_pid(), flush=True)
"""


@pytest.mark.parametrize("how", ["use", "close", "exit"])
def test_a_forked_child_leaves_the_parents_connection_alone(postgres_location, how):
    # A worker forked from a process holding a connected handle (a prefork server, a
    # DAG runner) uses it, closes it, or just exits: the parent's session lives on.
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, postgres_location, how],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": CASTORE_PATH},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    (status, session), (version, session_after) = (
        line.split() for line in done.stdout.decode().splitlines()
    )
    assert status == "0"
    # The parent's next write runs on its first session: the child did not end it.
    assert session_after == session, "the child ended the parent's session"
    assert version == "2"
    assert done.stderr == b"", done.stderr.decode()


# -- locks, and reads that create nothing ------------------------------------------------------


def test_a_write_to_a_locked_key_times_out_and_the_handle_goes_on(postgres_location):
    store = Store(postgres_location, dag=DAG, lock_timeout=0.5)
    store.set("k", 1)
    where = parse(postgres_location)
    with psycopg.connect(where.conninfo) as other:  # a transaction holding k's row lock
        other.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        other.execute("SELECT 1 FROM refs WHERE key = %s FOR UPDATE", (b"k",))
        began = time.monotonic()
        with pytest.raises(castore.LockTimeoutError):
            store.set("k", 2)
        assert 0.4 < time.monotonic() - began < 10
        assert store.get("k").value == 1  # reads take no lock
        assert store.set("other", 1).version == 1  # other keys are not blocked
        other.rollback()
    assert store.set("k", 2, expected_version=1).version == 2
    assert [e.version for e in store.history("k").entries] == [2, 1]


@pytest.mark.parametrize("locked", ["blobs", "refs"])
def test_a_timed_out_write_leaves_the_handle_ready_for_the_next_call(postgres_location, locked):
    # Found by a review: a lock timeout reported at the end of the pipelined write left
    # the session in its failed transaction, so the handle's next read and write failed
    # too ("current transaction is aborted"): one timeout broke a server's unrelated calls.
    store = Store(postgres_location, dag=DAG, lock_timeout=0.5)
    big = {"pad": "y" * 400}  # a blob row of its own (not inline)
    store.set("k", big)
    store.set("k2", 1)
    where = parse(postgres_location)
    with psycopg.connect(where.conninfo) as other:
        other.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        other.execute(sql.SQL("SELECT 1 FROM {} FOR UPDATE").format(sql.Identifier(locked)))
        with pytest.raises(castore.LockTimeoutError):
            store.set("k", big)
        if locked == "blobs":
            assert store.get("k2").value == 1
            assert store.set("k2", 2).version == 2
            assert store.history("k2").entries[0].version == 2
        other.rollback()
    assert store.set("k", big).version == 2
    assert store.get("k").version == 2
    assert store.check().ok


def _history_export(tmp_path: Path, key: str, tags: list[str]) -> bytes:
    source = Store(tmp_path / f"src-{key}", dag=DAG)
    for tag in tags:
        source.set(key, {"tag": tag, "pad": "x" * 400})  # blob rows, shared by both imports
    return export_bytes(source)


def test_imports_sharing_values_in_opposite_orders_do_not_deadlock(postgres_location, tmp_path):
    # Found by a review: each version's statement locked its blob row as it came, so two
    # imports taking the same values in opposite orders deadlocked ("deadlock detected",
    # reported as the store being unavailable).
    tags = ["A", "B", "C", "D", "E", "F"]
    Store(postgres_location, dag=DAG).set("init", 1)
    failures: list[str] = []
    for round_ in range(12):
        datas = [
            _history_export(tmp_path, f"x{round_}", tags),
            _history_export(tmp_path, f"y{round_}", tags[::-1]),
        ]

        def run(data: bytes, barrier: threading.Barrier) -> None:
            store = Store(postgres_location, dag=DAG)
            barrier.wait(30)
            try:
                castore.import_lines(store, reader(data))
            except castore.CastoreError as exc:
                failures.append(str(exc))
            finally:
                store.close()

        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=run, args=(data, barrier)) for data in datas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not failures, failures[:2]
    assert Store(postgres_location, dag=DAG).check().ok


def test_reads_and_writes_that_write_nothing_create_no_schema(postgres_location, tmp_path):
    store = Store(postgres_location, dag=DAG)
    (tmp_path / "dagu" / "v1").mkdir(parents=True)
    header = b'{"format":"castore-export","version":1}\n'
    operations: list[Callable[[], object]] = [
        lambda: store.get("k"),
        lambda: store.get("k", default={"a": 1}),
        store.list,
        lambda: store.list(scope="global", include_values=True),
        lambda: store.history("k"),
        lambda: store.diff("k", 1, update=False),
        lambda: list(castore.audit_records(store)),
        lambda: export_bytes(store),
        store.stats,
        store.check,
        lambda: store.check(repair=True),
        lambda: store.gc(grace_seconds=0),
        lambda: store.compact(keep_last=1),
        lambda: store.delete("k"),
        lambda: import_lines(store, reader(header)),
        lambda: list(castore.import_dagu(store, str(tmp_path / "dagu"))),
    ]
    for operation in operations:
        operation()
    for failing in (
        lambda: store.get("k", required=True),
        lambda: store.get("k", version=1),
        lambda: store.set("k", 1, expected_version=2),
        lambda: store.rollback("k", to_version=1),
    ):
        with pytest.raises((NotFoundError, ConflictError)):
            failing()
    where = parse(postgres_location)
    assert (
        query(postgres_location, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (where.schema,))
        == []
    )
    assert store.set("k", 1).version == 1  # the first write makes the store
    assert tables_of(postgres_location) == TABLES


# -- damage and bad locations -----------------------------------------------------------------


def _flip_last_bytes(data: bytes) -> bytes:
    return bytes(data[:-3]) + bytes(b ^ 0x20 for b in data[-3:])


def test_a_damaged_audit_record_skips_its_key_in_list_and_names_it(postgres_location):
    # Found by a review: one key whose newest row's audit bytes were damaged made
    # list (without values) fail for the whole namespace, with a message naming no key.
    store = Store(postgres_location, dag=DAG)
    for key, n in (("a", 1), ("b", 2), ("c", 3)):
        store.set(key, n)
    for table in ("refs", "versions"):
        query(
            postgres_location,
            sql.SQL(
                "UPDATE {} SET audit = %s WHERE ref_id = (SELECT ref_id FROM refs WHERE key = %s)"
            ).format(sql.Identifier(table)),
            (b"\x00\xff", b"b"),
        )
    fresh = Store(postgres_location, dag=DAG)
    listed = fresh.list()
    assert [e.key for e in listed.entries] == ["a", "c"]
    assert listed.skipped == ["b"]
    assert fresh.get("a").value == 1
    with pytest.raises(castore.CorruptionError, match=f"dag/{DAG}/b version 1: bad audit record"):
        fresh.get("b")
    with pytest.raises(castore.CorruptionError, match=f"dag/{DAG}/b version 1"):
        fresh.history("b")
    report = fresh.check()  # the review: check said ok
    assert not report.ok
    assert [f.path for f in report.findings] == [f"versions/dag/{DAG}/b@1"]
    assert report.findings[0].problem.startswith("version 1: bad audit record")


def _problems(report: Any) -> list[tuple[str, str, bool]]:
    return [(f.path, f.problem, f.repaired) for f in report.findings]


def test_repair_keeps_the_copy_of_the_newest_version_that_verifies(postgres_location):
    # Found by a review: check said ok for a version row without its value, and
    # --repair copied that row over the key's intact copy (the value was gone).
    store = Store(postgres_location, dag=DAG)
    store.set("k", {"a": 1})
    store.set("k", {"a": 2})
    query(postgres_location, "UPDATE versions SET inline = NULL WHERE version = 2")
    with pytest.raises(castore.CorruptionError, match="version 2"):
        store.get("k", version=2)
    assert _problems(store.check()) == [
        (
            f"versions/dag/{DAG}/k@2",
            "version 2: its value is missing (no inline bytes, no blob)",
            False,
        ),
        (f"refs/dag/{DAG}/k", "the copy of version 2 differs from its row", False),
    ]
    assert store.get("k").value == {"a": 2}
    repaired = store.check(repair=True)
    assert (repaired.ok, _problems(repaired)) == (
        True,
        [(f"refs/dag/{DAG}/k", "the copy of version 2 differs from its row", True)],
    )
    assert store.get("k", version=2).value == {"a": 2}
    assert store.get("k").value == {"a": 2}
    assert store.check().findings == []


@pytest.mark.parametrize("copy_damaged", [False, True], ids=["copy-intact", "copy-damaged"])
def test_lost_version_rows_are_found_and_their_versions_never_repeat(
    postgres_location, copy_damaged
):
    # Found by a review: with the newest rows deleted, check said ok and --repair took
    # the key back to version 1 (served as current), so the next set made version 2 again.
    store = Store(postgres_location, dag=DAG)
    for n in (1, 2, 3):
        store.set("k", {"n": n})
    query(postgres_location, "DELETE FROM versions WHERE version >= 2")
    if copy_damaged:
        query(postgres_location, "UPDATE refs SET inline = %s", (b'{"n":4}',))
    found = store.check()
    assert _problems(found) == [
        (f"refs/dag/{DAG}/k", "versions 2..3 are missing; the key's copy names 3", False)
    ]
    assert store.check(repair=True).ok
    history = [(e.version, e.operation) for e in store.history("k").entries]
    if copy_damaged:
        assert history == [(3, "damaged"), (1, "set")]
        with pytest.raises(castore.CorruptionError):
            store.get("k")
    else:
        assert history == [(3, "set"), (2, "damaged"), (1, "set")]
        assert store.get("k").value == {"n": 3}
        assert store.get("k", version=3).value == {"n": 3}
    with pytest.raises(castore.CorruptionError):
        store.get("k", version=2)
    assert store.set("k", {"n": 5}).version == 4
    after = store.check()
    assert after.ok
    assert {f.severity for f in after.findings} == {"info"}  # the lost versions, recorded
    assert all("were lost to damage (version rows lost)" in f.problem for f in after.findings)


def test_a_lost_refs_row_is_never_read_as_absent_and_a_write_restores_it(postgres_location):
    # Found by a review: get answered "not found" while the versions remained, and the
    # next set failed with a duplicate key (StoreUnavailableError).
    store = Store(postgres_location, dag=DAG)
    store.set("k", {"a": 1})
    store.set("k", {"a": 2})
    query(postgres_location, "DELETE FROM refs")
    with pytest.raises(castore.CorruptionError, match="its row in refs is lost"):
        store.get("k")
    assert store.get("k", version=2).value == {"a": 2}
    ((problem,),) = [[f.problem] for f in store.check().findings]
    assert problem == "versions of a key whose refs row is lost (its name was in that row)"
    assert store.set("k", {"a": 3}).version == 3
    assert [e.key for e in store.list().entries] == ["k"]
    assert [e.version for e in store.history("k").entries] == [3, 2, 1]
    assert store.check().findings == []


def test_writers_that_restore_a_lost_refs_row_together_all_succeed(postgres_location):
    # Found by a review of the restore: a writer copied the newest version from a
    # snapshot older than its lock, and 58 of 160 concurrent sets failed (duplicate key).
    handles = [Store(postgres_location, dag=DAG) for _ in range(4)]
    for n in range(3):
        handles[0].set("k", n)
    errors: list[BaseException] = []
    versions: list[int] = []
    for trial in range(10):
        query(postgres_location, "DELETE FROM refs")
        start = threading.Barrier(len(handles))

        def write(store: Store, n: int = trial, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                versions.append(store.set("k", {"trial": n}).version)
            except BaseException as exc:  # noqa: BLE001  # every failure is the finding
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(h,)) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert sorted(versions) == list(range(4, 4 + 40))  # none repeated, none skipped
    assert [e.version for e in handles[0].history("k").entries] == list(range(43, 0, -1))
    assert handles[0].check().findings == []


def test_repair_never_records_versions_compaction_dropped_as_lost(postgres_location):
    # Found by the same review: versions 1..4 that compaction dropped were recorded as
    # lost ("versions 1-4 lost" instead of "was compacted") when row 5 was restored.
    store = Store(postgres_location, dag=DAG)
    for n in range(1, 6):
        store.set("k", n)
    store.compact(keep_last=1)
    query(postgres_location, "DELETE FROM versions WHERE version = 5")
    assert _problems(store.check()) == [
        (f"refs/dag/{DAG}/k", "versions 5..5 are missing; the key's copy names 5", False)
    ]
    assert store.check(repair=True).ok
    assert store.get("k", version=5).value == 5
    with pytest.raises(castore.NotFoundError, match="version 2 was compacted"):
        store.get("k", version=2)
    assert [e.version for e in store.history("k").entries] == [5]
    assert store.check().findings == []


def test_check_reports_a_key_another_session_holds_and_checks_the_rest(postgres_location):
    # Found by the same review: one locked key made the whole check raise LockTimeoutError.
    store = Store(postgres_location, dag=DAG, lock_timeout=0.5)
    store.set("held", 1)
    store.set("held", 2)
    store.set("other", 1)
    store.set("other", 2)
    query(postgres_location, "UPDATE versions SET inline = NULL WHERE version = 2")
    where = parse(postgres_location)
    with psycopg.connect(where.conninfo) as holder:  # a transaction holding the row lock
        holder.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        holder.execute("SELECT 1 FROM refs WHERE key = %s FOR UPDATE", (b"held",))
        report = store.check(repair=True)
    problems = {(f.path, f.problem, f.repaired) for f in report.findings}
    assert (f"refs/dag/{DAG}/held", "locked by another process for 0.5 s: not checked", False) in (
        problems
    )
    assert (f"refs/dag/{DAG}/other", "the copy of version 2 differs from its row", True) in problems
    assert not report.ok
    assert store.check(repair=True).ok  # once the lock is free


@pytest.mark.parametrize("value", [{"x": 1}, BIG], ids=["small", "zstd"])
def test_a_damaged_value_is_never_returned(postgres_location, value):
    store = Store(postgres_location, dag=DAG, durable=False)
    store.set("a", value)
    store.set("b", {"y": 2})
    store.set("a", value)  # the same value for two versions
    digest = bytes.fromhex(store.get("a").hash)
    # Damage the value where the backend keeps it: its blob, or its rows (a small value).
    blob = query(postgres_location, "SELECT data FROM blobs WHERE digest = %s", (digest,))
    if blob:
        query(
            postgres_location,
            "UPDATE blobs SET data = %s WHERE digest = %s",
            (_flip_last_bytes(blob[0][0]), digest),
        )
        damaged = [f"blobs/{digest.hex()}"]
    else:
        ((inline,),) = query(
            postgres_location, "SELECT DISTINCT inline FROM versions WHERE digest = %s", (digest,)
        )
        for table in ("versions", "refs"):
            query(
                postgres_location,
                sql.SQL("UPDATE {} SET inline = %s WHERE digest = %s").format(
                    sql.Identifier(table)
                ),
                (_flip_last_bytes(inline), digest),
            )
        damaged = [f"versions/dag/{DAG}/a@1", f"versions/dag/{DAG}/a@2"]
    fresh = Store(postgres_location, dag=DAG)
    for read in (
        lambda: fresh.get("a"),
        lambda: fresh.get("a", version=1),
        lambda: fresh.list(include_values=True),
        lambda: export_bytes(fresh),
        lambda: fresh.rollback("a", to_version=1),
    ):
        with pytest.raises(castore.CorruptionError):
            read()
    assert fresh.get("b").value == {"y": 2}  # other keys are never blocked
    assert [e.key for e in fresh.list().entries] == ["a", "b"]
    report = fresh.check()
    assert not report.ok
    assert [f.path for f in report.findings] == damaged
    assert [e.version for e in fresh.history("a").entries] == [2, 1]  # nothing was written


@pytest.mark.parametrize(
    "query_string",
    ["schema=Public", "schema=pg_catalog", "schema=a%3Bdrop", "schema=1st", "schema=" + "s" * 64],
)
def test_an_invalid_schema_parameter_is_refused_before_connecting(query_string):
    location = f"postgresql://castore:secret@127.0.0.1:{free_port()}/db?{query_string}"
    with pytest.raises(castore.InvalidValueError, match="schema") as exc:
        Store(location, dag=DAG)
    assert "secret" not in str(exc.value)
    with pytest.raises(castore.InvalidValueError, match="schema"):
        castore.upgrade(location)


# -- gc beside a write that takes an unused blob into use --------------------------------------


def _wait_for_lock_waiters(location: str, count: int) -> None:
    """Until ``count`` castore sessions wait for a lock (10 s at most)."""
    deadline = time.monotonic() + 10
    waiting = -1
    while time.monotonic() < deadline:
        ((waiting,),) = query(
            location,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'castore' "
            "AND wait_event_type = 'Lock' AND datname = current_database()",
        )
        if waiting >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{waiting} castore sessions wait for a lock, not {count}")


def test_gc_never_deletes_a_blob_a_committing_write_takes_into_use(postgres_location):
    # A value nobody references any more (compacted away) is written again while gc runs.
    # The write refreshes the blob under its row lock; gc, waiting for that lock, must then
    # see the new version that references it. A trigger holds the write after its blob
    # upsert and before its commit (as a slow WAL flush or a paused client would), and
    # gc starts in that window.
    store = Store(postgres_location, dag=DAG)
    store.set("a", BIG)
    store.set("a", 1)
    assert store.compact(keep_last=1).versions_dropped == 1  # BIG's blob: unreferenced now
    hold_updates(postgres_location, "blobs", 4242)
    outcomes: dict[str, Any] = {}

    def run(name: str, operation: Callable[[], object]) -> None:
        try:
            outcomes[name] = operation()
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcomes[name] = exc

    with psycopg.connect(parse(postgres_location).conninfo, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        writer = threading.Thread(
            target=run, args=("write", lambda: Store(postgres_location, dag=DAG).set("b", BIG))
        )
        writer.start()
        _wait_for_lock_waiters(postgres_location, 1)  # the write: blob upserted, held
        collector = threading.Thread(
            target=run,
            args=("gc", lambda: Store(postgres_location, dag=DAG).gc(grace_seconds=0)),
        )
        collector.start()
        _wait_for_lock_waiters(postgres_location, 2)  # gc: waits for the blob's row lock
        holder.execute("SELECT pg_advisory_unlock(4242)")  # the write commits, then gc goes on
        writer.join(30)
        collector.join(30)
    assert not isinstance(outcomes["write"], Exception), outcomes["write"]
    assert outcomes["write"].version == 1
    assert not isinstance(outcomes["gc"], Exception), outcomes["gc"]
    fresh = Store(postgres_location, dag=DAG)
    assert fresh.get("b").value == BIG  # the acknowledged write reads back
    assert fresh.check().ok


# -- reads while another process creates the store ---------------------------------------------


# Each round waits for 5 readers polling PostgreSQL; the rounds end at once normally.
_BARRIER_SECONDS = 90
_ABORTED = "the rounds were aborted"  # a reader that stopped because another one failed


def _read_until_created(locations: list[str], barrier: Any, out: Any) -> None:
    """For each store: read its key in a loop from the moment another process creates it."""
    errors: list[str] = []
    try:
        for location in locations:
            store = Store(location, dag=DAG)
            store.get("k")  # this session has looked for the store before it exists
            barrier.wait(_BARRIER_SECONDS)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if store.get("k").found:
                        break
                except FormatVersionError as exc:
                    errors.append(f"{location.rpartition('=')[2]}: {exc}")
            store.close()
    except threading.BrokenBarrierError:
        errors.append(_ABORTED)
    except Exception:  # noqa: BLE001 - the parent reports it
        errors.append(traceback.format_exc())
        barrier.abort()  # the parent stops at once and reports this
    out.put(errors)


def _what_readers_said(out: Any, procs: list[Any]) -> list[str]:
    """Each reader's errors but "aborted", and how many said nothing within 30 s (stuck)."""
    said: list[str] = []
    silent = 0
    for _ in procs:
        try:
            said += [e for e in out.get(timeout=30) if e != _ABORTED]
        except queue.Empty:
            silent += 1
    return said[:3] + [f"{silent} readers said nothing"] * bool(silent)


def test_reads_while_another_process_creates_the_store_see_no_foreign_schema(
    new_postgres_location,
):
    # A step reads a store at the moment another step's first write creates it: it must see
    # either no store or the store, never "holds tables but no castore store".
    readers = 5
    locations = [new_postgres_location() for _ in range(40)]
    # Spawned, not forked: a fork of a test process with threads running (pytest-xdist's
    # channel, the session's loopback server) can leave a child stuck on a lock one of them
    # held, which broke the barrier twice in CI (2026-12-04).
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(readers + 1)
    out = ctx.Queue()
    with reap_processes(2 * _BARRIER_SECONDS) as procs:
        for _ in range(readers):
            proc = ctx.Process(target=_read_until_created, args=(locations, barrier, out))
            proc.start()
            procs.append(proc)
        try:
            for location in locations:
                barrier.wait(_BARRIER_SECONDS)
                Store(location, dag=DAG).set("k", 1)
        except threading.BrokenBarrierError:
            # A reader that failed left the rounds: report what it saw, not the barrier.
            barrier.abort()
            said = _what_readers_said(out, procs)
            raise AssertionError(f"a reader left the rounds: {said}") from None
        errors = [e for _ in procs for e in out.get(timeout=2 * _BARRIER_SECONDS)]
    assert not errors, f"{len(errors)} reads failed, e.g. {errors[:3]}"


# -- rows edited by hand that reads served (the nineteenth session's review) ---------------


@pytest.mark.parametrize(
    "edits",
    [
        ["UPDATE versions SET op = 'bogus' WHERE version = 2", "UPDATE refs SET op = 'bogus'"],
        ["UPDATE versions SET size = 999 WHERE version = 2", "UPDATE refs SET size = 999"],
    ],
    ids=["op", "size"],
)
def test_a_version_whose_op_or_size_was_edited_is_damage_not_a_value(postgres_location, edits):
    # Found by a review: get served the value of a version whose op no castore writes
    # (history showed op "bogus"), or whose size is not its value's.
    store = Store(postgres_location, dag=DAG)
    store.set("k", {"a": 1})
    store.set("k", {"a": 2})
    for edit in edits:
        query(postgres_location, edit)
    fresh = Store(postgres_location, dag=DAG)
    with pytest.raises(castore.CorruptionError, match="version 2"):
        fresh.get("k")
    with pytest.raises(castore.CorruptionError, match="version 2"):
        fresh.get("k", version=2)
    assert fresh.get("k", version=1).value == {"a": 1}
    assert not fresh.check().ok


@pytest.mark.parametrize(
    ("edit", "params"),
    [
        ("UPDATE refs SET key = 'c', key_head = 'c' WHERE key = 'b'", ()),
        ("UPDATE refs SET key = %s WHERE key = 'b'", (b"b\xff",)),
        ("UPDATE refs SET namespace = %s WHERE key = 'b'", (b"p\xffg",)),
    ],
    ids=["renamed", "key-not-utf8", "namespace-not-utf8"],
)
def test_names_edited_by_hand_are_damage_not_another_key(postgres_location, tmp_path, edit, params):
    # Found by a review: list and export showed b's versions under the name c (b itself
    # missing, and a later set of c listed c twice); names that are not UTF-8 made list,
    # export and check raise UnicodeDecodeError (a traceback).
    store = Store(postgres_location, dag=DAG)
    store.set("a", 1)
    store.set("b", 2)
    query(postgres_location, edit, params)
    fresh = Store(postgres_location, dag=DAG)
    with pytest.raises(castore.CorruptionError, match="run castore check"):
        fresh.list()
    with pytest.raises(castore.CorruptionError, match="run castore check"):
        export_bytes(fresh)
    report = fresh.check()
    assert not report.ok
    assert any(f.path.startswith("refs/") for f in report.findings), report.findings
    message = Cli(tmp_path, postgres_location, dag=DAG).fail(5, "list")
    assert "run castore check" in message
    assert fresh.get("a").value == 1  # the other key reads as before


_COPY_OF_V1 = (
    "UPDATE refs r SET (version, op, time_ns, digest, size, created_ns, audit, damaged_from, "
    "blob, inline) = (SELECT version, op, time_ns, digest, size, created_ns, audit, "
    "damaged_from, blob, inline FROM versions v WHERE v.ref_id = r.ref_id AND v.version = 1) "
    "WHERE key = 'k'"
)


@pytest.mark.parametrize(
    "edit",
    ["UPDATE refs SET version = NULL, op = NULL WHERE key = 'k'", _COPY_OF_V1],
    ids=["copy-cleared", "copy-of-version-1"],
)
def test_a_copy_behind_its_rows_is_damage_not_an_older_version(postgres_location, edit):
    # Found by a review: reads trusted the key's copy of its newest version, so a copy
    # cleared or rolled back by hand read as "not found" (and delete said deleted=False)
    # or as version 1 while versions 2 and 3 were there.
    store = Store(postgres_location, dag=DAG)
    store.set("a", 1)
    for n in range(1, 4):
        store.set("k", {"n": n})
    query(postgres_location, edit)
    fresh = Store(postgres_location, dag=DAG)
    with pytest.raises(castore.CorruptionError, match="k"):
        fresh.get("k")
    with pytest.raises(castore.CorruptionError, match="k"):
        fresh.delete("k")
    listed = fresh.list()
    assert [e.key for e in listed.entries] == ["a"]
    assert listed.skipped == ["k"]
    assert not fresh.check().ok
    assert fresh.check(repair=True).ok  # the copy is made again from the newest row
    again = Store(postgres_location, dag=DAG)
    assert (again.get("k").version, again.get("k").value) == (3, {"n": 3})
    assert again.set("k", {"n": 4}).version == 4


@pytest.mark.parametrize(
    "columns",
    ["digest, size, inline", "audit", "time_ns, created_ns"],
    ids=["value", "audit", "times"],
)
def test_a_copy_that_keeps_its_version_but_not_its_row_is_damage_not_a_value(
    postgres_location, tmp_path, columns
):
    # Found by a review (2026-12-05): a copy given version 1's columns by hand but keeping
    # number 2 was served: get answered version 2 with version 1's value (list too), while
    # get --version 2 answered the row's; check found it and its repair left it ("both verify").
    store = Store(postgres_location, dag=DAG)
    store.set("a", 1)
    Store(postgres_location, dag=DAG, run_id="first").set("k", {"v": "old"})
    store.set("k", {"v": "new"})
    query(
        postgres_location,
        f"UPDATE refs r SET ({columns}) = (SELECT {columns} FROM versions v "  # noqa: S608
        "WHERE v.ref_id = r.ref_id AND v.version = 1) WHERE key = 'k'",
    )
    fresh = Store(postgres_location, dag=DAG)
    with pytest.raises(castore.CorruptionError, match=r"pg/k: .* differs from its version row"):
        fresh.get("k")
    with pytest.raises(castore.CorruptionError, match=r"pg/k: .* differs from its version row"):
        fresh.delete("k")
    assert Cli(tmp_path, postgres_location, dag=DAG).fail(5, "get", "k")
    assert fresh.get("k", version=2).value == {"v": "new"}  # the row, as before
    listed = fresh.list()
    assert ([e.key for e in listed.entries], listed.skipped) == (["a"], ["k"])
    assert not fresh.check().ok
    assert fresh.check(repair=True).ok  # the row is the record: the copy is made from it
    again = Store(postgres_location, dag=DAG)
    assert (again.get("k").version, again.get("k").value) == (2, {"v": "new"})
    assert again.get("k").hash == again.history("k").entries[0].hash
    assert again.check().ok


def test_a_delete_racing_the_keys_first_set_is_no_damage(postgres_location, monkeypatch):
    # Found by a review of the probe above: exists() read the refs row, found none, then
    # found the version another process had just committed, and called the store damaged
    # (932 of 3,000 racing deletes exited 5).
    deleter, creator = Store(postgres_location, dag=DAG), Store(postgres_location, dag=DAG)
    deleter.set("init", 1)
    armed = [True]
    original = Database.run
    creator_db = creator.backend.db  # type: ignore[attr-defined]  # the PostgreSQL backend's

    class Between:  # commits the other process's set right after exists' first statement
        def __init__(self, cur: Any) -> None:
            self._cur = cur

        def __getattr__(self, name: str) -> Any:
            return getattr(self._cur, name)

        def execute(self, statement: Any, *args: Any, **kw: Any) -> Any:
            done = self._cur.execute(statement, *args, **kw)
            if armed[0] and str(statement).startswith("SELECT version, coalesce"):
                armed[0] = False
                creator.set("k", 1)
            return done

    def run(self: Database, work: Any, what: str, **kw: Any) -> Any:
        if self is creator_db:
            return original(self, work, what, **kw)
        return original(self, lambda cur: work(Between(cur)), what, **kw)

    monkeypatch.setattr(Database, "run", run)
    assert deleter.delete("k").deleted
    assert not armed[0]  # the race happened
    assert Store(postgres_location, dag=DAG).get("k").found is False


def test_compaction_of_a_key_whose_copy_is_behind_keeps_its_versions_reserved(
    postgres_location,
):
    # Found by a review: removing the key set its floor from the copy (version 1), so the
    # next set gave version 2 again.
    store = Store(postgres_location, dag=DAG)
    store.set("k", 1)
    store.set("k", 2)
    store.delete("k")
    query(postgres_location, _COPY_OF_V1)
    Store(postgres_location, dag=DAG).compact(keep_within_seconds=0, prefix="k")
    assert Store(postgres_location, dag=DAG).set("k", 9).version == 4


def test_a_key_whose_refs_row_was_lost_after_compaction_goes_on_above_it(postgres_location):
    # Found by a review: the key's new row started at floor 0, so its next set gave
    # version 1 again while "get --version 2" said "was compacted"; check said ok.
    store = Store(postgres_location, dag=DAG)
    for n in range(3):
        store.set("k", n)
    store.delete("k")
    store.compact(keep_within_seconds=0)  # removed: floor 4, compactions 1-4
    query(postgres_location, "DELETE FROM refs")
    report = Store(postgres_location, dag=DAG).check()
    assert not report.ok
    assert [f.path.startswith("compactions/") for f in report.findings] == [True]
    assert Store(postgres_location, dag=DAG).set("k", "again").version == 5


def test_a_set_restores_the_blob_row_its_value_needs(postgres_location):
    # Found by a review: a set of the value the previous version holds only refreshed its
    # blob row; with that row gone, the set was acknowledged and its get said "missing".
    big = {"pad": "z" * 400}
    store = Store(postgres_location, dag=DAG)
    store.set("k", big)
    query(postgres_location, "DELETE FROM blobs")
    assert store.set("k", big).version == 2
    fresh = Store(postgres_location, dag=DAG)
    assert fresh.get("k").value == big
    assert fresh.get("k", version=1).value == big  # the same blob, back
    assert fresh.check().ok


# -- rows edited by hand that no read verifies (the thirteenth session's review) -----------


def _three_keys(location: str) -> Store:
    store = Store(location, dag=DAG)
    for key in ("a", "small", "z"):
        for n in range(3):
            store.set(key, n)
    return store


@pytest.mark.parametrize(
    ("edit", "repairable"),
    [
        ("UPDATE refs SET ns_id = '\\x00' WHERE key = 'small'", True),
        ("UPDATE refs SET key_head = 'smalx' WHERE key = 'small'", True),
        ("UPDATE refs SET key = 'smalx', key_head = 'smalx' WHERE key = 'small'", False),
    ],
    ids=["ns_id", "key_head", "key"],
)
def test_a_refs_row_whose_names_were_edited_is_reported(postgres_location, edit, repairable):
    # Found by a review: export, list and audit left the key out, and check said ok.
    store = _three_keys(postgres_location)
    before = b"".join(export_lines(store))
    query(postgres_location, edit)
    report = Store(postgres_location, dag=DAG).check()
    assert not report.ok
    assert [f.path.startswith("refs/") for f in report.findings] == [True]
    repaired = Store(postgres_location, dag=DAG).check(repair=True)
    assert repaired.ok is repairable
    fresh = Store(postgres_location, dag=DAG)
    if repairable:
        assert b"".join(export_lines(fresh)) == before
        assert [e.key for e in fresh.list().entries] == ["a", "small", "z"]
        assert fresh.check().ok
    else:
        assert repaired.findings[0].repair == "none: its names are lost"


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE versions SET op = 'bogus' WHERE version = 2",
        "UPDATE versions SET damaged_from = 1 WHERE version = 2",
    ],
    ids=["op", "damaged_from"],
)
def test_a_version_row_no_import_could_take_is_reported(postgres_location, edit):
    # Found by a review: check said ok, and the export was then refused by import.
    _three_keys(postgres_location)
    query(
        postgres_location,
        edit + " AND ref_id = (SELECT ref_id FROM refs WHERE key = 'small')",  # noqa: S608
    )
    report = Store(postgres_location, dag=DAG).check()
    assert not report.ok
    assert [f.path for f in report.findings] == [f"versions/dag/{DAG}/small@2"]


def test_a_floor_lowered_by_hand_is_reported_and_raised(postgres_location):
    # Found by a review: with the floor of a key compaction removed set to 0, the next
    # set answered version 1 again, and check said ok.
    store = Store(postgres_location, dag=DAG)
    store.set("removed", 1)
    store.delete("removed")
    store.compact(keep_last=1, keep_within_seconds=0, prefix="removed")
    undamaged = Store(postgres_location, dag=DAG).check()
    assert undamaged.ok, undamaged
    query(postgres_location, "UPDATE refs SET floor = 0 WHERE key = 'removed'")
    report = Store(postgres_location, dag=DAG).check()
    assert not report.ok
    assert "below version 2, which compaction dropped" in report.findings[0].problem
    assert Store(postgres_location, dag=DAG).check(repair=True).ok
    assert Store(postgres_location, dag=DAG).set("removed", 5).version == 3  # as undamaged


def test_a_copy_behind_its_rows_is_damage_not_an_unavailable_store(postgres_location):
    # Found by a review: every write failed with StoreUnavailableError (exit 1) naming a
    # unique constraint, where the store is damaged (exit 5) and check --repair fixes it.
    _three_keys(postgres_location)
    query(postgres_location, "UPDATE refs SET version = version - 1 WHERE key = 'small'")
    with pytest.raises(castore.CorruptionError, match="run castore check --repair"):
        Store(postgres_location, dag=DAG).set("small", 9)
    assert Store(postgres_location, dag=DAG).check(repair=True).ok
    assert Store(postgres_location, dag=DAG).set("small", 9).version == 4


def test_an_upper_case_scheme_is_the_same_store(postgres_location):
    # Found by a review: `POSTGRESQL://…` was taken for a PostgreSQL URL but refused as one
    # "libpq can read" (libpq reads the scheme in lower case only; URL schemes are not cased).
    Store(postgres_location, dag="d").set("k", {"v": 1})
    upper = "POSTGRESQL" + postgres_location[len("postgresql") :]
    got = Store(upper, dag="d").get("k")
    assert (got.version, got.value) == (1, {"v": 1})


def test_stats_reads_its_counts_on_one_snapshot(postgres_location, monkeypatch):
    """Was (the stats review): stats ran its per-scope and total queries in autocommit, each
    on its own snapshot, so a write committed between them made the report disagree with
    itself (reproduced with a writer thread: total keys 1 where the scopes summed to 0).
    Here the write is made to land between the first query and the others."""
    store = Store(postgres_location, dag=DAG)
    writer = Store(postgres_location, dag=DAG)  # its own connection: commits on its own
    store.set("a", 1)
    db = store.backend.db  # type: ignore[attr-defined]
    run = db.run

    class Between:
        def __init__(self, cur: Any) -> None:
            self._cur, self._done = cur, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._cur, name)

        def fetchall(self) -> Any:
            rows = self._cur.fetchall()
            if not self._done:
                self._done = True
                writer.set("b", 2)  # commits after the first query read
            return rows

    def spied(work: Callable[[Any], Any], what: str, **kw: Any) -> Any:
        return run(lambda cur: work(Between(cur)), what, **kw)

    monkeypatch.setattr(db, "run", spied)
    st = store.stats()
    for field in ("keys", "versions", "logical_bytes"):
        summed = sum(getattr(s, field) for s in st.scopes.values())
        assert (field, summed) == (field, getattr(st.total, field))
    assert (st.total.keys, writer.get("b").value) == (1, 2)
    monkeypatch.undo()
    assert store.stats().total.keys == 2
    writer.close()
    store.close()


@pytest.mark.parametrize("call", ["delete", "diff"])
def test_a_durable_answer_from_a_no_sync_write_waits_for_the_wal_flush(postgres_location, call):
    # A durable delete that finds the key deleted, or a diff that finds the value stored,
    # by a durable=False write (an asynchronous commit) rolled its transaction back: it
    # waited for no WAL flush, so a server crash could still take what it reported. It
    # commits now, under its row lock, with synchronous_commit on: its commit's flush
    # covers every commit before it.
    quick, durable = Store(postgres_location, dag=DAG, durable=False), Store(postgres_location)
    durable.set("k", 1, namespace=DAG)
    if call == "delete":
        assert quick.delete("k").deleted
    else:
        quick.set("k", 2)
    (written,) = query(postgres_location, "SELECT pg_current_wal_insert_lsn()::text")[0]
    if call == "delete":
        assert not durable.delete("k", namespace=DAG).deleted
    else:
        assert not durable.diff("k", 2, namespace=DAG).changed
    ((locker,),) = query(postgres_location, "SELECT xmax::text::bigint FROM refs")
    ((status, flushed),) = query(
        postgres_location,
        "SELECT txid_status((txid_current() >> 32 << 32) + %s), "
        "pg_current_wal_flush_lsn() >= %s::pg_lsn",
        (locker, written),
    )
    assert (status, flushed) == ("committed", True)
    assert durable.history("k", namespace=DAG, limit=1).entries[0].version == 2


def test_a_durable_import_settles_the_keys_it_skips_with_one_commit(postgres_location, tmp_path):
    # An import --on-conflict skip reports the keys it skipped as they are: on PostgreSQL
    # one synchronous commit at its end (on the last key skipped) flushes the WAL of every
    # commit before it, the durable=False ones that wrote those keys included; a commit
    # per skipped key cost 4 ms each (1.5 -> 10 s for 2,000 keys).
    quick = Store(postgres_location, dag=DAG, durable=False)
    other = Store(str(tmp_path / "other"), dag=DAG)
    for key in ("a", "b", "c"):
        quick.set(key, 1)
        other.set(key, 2)
    lockers = "SELECT convert_from(key, 'UTF8'), xmax::text::bigint FROM refs ORDER BY key"
    before = dict(query(postgres_location, lockers))
    (written,) = query(postgres_location, "SELECT pg_current_wal_insert_lsn()::text")[0]
    lines = list(export_lines(other))
    report = import_lines(Store(postgres_location), lambda: iter(lines), on_conflict="skip")
    assert report.skipped_refs == [f"dag/{DAG}/{key}" for key in ("a", "b", "c")]
    status = "SELECT txid_status((txid_current() >> 32 << 32) + %s)"
    committed = [
        key
        for key, locker in query(postgres_location, lockers)
        if locker != before[key]
        and query(postgres_location, status, (locker,))[0][0] == "committed"
    ]
    assert committed == ["c"]  # the last skipped key's lock only: one commit
    ((flushed,),) = query(
        postgres_location, "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (written,)
    )
    assert flushed
