"""A PostgreSQL handle's pool: threads of one handle run side by side, up to ``pool_max_conns``.

Before the pool a handle had one connection its threads took in turn, so a
call on one key waited for another thread's wait on another key's row lock
(docs/RELIABILITY.md had it as a known limit of a server over PostgreSQL).
The oracles: which calls finish while a key's row is held elsewhere, the
versions they made (each write exactly once), and the connections the
handle's sessions use, seen from the server.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from castore import InvalidValueError, LockTimeoutError, Store
from castore.postgres import pool as pool_module
from castore.postgres.backend import PostgresBackend
from castore.postgres.location import parse
from castore.postgres.pool import Pool
from castore.waits import waiting_at_most
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def key_held(location: str, key: str) -> Iterator[int]:
    """Another session's transaction holding ``key``'s row lock; yields its server process."""
    pg = parse(location)
    with psycopg.connect(pg.conninfo) as holder:
        holder.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
        held = holder.execute("SELECT 1 FROM refs WHERE key = %s FOR UPDATE", (key.encode(),))
        assert held.fetchall() == [(1,)]
        yield holder.info.backend_pid


def pooled(location: str, size: int, *, lock_timeout: float) -> tuple[str, Store]:
    """``location`` with a pool of ``size``, and a handle on it whose key ``k`` is at 1."""
    where = f"{location}&pool_max_conns={size}"
    store = Store(where, dag="d", lock_timeout=lock_timeout)
    store.set("k", 1)
    return where, store


def waiters(store: Store, count: int, out: list[Any]) -> list[threading.Thread]:
    """``count`` threads each setting ``k`` on ``store`` (waiting for its row), started."""

    def one() -> None:
        try:
            out.append(store.set("k", "w").version)
        except LockTimeoutError as exc:
            out.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def wait_until_blocked(holder: int, count: int) -> None:
    """Until ``count`` sessions wait behind ``holder``'s lock, directly or in line (10 s)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        while time.monotonic() < deadline:
            waiting = admin.execute(
                "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock'"
            ).fetchall()
            behind = {holder}
            for _ in waiting:  # the line: behind the holder, or behind one behind it
                behind |= {pid for pid, by in waiting if behind.intersection(by)}
            if len(behind) - 1 >= count:
                return
            time.sleep(0.02)
    raise AssertionError(f"{count} sessions never waited for the row")


def test_a_thread_s_call_never_waits_for_another_thread_s_row_lock(postgres_location: str) -> None:
    store = Store(postgres_location, dag="d", lock_timeout=5)
    store.set("k", 1)
    out: list[Any] = []
    with key_held(postgres_location, "k") as holder:
        (waiter,) = waiters(store, 1, out)
        wait_until_blocked(holder, 1)  # it waits for k's row now, on a connection of the handle
        started = time.monotonic()
        assert store.set("j", 1).version == 1  # one connection: after the 5 s wait
        assert store.get("k").value == 1
        took = time.monotonic() - started
    waiter.join()
    assert took < 3, took
    assert out == [2]  # the waiter went on once the row was free, once
    assert [e.version for e in store.history("k").entries] == [2, 1]


def test_a_handle_opens_at_most_pool_max_conns_connections(postgres_location: str) -> None:
    location, store = pooled(postgres_location, 2, lock_timeout=5)
    out: list[Any] = []
    with key_held(location, "k") as holder:
        threads = waiters(store, 2, out)
        wait_until_blocked(holder, 2)  # both connections wait for k's row now
        with waiting_at_most(0.3), pytest.raises(LockTimeoutError, match=r"within 0\.3 s$"):
            store.set("j", 1)  # no third connection, and none free within its bound
        late: list[Any] = []
        third = threading.Thread(target=lambda: late.append(store.set("j", 1).version))
        third.start()  # unbounded: it waits for a free connection
        time.sleep(0.3)
        assert late == []
    for t in [*threads, third]:
        t.join()
    assert sorted(out) == [2, 3]
    assert late == [1]
    assert [e.version for e in store.history("j").entries] == [1]  # the refused call wrote none


def test_idle_connections_ended_by_a_server_restart_are_made_again(postgres_location: str) -> None:
    store = Store(postgres_location, dag="d", lock_timeout=5)
    store.set("k", 1)
    out: list[Any] = []
    with key_held(postgres_location, "k") as holder:
        threads = waiters(store, 3, out)  # three connections, idle once the row is free
        wait_until_blocked(holder, 3)
    for t in threads:
        t.join()
    backend = store.backend
    assert isinstance(backend, PostgresBackend)
    pids = backend.db.idle_backend_pids()
    assert len(pids) == 3
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        for pid in pids:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    assert store.get("k").value == "w"  # a stale connection: made again, the call run again
    assert store.set("k", 5).version == 5  # once
    assert [e.version for e in store.history("k").entries] == [5, 4, 3, 2, 1]
    assert set(backend.db.idle_backend_pids()).isdisjoint(pids)


