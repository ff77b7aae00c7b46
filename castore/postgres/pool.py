"""A store handle's PostgreSQL connections: up to a bound, shared by its threads.

A thread takes a :class:`Session` for one operation and gives it back: at
most ``size`` sessions exist at once, made when every existing one is in use
and the bound allows another (a single-threaded handle has one), and kept
idle until the handle is closed. Past the bound, threads queue and are
served in the order they came. The last session given back is the next one
taken, so a handle used by one thread at a time keeps using one connection.

When the server has no slot free for a new session's connection,
:meth:`Pool.give_way` gives the slot back while another session holds a
connection, and the thread waits for an existing one (``existing=True``):
the pool shrinks for as long as that takes, never below one connection,
and a later thread that finds none idle makes a new one again.

A session's connection belongs to the process that made it: in a forked
child, :meth:`Pool.disown` lets go of every one of them without ending the
parent's sessions (the child makes its own).
"""

from __future__ import annotations

import collections
import os
import re
import threading
import weakref
from typing import Any

import psycopg

__all__ = ["NoSlot", "Pool", "Session", "Ticket", "no_slot"]

Cursor = psycopg.Cursor[Any]
# The server's words for SQLSTATE 53300 (too_many_connections) at connection time, when
# libpq keeps no SQLSTATE: max_connections, the reserved slots, a role's or database's limit.
_NO_SLOT = re.compile(
    r"FATAL: +(sorry, too many clients already|remaining connection slots are reserved"
    r"|too many connections for (role|database) )"
)


class NoSlot(str):
    """Why a new connection failed, when the server had no slot free for it (53300)."""


def no_slot(exc: psycopg.Error) -> bool:
    """Whether a connection was refused for lack of a free slot on the server (53300).

    A server whose messages are translated (``lc_messages``) is not recognized.
    """
    return exc.sqlstate == "53300" or _NO_SLOT.search(str(exc)) is not None


class Session:
    """One slot of a pool: its connection and cursor once made (None: make one)."""

    __slots__ = ("closer", "conn", "cur", "retired")

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None
        self.cur: Cursor | None = None
        self.closer: weakref.finalize[Any, Any] | None = None
        self.retired = False  # the pool was closed while this was taken: close it when given back

    def attach(self, owner: object, conn: psycopg.Connection[Any]) -> None:
        """Hold ``conn``: closed with the session, or when ``owner`` is collected unclosed."""
        self.conn, self.cur = conn, conn.cursor()
        self.closer = weakref.finalize(owner, conn.close)

    def drop(self) -> None:
        """Close the connection (once); the slot stays, empty."""
        self.conn = self.cur = None
        if self.closer is not None:
            self.closer()
            self.closer = None

    def disown(self) -> None:
        """In a forked child: forget the parent's connection without ending its session.

        Closing it here (or freeing it: libpq then says goodbye on the shared
        socket) would end the parent's session, so this process's copy of the
        socket is pointed at ``/dev/null`` first.
        """
        conn, self.conn, self.cur = self.conn, None, None
        if self.closer is not None:
            self.closer.detach()
            self.closer = None
        if conn is not None and not conn.closed:
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, conn.fileno())
            finally:
                os.close(null)


class Ticket:
    """Who holds a session: set by the pool as it takes one out, cleared as it comes back.

    Set with no call in between (CPython runs a signal's handler, which may raise
    ``KeyboardInterrupt``, only as a call ends or a function starts), so an
    interrupted take never loses a session: it is idle still, or on the ticket.
    A ticket dropped holding one (a give-back interrupted as it began) leaves it to
    the pool's ``orphans``, taken back at the next take or close (no lock: it may run
    anywhere); its connection is closed at once if the pool was closed meanwhile.
    """

    __slots__ = ("orphans", "session")

    def __init__(self, orphans: list[Session] | None = None) -> None:
        self.session: Session | None = None
        self.orphans = orphans  # None: the caller gives its session back itself

    def __del__(self) -> None:
        session = getattr(self, "session", None)  # None: __init__ was interrupted
        if session is not None and self.orphans is not None:
            self.orphans.append(session)
            if session.retired:  # its pool was closed meanwhile: no take may come for it
                session.drop()


class _Waiter:
    """A thread queued: what it is handed, its wake-up, whether it waits for an existing one."""

    __slots__ = ("existing", "session", "woken")

    def __init__(self, lock: threading.Lock) -> None:
        self.session: Session | None = None
        self.woken = threading.Condition(lock)
        self.existing = False


