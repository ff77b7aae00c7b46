"""A store handle's PostgreSQL connections: transactions, errors, reconnects.

:class:`Database` runs each operation as one function on a cursor, inside one transaction (or as
one autocommit statement), on a connection of the handle's pool (:mod:`castore.postgres.pool`):
threads sharing a handle run their calls side by side, up to the location's ``pool_max_conns``
(default :data:`~castore.postgres.location.DEFAULT_POOL`), and wait for a free connection past
it. It maps the driver's errors to castore's:

* a connection that cannot be made, or is lost: :class:`~castore.errors.StoreUnavailableError`,
  with the location but never its credentials (one the server has no slot for waits for another
  of the handle's instead, if it has one). A connection found broken before ``COMMIT`` was sent
  (a server restart while the handle was idle) is made again (the idle ones are closed too) and
  the operation run once more: nothing of it was applied. One lost while ``COMMIT`` was in
  flight is reported as such: the write may or may not have been applied (read the key to know;
  a retried ``set`` writes a new version, a retried conditional write reports a conflict if the
  first one was applied);
* a lock not taken within the handle's ``lock_timeout``: :class:`~castore.errors.LockTimeoutError`.

A pipelined write that fails closes its connection (psycopg may count a statement the
server skipped after the failure as prepared). A handle used in a forked child makes its
own connections, and leaves the parent's alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.pq import TransactionStatus

from castore import exits
from castore.errors import (
    CorruptionError,
    FormatVersionError,
    LockTimeoutError,
    StoreUnavailableError,
)
from castore.postgres import schema as tables
from castore.postgres.location import Location
from castore.postgres.pool import NoSlot, Pool, Session, Ticket, no_slot
from castore.waits import lock_wait

__all__ = ["Abandon", "Cursor", "Database", "Row"]

T = TypeVar("T")
Cursor = psycopg.Cursor[Any]
Row = tuple[Any, ...]

# Pauses between looks at a catalog that lags a store's creation (None: the last look).
_CATALOG_PAUSES = (0.001, 0.004, 0.016, 0.064, 0.25, None)
_HANDLES: weakref.WeakSet[Database] = weakref.WeakSet()  # every Database of this process
_QUOTED_USER = re.compile(r'\b(user|role) "(?:[^"]|"")*"')  # as libpq quotes a user name


def _after_fork_in_child() -> None:
    """A forked child inherits its parent's connections: let go of them without closing."""
    for db in list(_HANDLES):
        db.disown()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Abandon(Exception, Generic[T]):  # noqa: N818 - a control-flow signal, not an error
    """Raised by an operation to roll its transaction back and return ``result``."""

    def __init__(self, result: T) -> None:
        super().__init__()
        self.result = result


def _transaction(
    conn: psycopg.Connection[Any],
    cur: Cursor,
    work: Callable[[Cursor], T],
    state: list[bool],
    pipeline: bool,
    wait_seconds: float | None = None,
) -> T:
    """``BEGIN``, ``work``, ``COMMIT``; pipelined: two round trips for a typical write.

    In pipeline mode the ``BEGIN`` travels with ``work``'s first statement
    (sent when ``work`` first reads a result) and the ``COMMIT`` with its last
    statements. ``state`` gets a value once the ``COMMIT`` is queued: from
    then on a lost connection may have committed. Anything raised rolls back.
    ``wait_seconds`` is the transaction's ``lock_timeout``, when shorter than
    the session's (queued with the ``BEGIN``).
    """
    block = conn.pipeline() if pipeline else contextlib.nullcontext()
    block.__enter__()
    open_block = True
    try:
        cur.execute("BEGIN")
        if wait_seconds is not None:
            cur.execute(
                "SELECT set_config('lock_timeout', %s, true)", (_milliseconds(wait_seconds),)
            )
        result = work(cur)
        state.append(True)
        cur.execute("COMMIT")
        open_block = False
        block.__exit__(None, None, None)  # sends what is queued; a failure propagates
    except BaseException:
        # Leave the pipeline as after a normal block (psycopg would log the lost
        # connection of a stale handle, which the caller retries quietly).
        if open_block:
            with contextlib.suppress(psycopg.Error):
                block.__exit__(None, None, None)
        # A statement that failed at the pipeline's end (a lock timeout) leaves the
        # session in the failed transaction: end it, or the handle's next call fails too.
        with contextlib.suppress(psycopg.Error):
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        raise
    return result