@pytest.mark.parametrize(
    "value", ["0", "1001", "-1", "x", "1.5", "", "%31%30%30%31", "2&pool_max_conns=3"]
)
def test_a_bad_pool_max_conns_is_refused_before_connecting(value: str) -> None:
    with pytest.raises(InvalidValueError, match="invalid pool_max_conns"):
        Store(f"postgresql://127.0.0.1:1/db?pool_max_conns={value}", dag="d")


def test_pool_max_conns_is_castore_s_own_not_libpq_s() -> None:
    where = parse("postgresql://u@127.0.0.1:1/db?pool_max_conns=3&sslmode=disable")
    assert where.pool == 3
    assert "pool_max_conns" not in where.conninfo
    assert parse("postgresql://u@127.0.0.1:1/db?pool_max_conns=%33").pool == 3
    assert parse("postgresql://u@127.0.0.1:1/db").pool == 8


class _FakeConnection:
    """What the pool looks at of a connection: alive, until closed."""

    closed = False
    broken = False

    def close(self) -> None:
        self.closed = True


def test_a_thread_that_gives_back_and_asks_again_never_passes_a_waiting_one() -> None:
    # Found by a review: a session given back went to whichever thread took the lock
    # first, nearly always the one that gave it back, so with a pool of 1 and a thread
    # looping on calls, another thread's call waited the whole run (6 s) or failed its
    # bound with no row lock held anywhere.
    pool = Pool(1)
    stop = threading.Event()
    calls = [0]

    def hog() -> None:
        while not stop.is_set():
            session = pool.take(None)
            assert session is not None
            session.conn = session.conn or _FakeConnection()  # type: ignore[assignment]
            time.sleep(0.001)  # a 1 ms call
            pool.give_back(session)
            calls[0] += 1

    thread = threading.Thread(target=hog)
    thread.start()
    try:
        while calls[0] < 3:
            time.sleep(0.001)
        served = []
        for _ in range(10):
            session = pool.take(1.0)  # a thousand of the hog's calls
            served.append(session is not None)
            if session is not None:
                pool.give_back(session)
    finally:
        stop.set()
        thread.join()
    assert served == [True] * 10


def test_a_bad_pool_max_conns_never_shows_what_may_be_a_password() -> None:
    # Found by a review: the parameter was read before the URL's check, and its error
    # quoted the value, which an unencoded "?" in a password puts there.
    for url in (
        "postgresql://alice:x?pool_max_conns=Tr0ub4dor3@db.example/state",
        "postgresql://alice@db.example:5432/state?pool_max_conns=Tr0ub4dor3",
    ):
        with pytest.raises(InvalidValueError) as caught:
            parse(url)
        assert "Tr0ub4dor3" not in str(caught.value)


def test_the_wait_for_a_connection_counts_toward_the_lock_timeout(postgres_location: str) -> None:
    # Found by a review: a call waited for a free connection without limit, then for
    # its row lock the whole lock timeout again (here 1.7 s for a 1 s timeout).
    location, store = pooled(postgres_location, 1, lock_timeout=1)
    out: list[Any] = []
    with key_held(location, "k") as holder:
        (first,) = waiters(store, 1, out)  # holds the one connection for 1 s
        wait_until_blocked(holder, 1)
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match=r"within 1 s$"):
            store.set("k", 3)  # queued for the connection, then k's row: 1 s in all
        took = time.monotonic() - started
        first.join()
    assert isinstance(out[0], LockTimeoutError)
    assert took < 1.45, took
    assert [e.version for e in store.history("k").entries] == [1]


class _Interrupted(BaseException):
    """What a Ctrl-C in a waiting thread stands for."""


def test_a_wait_interrupted_after_a_connection_was_handed_over_keeps_it_in_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Woken(threading.Condition):
        def wait_for(self, predicate: Any, timeout: float | None = None) -> Any:
            super().wait_for(predicate, timeout)
            raise _Interrupted  # right after it was handed the session

    real = pool_module._Waiter.__init__

    def init(self: Any, lock: threading.Lock) -> None:
        real(self, lock)
        self.woken = Woken(lock)

    monkeypatch.setattr(pool_module._Waiter, "__init__", init)
    pool = Pool(1)
    held = pool.take(None)
    assert held is not None
    held.conn = _FakeConnection()  # type: ignore[assignment]
    caught: list[BaseException] = []

    def waiting() -> None:
        try:
            pool.take(None)
        except _Interrupted as exc:
            caught.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    while not pool._queue:
        time.sleep(0.001)
    pool.give_back(held)  # handed to the waiting thread, which is then interrupted
    thread.join()
    assert len(caught) == 1
    assert pool.take_now() is held  # not lost with the interrupted thread


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # psycopg's:
# a connection made just before the interrupt is closed when collected, with a ResourceWarning
def test_an_interrupted_call_never_loses_the_pools_connection(postgres_location: str) -> None:
    # A KeyboardInterrupt as the pool handed a session out (after it left the idle list,
    # before the call held it) lost it: with pool_max_conns=1 every later call of the
    # handle, after close() too, raised LockTimeoutError (with 8: one slot per interrupt).
    from tests.unit.test_interrupts import _where

    modules = ("postgres/pool.py", "postgres/connection.py", "exits.py")
    location, first = pooled(postgres_location, 1, lock_timeout=1)
    first.close()
    n = 0
    while True:
        n += 1
        store = Store(location, dag="d", lock_timeout=1)
        kept, where = _where(lambda: store.set("k", n), n, modules)  # noqa: B023
        if where.startswith(("call __exit__", "call give_back")):
            kept = None  # as a cleanup begins: held until the traceback is dropped
        with Store(location, dag="d") as fresh:
            assert store.get("k") == fresh.get("k"), where
        store.close()
        assert store.set("k", "after").version == fresh.get("k").version, where
        store.close()
        if kept is None and where == "":
            break
    assert n > 20