class Pool:
    """Up to ``size`` sessions, taken and given back by threads, first come first served.

    Args:
        size: the most sessions (connections) at once, at least 1.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._queue: collections.deque[_Waiter] = collections.deque()  # oldest first
        self._idle: list[Session] = []  # given back, newest last
        self._all: set[Session] = set()  # every slot of this process, idle or taken
        self._orphans: list[Session] = []  # taken, never given back (:class:`Ticket`)
        self._pid = os.getpid()

    def ticket(self) -> Ticket:
        """A ticket whose session, if it is never given back, comes back to this pool."""
        return Ticket(self._orphans)

    def take(
        self, timeout: float | None, existing: bool = False, ticket: Ticket | None = None
    ) -> Session | None:
        """A session (an idle one if any, else a new slot), or None after ``timeout`` s.

        A thread that finds every slot taken queues (``timeout`` None: for as
        long as it takes), and what is given back goes to the thread that has
        waited longest: one that gives a session back and asks again at once
        never passes a waiting one. ``existing``: after :meth:`give_way`, wait
        for an idle session; a new slot only once the pool has none left (the
        threads queued behind wait too).
        """
        if self._pid != os.getpid():
            self.disown()  # forked without os.fork's hooks
        ticket = ticket or Ticket()
        with self._lock:
            free = self._free(ticket, existing)
            if free is not None:
                return free
            waiter = _Waiter(self._lock)
            waiter.existing = existing
            try:
                self._queue.append(waiter)  # in the ``try``: an interrupt leaves no one queued
                self._hand_out()  # idle ones a hand-out interrupted as it began left behind
                if waiter.woken.wait_for(lambda: waiter.session is not None, timeout):
                    ticket.session = waiter.session
                    return ticket.session
            except BaseException:  # interrupted (Ctrl-C): what it was handed goes on
                if waiter in self._queue:  # (handed one as a hand-out was interrupted)
                    self._queue.remove(waiter)
                if waiter.session is not None:
                    self._idle.append(waiter.session)
                    self._hand_out()
                raise
            self._queue.remove(waiter)  # not handed anything: still queued
            return None

    def take_now(self, ticket: Ticket | None = None) -> Session | None:
        """A session if one is free and no thread is queued, else None (no wait)."""
        if self._pid != os.getpid():
            self.disown()  # forked without os.fork's hooks
        with self._lock:
            return self._free(ticket or Ticket())

    def _free(self, ticket: Ticket, existing: bool = False) -> Session | None:
        """What :meth:`take` gets without queuing, on ``ticket`` (under the lock)."""
        self._adopt()
        if self._queue:
            return None
        if self._idle:
            session = ticket.session = self._idle[-1]  # no call between: one step
            del self._idle[-1]
            return session
        if not self._room(existing):
            return None
        session = ticket.session = Session()
        self._all.add(session)
        return session

    def _adopt(self) -> None:
        """Make the sessions of interrupted calls idle again (or closed) (under the lock)."""
        while self._orphans:
            orphan = self._orphans[-1]  # dropped once idle: an interrupt between loses none
            if orphan in self._all and orphan not in self._idle:
                self._idle.append(orphan)
            del self._orphans[-1]

    def _room(self, existing: bool) -> bool:
        """Whether a new slot may be made (``existing``: only once the pool has none left)."""
        return len(self._all) < self.size and not (existing and self._all)

    def _hand_out(self) -> None:
        """Give what is free to the queued threads, oldest first (under the lock)."""
        while self._queue and (self._idle or self._room(self._queue[0].existing)):
            waiter = self._queue[0]  # dequeued once handed: an interrupt anywhere loses none
            if waiter.session is None and self._idle:
                waiter.session = self._idle[-1]  # no call between: one step
                del self._idle[-1]
            elif waiter.session is None:
                waiter.session = session = Session()
                self._all.add(session)
            del self._queue[0]
            waiter.woken.notify()  # interrupted: the waiter finds it at its timeout

    def give_back(self, session: Session, ticket: Ticket | None = None) -> None:
        """Make ``session`` (on ``ticket``) idle again (its slot freed if its connection died)."""
        conn = session.conn
        dead = conn is None or conn.closed or conn.broken
        with self._lock:
            if ticket is not None:
                ticket.session = None  # before it is idle: no call between
            if session not in self._all:
                return  # disowned meanwhile: nothing of it is this pool's
            dead = dead or session.retired  # under the lock: close() sets it
            if dead:
                self._all.discard(session)
            else:
                self._idle.append(session)
            if self._queue:
                self._hand_out()
        if dead:
            session.drop()  # outside the lock: closing may wait for the network

    def give_way(self, session: Session) -> bool:
        """No slot on the server for ``session``'s connection: free its slot if another has one.

        True: wait for an existing one (:meth:`take`, ``existing``); False: none to wait for.
        """
        with self._lock:
            if not any(s.conn is not None and not s.conn.closed for s in self._all):
                return False
            self._all.discard(session)  # the pool shrinks for now: ``size`` stays
            return True  # no hand-out: a queued thread would be refused the slot too

    def lost(self, session: Session) -> None:
        """``session``'s connection was lost: close it and every idle one (a restart)."""
        session.drop()
        with self._lock:
            stale, self._idle = self._idle, []
            self._all.difference_update(stale)
            self._hand_out()
        for each in stale:
            each.drop()

    def close(self) -> None:
        """Close every idle connection now, and each taken one when it is given back.

        An interrupted call's session is closed here if its ticket was dropped
        already, else as it is (:class:`Ticket`).
        """
        with self._lock:
            self._adopt()
            idle, self._idle = self._idle, []
            self._all.difference_update(idle)
            for each in self._all:
                each.retired = True
            self._hand_out()
        for each in idle:
            each.drop()

    def disown(self) -> None:
        """In a forked child: let go of every session made before the fork."""
        every = self._all
        self._lock = threading.Lock()  # a thread may have held it at the fork
        self._queue = collections.deque()
        self._idle, self._all, self._orphans = [], set(), []
        self._pid = os.getpid()
        for each in every:
            each.disown()

    def newest_pid(self) -> int | None:
        """The server process of the session the next call takes (None: none idle)."""
        pids = self.idle_pids()
        return pids[-1] if pids else None

    def idle_pids(self) -> list[int]:
        """The server processes of the idle sessions, the next one taken last."""
        with self._lock:
            conns = [s.conn for s in self._idle]
        return [c.info.backend_pid for c in conns if c is not None and not c.closed]