def _milliseconds(seconds: float) -> str:
    """A ``lock_timeout`` setting of ``seconds`` (at least 1 ms: 0 would mean no limit)."""
    return f"{max(1, int(seconds * 1000))}ms"


def _reported_by_server(exc: psycopg.Error) -> bool:
    """Whether the server reported ``exc`` and the session lives on (it then rolled back).

    An error without a SQLSTATE is psycopg's own (``cannot exit pipeline mode while
    busy`` when the server process went away mid-``COMMIT``); class 08 (connection)
    and 57P (a terminated session, a shutdown) end the session. 57014, a statement
    timeout or cancel, does not.
    """
    state = exc.sqlstate
    return state is not None and not state.startswith(("08", "57P"))


class Database:
    """The connections of one store handle (made on first use) and its schema's state.

    Args:
        location: the parsed store location (its ``pool_max_conns``: the most
            connections at once, :mod:`castore.postgres.pool`).
        lock_timeout: seconds a write waits for its key's row lock.
        durable: False: commits do not wait for the WAL flush (``synchronous_commit``).
    """

    def __init__(self, location: Location, lock_timeout: float, durable: bool = True) -> None:
        self.location = location
        self.lock_timeout = lock_timeout
        self.durable = durable
        self._pool = Pool(location.pool)
        self._held = threading.local()  # the session this thread's call holds (nested calls)
        self._present = False  # the store's tables were found (they are never dropped)
        _HANDLES.add(self)

    def close(self) -> None:
        """Close the connections (a later call opens a new one; calls running finish first)."""
        self._pool.close()

    def backend_pid(self) -> int | None:
        """The server process of the connection the next call uses (None: not connected)."""
        return self._pool.newest_pid()

    def idle_backend_pids(self) -> list[int]:
        """The server processes of the idle connections."""
        return self._pool.idle_pids()

    def clean(self, exc: BaseException) -> str:
        """The driver's message for ``exc``, first line, without the URL's password or user.

        The location shown leaves the user name out; so does the message (libpq
        quotes it: ``password authentication failed for user "…"``, ``role "…"``).
        """
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        for secret in self.location.secrets:  # whole words only: "ok" never masks "token"
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
        return _QUOTED_USER.sub(r'\1 "***"', text)

    def _connect(
        self, session: Session, opened: psycopg.Connection[Any] | str | None = None
    ) -> psycopg.Connection[Any]:
        conn = self._open() if opened is None else opened
        if isinstance(conn, str):  # raised here, not in an except block: no driver context
            raise StoreUnavailableError(f"{self.location.shown}: {conn}")
        session.attach(self, conn)  # closed when the handle is collected unclosed
        return conn

    def _made(self, session: Session) -> bool:
        """Make ``session``'s connection; False: no slot on the server (:meth:`Pool.give_way`)."""
        conn = self._open()
        if isinstance(conn, NoSlot) and self._pool.give_way(session):
            return False
        self._connect(session, conn)
        return True

    def _open(self) -> psycopg.Connection[Any] | str:
        """A connection with its session set up, or what failed (the driver's words cleaned)."""
        try:
            conn = psycopg.connect(
                self.location.conninfo, autocommit=True, application_name="castore"
            )
        except psycopg.Error as exc:
            return (NoSlot if no_slot(exc) else str)(f"cannot connect: {self.clean(exc)}")
        try:
            conn.execute(
                "SELECT set_config('search_path', %s, false), "
                "set_config('lock_timeout', %s, false), "
                "set_config('synchronous_commit', %s, false), "
                # Writes rely on READ COMMITTED (docs/DESIGN.md, "Why each key is
                # linearizable"): a database's or role's default, or ``options=``, of
                # repeatable read or serializable failed most concurrent writes of a key.
                "set_config('default_transaction_isolation', 'read committed', false)",
                (
                    sql.Identifier(self.location.schema).as_string(conn),
                    _milliseconds(self.lock_timeout),
                    "on" if self.durable else "off",
                ),
            )
        except psycopg.Error as exc:
            conn.close()
            return f"cannot set up the session: {self.clean(exc)}"
        return conn

    def disown(self) -> None:
        """In a forked child: drop the parent's connections without ending their sessions."""
        self._pool.disown()

    def present(self, cur: Cursor) -> bool:
        """Whether the store's tables exist (checked until they are found; autocommit only).

        PostgreSQL makes a commit visible before it sends the catalog invalidations,
        so a session that looked for the schema before another one created it may,
        for an instant, see the new tables in ``pg_class`` yet fail to resolve
        ``schema.castore_meta`` from its stale cache: the check is asked again
        (each statement takes in the invalidations that arrived), a few times.

        Raises:
            FormatVersionError: the schema holds something else, or a newer store.
            psycopg.errors.UndefinedTable: the catalog still disagrees after the last try.
        """
        if self._present:
            return True
        for pause in _CATALOG_PAUSES:
            try:
                self._present = tables.version_of(cur, self.location.schema) > 0
                break
            except pg_errors.UndefinedTable:
                if pause is None:
                    raise
                time.sleep(pause)
        return self._present

    def store_exists(self) -> bool:
        """Whether the store's tables exist: no query once they were found (never dropped).

        Raises:
            FormatVersionError: the schema holds something else, or a newer store.
        """
        return self._present or self.run(self.present, "opening the store", transaction=False)

    def create(self) -> None:
        """Create the store's tables if they are absent (one transaction, advisory lock)."""
        self.run(lambda cur: tables.create(cur, self.location.schema), "creating the store")
        self._present = True

    def _unavailable(
        self, exc: psycopg.Error, what: str, committing: bool
    ) -> StoreUnavailableError:
        """The error for a failed operation; after ``COMMIT`` was sent, say it may be applied."""
        if committing:
            return StoreUnavailableError(
                f"{self.location.shown}: the connection was lost while committing {what}: "
                f"it may or may not have been applied (read it to know): {self.clean(exc)}"
            )
        return StoreUnavailableError(f"{self.location.shown}: {what} failed: {self.clean(exc)}")

    def _repeated(self, what: str) -> CorruptionError:
        """The error of a write whose version row exists already (rolled back)."""
        return CorruptionError(
            f"{self.location.shown}: {what}: a version row already holds the "
            "version after the key's copy of its newest: run castore check --repair"
        )

    def fetch(self, query: str, params: Sequence[Any] = (), what: str = "reading") -> list[Row]:
        """The rows of one query, run alone (autocommit)."""
        return self.run(lambda cur: cur.execute(query, params).fetchall(), what, transaction=False)

    @exits.contextmanager
    def _turn(self, what: str, ref: str = "") -> Iterator[tuple[Session, float | None, bool]]:
        """A session of the pool, connected, a shorter lock wait, whether it connected now.

        A call made inside another on the same thread uses the outer call's session. Waiting for
        a free connection (also when the server has no slot for a new one and the handle has
        others: :meth:`Pool.give_way`) counts toward the lock timeout (the thread's bound,
        :func:`castore.waits.lock_wait`, or the handle's); what is left of it, when shorter than
        the session's, is the transaction's.

        Raises:
            LockTimeoutError: every connection stayed in use for the lock timeout.
            StoreUnavailableError: no connection could be made (and none to wait for).
        """
        held: Session | None = getattr(self._held, "session", None)
        if held is not None:
            yield held, None, False
            return
        timeout = lock_wait(self.lock_timeout)
        deadline = time.monotonic() + timeout
        ticket = self._pool.ticket()  # holds the session: an interrupted take loses none
        try:
            session, waited = self._pool.take_now(ticket), False
            if session is None:
                session, waited = self._wait(deadline, what, ref, ticket), True
            fresh = session.conn is None
            while session.conn is None and not self._made(session):
                session, waited = self._wait(deadline, what, ref, ticket, existing=True), True
                fresh = session.conn is None
            rest = max(0.0, deadline - time.monotonic()) if waited else timeout
            self._held.session = session
            yield session, None if rest > self.lock_timeout - 0.001 else rest, fresh
        finally:
            self._held.session = None
            if ticket.session is not None:
                self._pool.give_back(ticket.session, ticket)

    def _wait(
        self, deadline: float, what: str, ref: str, ticket: Ticket, existing: bool = False
    ) -> Session:
        """A session given back by ``deadline`` (:meth:`Pool.take`), held on ``ticket``."""
        session = self._pool.take(max(0.0, deadline - time.monotonic()), existing, ticket)
        if session is None:
            waited = lock_wait(self.lock_timeout)
            raise LockTimeoutError(f"{self.location.shown}: {what}", waited, ref)
        return session

    def run(
        self,
        work: Callable[[Cursor], T],
        what: str,
        *,
        transaction: bool = True,
        pipeline: bool = False,
        ref: str = "",
    ) -> T:
        """Run ``work`` in one transaction (or, ``transaction=False``, in autocommit).

        ``what`` names the operation in errors. ``pipeline``: send statements without waiting
        for results until ``work`` reads one (a write; not work that recovers from a failure).
        ``ref``: the key whose row ``work`` locks, for :attr:`LockTimeoutError.ref`.

        Raises:
            StoreUnavailableError: the server cannot be reached, or the connection was lost.
            LockTimeoutError: a row lock was not taken within the lock timeout (:meth:`_turn`).
        """
        with self._turn(what, ref) as (session, shorter, made):
            for attempt in (1, 2):
                fresh = made or session.conn is None
                conn = session.conn or self._connect(session)
                cur = session.cur or conn.cursor()
                committing = False
                failure: Exception
                try:
                    if conn.info.transaction_status != TransactionStatus.IDLE:
                        conn.execute("ROLLBACK")  # a failed call's transaction left open
                    if not transaction:
                        return work(cur)
                    state: list[bool] = []
                    try:
                        return _transaction(conn, cur, work, state, pipeline, shorter)
                    except Abandon as stop:
                        return stop.result  # type: ignore[no-any-return]
                    finally:
                        committing = bool(state)
                except pg_errors.LockNotAvailable:
                    waited = lock_wait(self.lock_timeout)
                    failure = LockTimeoutError(f"{self.location.shown}: {what}", waited, ref)
                except FormatVersionError:
                    raise
                except psycopg.OperationalError as exc:  # lost, or the server's (a deadlock)
                    lost = conn.broken or conn.closed or not _reported_by_server(exc)
                    if lost:
                        self._pool.lost(session)  # and the idle ones: a restart ends them all
                        if attempt == 1 and not fresh and not committing:
                            continue  # a stale connection: nothing was applied; once more
                    # Only the server's error on a live connection proves a COMMIT rolled back.
                    failure = self._unavailable(exc, what, committing and lost)
                except pg_errors.UniqueViolation:  # the row was rolled back
                    failure = self._repeated(what)
                except psycopg.Error as exc:
                    failure = self._unavailable(exc, what, False)
                if pipeline:  # psycopg may count a statement the server skipped as prepared
                    session.drop()
                raise failure  # out of the except block: the driver's words are not kept
            raise AssertionError("unreachable")  # pragma: no cover