def test_a_hand_out_interrupted_anywhere_gives_the_connection_to_the_waiting_thread() -> None:
    # The thread giving a connection back hands it to a queued one (_hand_out): interrupted
    # as it popped the waiter, that waiter's take raised ValueError at its timeout (not in
    # the queue); as it popped the idle connection, that was lost for good: with
    # pool_max_conns=1 every later call of the handle raised LockTimeoutError.
    n = 0
    while True:
        n += 1
        pool = Pool(1)
        held = pool.take(None)
        assert held is not None
        held.conn = _FakeConnection()  # type: ignore[assignment]
        got: list[object] = []
        thread = threading.Thread(target=lambda: got.append(pool.take(0.2)))  # noqa: B023
        thread.start()
        while not pool._queue:
            time.sleep(0.001)
        count, where = 0, ""

        def profile(frame: Any, event: str, _arg: object) -> None:
            nonlocal count, where
            back = frame.f_back  # _hand_out's own calls, and those of what it calls
            names = (frame.f_code.co_name, back.f_code.co_name if back else "")
            if "_hand_out" in names and event in ("call", "c_return"):
                count += 1
                if count == n:  # noqa: B023
                    where = f"{event} line {frame.f_lineno}"
                    raise _Interrupted

        sys.setprofile(profile)
        with contextlib.suppress(_Interrupted):
            pool.give_back(held)
        sys.setprofile(None)
        thread.join()
        if got != [held]:  # interrupted as _hand_out began: idle, for the next take
            assert got == [None], where
            assert where.startswith("call"), where
            assert pool.take_now() is held, where
        if not where:
            break
    assert n > 3


def test_a_take_interrupted_as_it_queued_leaves_no_waiter_to_hand_a_connection_to() -> None:
    # The waiter was queued before the ``try`` that takes it out again: interrupted just
    # after, it stayed queued with no thread behind it, and the next give-back handed it
    # the connection, lost for good (with pool_max_conns=1 every later call timed out).
    pool = Pool(1)
    held = pool.take(None)
    assert held is not None
    held.conn = _FakeConnection()  # type: ignore[assignment]

    def profile(frame: Any, event: str, arg: object) -> None:
        name = getattr(arg, "__name__", "")
        if event == "c_return" and frame.f_code.co_name == "take" and name == "append":
            sys.setprofile(None)
            raise _Interrupted

    sys.setprofile(profile)
    with contextlib.suppress(_Interrupted):
        pool.take(0.1)
    sys.setprofile(None)
    assert not pool._queue
    pool.give_back(held)
    assert pool.take_now() is held


@pytest.mark.parametrize("dropped", ["before-close", "after-close"])
def test_a_give_back_interrupted_as_it_began_never_keeps_a_connection_past_close(
    postgres_location: str, dropped: str
) -> None:
    # Interrupted as give_back began, the session stayed on the call's ticket, which left it
    # to the pool's orphans once the traceback was dropped, made idle again only by the next
    # take: a close() of the handle, before or after that, left the connection open (a
    # server's session) for as long as the closed handle lived.
    from tests.unit.test_interrupts import _Interrupt

    location, first = pooled(postgres_location, 2, lock_timeout=5)
    first.close()
    store = Store(location, dag="d")
    assert store.get("k").value == 1
    pid = store.backend.db.backend_pid()  # type: ignore[attr-defined]
    assert pid is not None

    def profile(frame: Any, event: str, _arg: object) -> None:
        code = frame.f_code
        if event == "call" and code.co_name == "give_back" and code.co_filename.endswith("pool.py"):
            sys.setprofile(None)
            raise _Interrupt

    kept: Any = None
    sys.setprofile(profile)
    try:
        store.get("k")
    except _Interrupt as exc:
        kept = exc
    finally:
        sys.setprofile(None)
    assert kept is not None
    if dropped == "before-close":
        kept = None
        gc.collect()
    store.close()
    kept = None
    gc.collect()
    assert not _backend_alive(postgres_location, pid), dropped
    assert store.get("k").value == 1  # the closed handle goes on: a connection made again
    store.close()


def _backend_alive(location: str, pid: int) -> bool:
    """Whether the server still has a session of process ``pid`` (it ends as it is closed)."""
    deadline = time.monotonic() + 10  # the server's process ends just after the client closes
    with psycopg.connect(parse(location).conninfo, autocommit=True) as conn:
        while True:
            rows = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchall()
            if not rows or time.monotonic() > deadline:
                return bool(rows)
            time.sleep(0.01)
