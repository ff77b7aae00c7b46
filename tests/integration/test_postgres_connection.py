"""The PostgreSQL backend's connection faults: a lost connection, before and during COMMIT.

docs/DESIGN.md, "The PostgreSQL backend": a connection found broken before
``COMMIT`` was sent is made again and the operation runs once more (nothing
of it was applied); a connection lost while ``COMMIT`` was in flight raises
``StoreUnavailableError`` saying the write may or may not have been applied.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import castore
from castore import Store, StoreUnavailableError, codec
from castore.postgres.backend import PostgresBackend
from castore.transfer import export_lines
from tests.conftest import POSTGRES_URL, REQUIRE_POSTGRES, postgres_store_location

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_location(tmp_path: Any) -> Iterator[str]:
    """A fresh PostgreSQL store location (skipped without a server, unless CI requires one)."""
    if not POSTGRES_URL:
        assert not REQUIRE_POSTGRES, "CASTORE_REQUIRE_POSTGRES=1 without CASTORE_TEST_POSTGRES"
        pytest.skip("no PostgreSQL server: set CASTORE_TEST_POSTGRES (README, Development)")
    with postgres_store_location(tmp_path) as location:
        yield location


def terminate_session(store: Store) -> None:
    """Kill the server side of ``store``'s connection (as a server restart would)."""
    backend = store.backend
    assert isinstance(backend, PostgresBackend)
    pid = backend.db.backend_pid()
    assert pid is not None, "the store has no connection yet"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        row = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    assert row == (True,)


def test_an_idle_connection_killed_by_the_server_is_made_again(pg_location: str) -> None:
    store = Store(pg_location, dag="d")
    store.set("k", 1)
    terminate_session(store)
    assert store.get("k").value == 1  # a read: reconnected transparently
    terminate_session(store)
    written = store.set("k", 2)  # a write before COMMIT was sent: run once more, once
    assert written.version == 2
    assert [e.version for e in store.history("k").entries] == [2, 1]


class CommitFails:
    """Patches psycopg so that the next write loses its connection around its COMMIT.

    ``applied``: the server commits, then the connection goes before the answer
    arrives. Else the connection is cut just as the COMMIT is queued, so the
    server never gets it (and rolls the transaction back).
    ``closed=False``: the error comes while the connection still looks open (a
    review found psycopg raising so, without a SQLSTATE, when its server process was
    terminated during the ``COMMIT``: 6 writes reported as failed had been applied).
    """

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, *, applied: bool, closed: bool = True
    ) -> None:
        self.fired = False
        if applied:
            real_exit = psycopg.Pipeline.__exit__

            def exit_(pipeline: psycopg.Pipeline, *exc: Any) -> None:
                if self.fired or exc[0] is not None:
                    return real_exit(pipeline, *exc)
                self.fired = True
                real_exit(pipeline, *exc)  # sends COMMIT, reads its answer
                if not closed:  # psycopg's error before it marks the connection broken
                    raise psycopg.OperationalError("cannot exit pipeline mode while busy")
                pipeline._conn.close()
                raise psycopg.OperationalError("server closed the connection unexpectedly")

            monkeypatch.setattr(psycopg.Pipeline, "__exit__", exit_)
            return
        real_execute = psycopg.Cursor.execute

        def execute(cur: psycopg.Cursor[Any], query: Any, *args: Any, **kw: Any) -> Any:
            if query == "COMMIT" and not self.fired:
                self.fired = True
                cut = socket.socket(fileno=os.dup(cur.connection.fileno()))
                cut.shutdown(socket.SHUT_RDWR)  # the connection is gone; the fd stays libpq's
                cut.close()
            return real_execute(cur, query, *args, **kw)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)


@pytest.mark.parametrize(
    ("applied", "closed"),
    [(True, True), (True, False), (False, True)],
    ids=["applied", "applied-connection-looks-open", "not-applied"],
)
def test_a_connection_lost_during_commit_says_the_write_may_have_been_applied(
    pg_location: str, monkeypatch: pytest.MonkeyPatch, applied: bool, closed: bool
) -> None:
    store = Store(pg_location, dag="d")
    store.set("k", 1)
    fault = CommitFails(monkeypatch, applied=applied, closed=closed)
    with pytest.raises(StoreUnavailableError) as caught:
        store.set("k", 2)
    assert fault.fired
    message = str(caught.value)
    assert "may or may not have been applied" in message
    assert "dag/d/k" in message
    assert "@" not in message  # no credentials
    # The caller reads the key to know; the handle reconnects by itself.
    now = store.get("k")
    assert (now.version, now.value) == ((2, 2) if applied else (1, 1))
    # A retried conditional write reports a conflict if the first one was applied.
    if applied:
        with pytest.raises(castore.ConflictError):
            store.set("k", 2, expected_version=1)
    else:
        assert store.set("k", 2, expected_version=1).version == 2
    assert store.check().ok


