"""A PostgreSQL server with no connection slot free: a handle's threads share its connections.

Found by the thirty-sixth session's review: with ``max_connections`` reached by
other clients, a handle holding one connection failed 4 of 6 threads' calls at
once ("sorry, too many clients already"), though its own connection was free
again milliseconds later; a directory store completes all 6. The oracles: the
versions the calls made (each write once, consecutive), the error of a handle
with no connection to wait for, and the connections the handle holds once slots
are free again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from castore import StoreUnavailableError
from castore.postgres.backend import PostgresBackend
from castore.postgres.pool import Pool
from castore.waits import waiting_at_most
from tests.conftest import POSTGRES_URL
from tests.integration.test_postgres_pool import _FakeConnection, key_held, pooled, waiters

pytestmark = pytest.mark.integration

# A lower bound of the free slots: background processes are counted too.
_FREE = "SELECT current_setting('max_connections')::int - count(*) FROM pg_stat_activity"


@contextlib.contextmanager
def server_full() -> Iterator[None]:
    """Every connection slot of the test server taken by this block's connections."""
    held: list[psycopg.Connection[Any]] = []
    refusal = ""
    try:
        while len(held) < 10_000:
            try:
                held.append(psycopg.connect(POSTGRES_URL, autocommit=True))
            except psycopg.OperationalError as exc:
                refusal = str(exc)
                break
        assert "too many clients already" in refusal
        yield
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 10
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:  # the slots freed, seen
        while (admin.execute(_FREE).fetchone() or (0,))[0] < 10:
            assert time.monotonic() < deadline, "the slots were never freed"
            time.sleep(0.02)


def blocked_behind(admin: psycopg.Connection[Any], holder: int) -> int:
    """How many sessions wait for ``holder``'s lock."""
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder,)
    ).fetchone()
    return row[0] if row else 0


def test_threads_wait_for_the_handle_s_connection_when_the_server_has_no_slot(
    postgres_location: str,
) -> None:
    location, store = pooled(postgres_location, 6, lock_timeout=30)
    backend = store.backend
    assert isinstance(backend, PostgresBackend)
    pool = backend.db._pool
    assert len(backend.db.idle_backend_pids()) == 1  # the handle's one connection
    out: list[Any] = []
    failed: list[Exception] = []

    def one() -> None:
        try:
            out.append(store.set("k", "w").version)
        except StoreUnavailableError as exc:
            failed.append(exc)

    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin, contextlib.ExitStack() as full:
        with key_held(location, "k") as holder:
            threads = [threading.Thread(target=one)]
            threads[0].start()  # on the handle's connection, waiting for k's row
            while blocked_behind(admin, holder) < 1:
                time.sleep(0.01)
            full.enter_context(server_full())
            threads += [threading.Thread(target=one) for _ in range(5)]
            for t in threads[1:]:
                t.start()  # no slot for a second connection
            deadline = time.monotonic() + 10
            while len(pool._queue) + len(failed) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
        for t in threads:  # k's row is free: the calls take the handle's connection in turn
            t.join()
    assert failed == []  # before: 5 x "cannot connect: ... too many clients already"
    assert sorted(out) == [2, 3, 4, 5, 6, 7]
    assert [e.version for e in store.history("k").entries] == [7, 6, 5, 4, 3, 2, 1]
    # Slots free again: the pool grows past the connection it shrank to.
    with key_held(location, "k") as holder:
        (waiter,) = waiters(store, 1, out)  # the handle's connection waits for k's row
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            while blocked_behind(admin, holder) < 1:
                time.sleep(0.01)
        with waiting_at_most(5):
            assert store.set("j", 1).version == 1  # on a new connection
    waiter.join()
    assert out[-1] == 8
    assert len(backend.db.idle_backend_pids()) == 2


def test_a_handle_with_no_connection_fails_at_once_when_the_server_has_no_slot(
    postgres_location: str,
) -> None:
    _, store = pooled(postgres_location, 6, lock_timeout=30)
    store.close()  # no connection left to wait for
    with server_full(), pytest.raises(StoreUnavailableError) as caught:
        store.set("j", 1)
    message = str(caught.value)
    assert message.endswith("FATAL:  sorry, too many clients already"), message
    assert "\n" not in message
    password = psycopg.conninfo.conninfo_to_dict(POSTGRES_URL).get("password")
    assert password
    assert str(password) not in message
    assert not store.get("j").found  # nothing written
    assert [e.version for e in store.history("k").entries] == [1]


def test_a_thread_waiting_for_another_connection_never_waits_for_one_that_is_gone() -> None:
    pool = Pool(2)
    first, second = pool.take(None), pool.take(None)
    assert first is not None
    assert second is not None
    fake = first.conn = _FakeConnection()  # type: ignore[assignment]
    assert pool.give_way(second)  # no slot on the server: wait for ``first``
    handed: list[Any] = []
    waiting = threading.Thread(target=lambda: handed.append(pool.take(None, existing=True)))
    waiting.start()
    while not pool._queue:
        time.sleep(0.001)
    fake.close()
    pool.give_back(first)  # dead: the pool has no connection left to wait for
    waiting.join()
    assert handed[0] is not None
    assert handed[0].conn is None  # a new slot: connect again
    assert pool.take_now() is not None  # and the pool may grow to its size again