def test_a_killed_client_leaves_no_partial_version(pg_location: str) -> None:
    store = Store(pg_location, dag="d")
    store.set("k", 1)
    schema = pg_location.rpartition("schema=")[2]
    conn = psycopg.connect(pg_location.partition("?")[0], autocommit=False)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    conn.execute("SELECT 1 FROM refs FOR UPDATE")  # a writer holding the key's lock...
    conn.execute(
        "INSERT INTO versions SELECT ref_id, 2, scope, op, time_ns, digest, size, created_ns, "
        "audit, damaged_from, blob, inline FROM versions"
    )
    conn.pgconn.finish()  # ...dies before COMMIT (no rollback sent): the server drops it all
    assert store.get("k").version == 1
    assert store.set("k", 2).version == 2
    assert [e.version for e in store.history("k").entries] == [2, 1]
    assert store.check().ok


def test_a_handle_used_in_a_forked_child_leaves_the_parents_connection_alone(
    pg_location: str,
) -> None:
    store = Store(pg_location, dag="d")
    store.set("k", 1)
    pid = os.fork()
    if pid == 0:  # the child: its own connection; exits without touching the parent's
        code = 0
        try:
            code = 0 if store.set("k", 2).version == 2 and store.get("k").value == 2 else 3
        except Exception:  # noqa: BLE001 - any failure is the child's exit code
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("k").value == 2  # the parent's connection still works
    assert store.set("k", 3).version == 3


def test_a_statement_timeout_is_a_failed_write_not_one_in_doubt(pg_location: str) -> None:
    """On a live connection an error rolled the transaction back: "failed", never "may have"."""
    store = Store(pg_location, dag="d")
    value = {"p": "q" * 400}
    store.set("other", value)  # the value's row exists
    store.set("k", 1)
    schema = pg_location.rsplit("schema=", 1)[1]
    digest = hashlib.sha256(codec.normalize(value)).digest()
    slow = Store(f"{pg_location}&options=-c%20statement_timeout%3D300", dag="d", lock_timeout=30)
    with psycopg.connect(POSTGRES_URL) as admin:  # holds the value's row until the end
        admin.execute(
            sql.SQL("SELECT 1 FROM {}.blobs WHERE digest = %s FOR UPDATE").format(
                sql.Identifier(schema)
            ),
            (digest,),
        )
        with pytest.raises(StoreUnavailableError) as raised:
            slow.set("k", value)
    assert "may or may not" not in str(raised.value), raised.value
    assert "statement timeout" in str(raised.value)
    assert store.get("k").version == 1


class CatalogBehind:
    """Patches psycopg so that the next read of ``castore_meta`` finds no such relation.

    As CI saw (2026-12-05): PostgreSQL makes a commit visible before it sends the
    catalog invalidations, so a session that looked for the schema before another one
    created it can see the new tables in ``pg_class`` and still resolve
    ``schema.castore_meta`` from its stale cache, for an instant. The injected
    statement is the same read of a schema that does not exist: the server's own
    error (``relation ... does not exist``).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: int) -> None:
        self.left = times
        real_execute = psycopg.Cursor.execute

        def execute(cur: psycopg.Cursor[Any], query: Any, *args: Any, **kw: Any) -> Any:
            text = query.as_string(cur) if isinstance(query, sql.Composable) else str(query)
            if "castore_meta WHERE" in text and self.left:
                self.left -= 1
                query = sql.SQL("SELECT value FROM {}.castore_meta WHERE name = %s").format(
                    sql.Identifier("castore_no_such_schema")
                )
                args = (("schema_version",),)
            return real_execute(cur, query, *args, **kw)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)


@pytest.mark.parametrize("operation", ["get", "set"])
def test_a_session_whose_catalog_lags_the_store_s_creation_reads_the_store(
    pg_location: str, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    reader = Store(pg_location, dag="d")
    assert not reader.get("k").found  # this session looked for the store before it existed
    Store(pg_location, dag="d").set("k", 1)  # another process creates it and writes
    fault = CatalogBehind(monkeypatch, times=2)
    if operation == "get":
        assert reader.get("k").value == 1  # never "not found", never "unavailable"
    else:
        assert reader.set("k", 2, expected_version=1).version == 2
    assert not fault.left
    newest = Store(pg_location, dag="d").history("k").entries[0]
    assert newest.version == (1 if operation == "get" else 2)


def test_a_catalog_that_never_shows_the_store_s_tables_is_reported(
    pg_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = Store(pg_location, dag="d")
    reader.get("k")
    Store(pg_location, dag="d").set("k", 1)
    CatalogBehind(monkeypatch, times=1000)
    with pytest.raises(StoreUnavailableError, match=r"castore_meta\" does not exist"):
        reader.get("k")


@pytest.fixture
def serializable_database() -> Iterator[str]:
    """A database whose default isolation is serializable (ALTER DATABASE), dropped after."""
    if not POSTGRES_URL:
        assert not REQUIRE_POSTGRES, "CASTORE_REQUIRE_POSTGRES=1 without CASTORE_TEST_POSTGRES"
        pytest.skip("no PostgreSQL server: set CASTORE_TEST_POSTGRES (README, Development)")
    text = f"castore_serializable_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    name = sql.Identifier(text)
    base, _, query_part = POSTGRES_URL.partition("?")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = 'serializable'").format(
                name
            )
        )
    try:
        database = base.rsplit("/", 1)[0] + "/" + text
        yield f"{database}?{query_part}&schema=s" if query_part else f"{database}?schema=s"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


@pytest.mark.parametrize("how", ["alter-database", "options"])
def test_a_default_isolation_above_read_committed_loses_no_concurrent_write(
    how: str, pg_location: str, request: pytest.FixtureRequest
) -> None:
    """Writes rely on READ COMMITTED; a database's default or ``options=`` never changes it.

    Oracle: the directory store (tests/integration/test_threads.py): every increment of
    threads sharing a key is acknowledged and counted. Under a default of serializable,
    72 of 200 were acknowledged ("could not serialize access due to concurrent update").
    """
    if how == "options":
        location = pg_location + "&options=-c%20default_transaction_isolation%3Dserializable"
    else:
        location = request.getfixturevalue("serializable_database")
    Store(location, dag="d").set("n", {"n": 0})
    errors: list[str] = []

    def worker() -> None:
        store = Store(location, dag="d")
        for _ in range(50):
            try:
                store.incr("n", 1, "/n")
            except castore.CastoreError as exc:
                errors.append(str(exc))
        store.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    final = Store(location, dag="d")
    assert errors == []
    assert final.get("n").value == {"n": 200}
    assert len(final.history("n", limit=1000).entries) == 201
    final.close()


@pytest.fixture
def role_without_grants(pg_location: str) -> Iterator[str]:
    """The store's location as a login role granted nothing on its schema, dropped after."""
    role = f"castore_nogrant_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
    try:
        scheme, rest = pg_location.split("://", 1)
        yield f"{scheme}://{role}:pw@{rest.rpartition('@')[2]}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_refused_export_names_what_it_was_reading(
    pg_location: str, role_without_grants: str
) -> None:
    # Oracle: the other commands' messages ("reading dag/d/k failed: permission denied ...").
    # An export named the scope as the operation: "custom failed: permission denied".
    Store(pg_location, dag="d").set("k", 1)
    store = Store(role_without_grants, dag="d")
    with pytest.raises(StoreUnavailableError) as refused:
        list(export_lines(store))
    message = str(refused.value)
    assert "permission denied" in message
    assert re.search(r": (dag|root_dag|global|custom) failed", message) is None, message
    assert "failed: permission denied" in message


def test_an_authentication_error_shows_no_user_name(pg_location: str) -> None:
    # Oracle: the location shown, which leaves the user out (DESIGN.md); libpq's message
    # quoted it: password authentication failed for user "castore".
    scheme, rest = pg_location.split("://", 1)
    user = rest.partition("@")[0].partition(":")[0]
    wrong = f"{scheme}://{user}:not-the-password@{rest.rpartition('@')[2]}"
    with pytest.raises(StoreUnavailableError) as refused:
        Store(wrong, dag="d").get("k")
    message = str(refused.value)
    assert "authentication failed" in message
    assert f'"{user}"' not in message
    assert 'user "***"' in message
