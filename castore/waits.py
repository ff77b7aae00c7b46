"""Calls that must not wait: a thread says so, and what would make it wait raises.

``castore serve`` runs a file store's short reads on its event loop, where a
wait would stall every request of the process: it runs them inside
:func:`no_waiting`, and on :class:`WouldWait` runs the same call again in a
worker thread, where waiting is fine. The file backend refuses (through
:func:`would_wait`) to wait for a lock, another thread's blob index, or a
read of a whole file: a log scan, a version index's extension, a blob index
shard's refresh (``Backend.loop_safe_reads``).

A thread may also bound its waits for locks (:func:`waiting_at_most`): the
server runs each request's store call with the client's lock timeout, and
the backends wait :func:`lock_wait` of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from castore import exits

__all__ = [
    "WouldWait",
    "at_most",
    "lock_wait",
    "no_waiting",
    "waiting_at_most",
    "waiting_refused",
    "would_wait",
]

_T = TypeVar("_T")


class WouldWait(BaseException):  # a signal, not an error
    """This thread refused to wait (:func:`no_waiting`) for what it would wait for.

    A ``BaseException``: never caught by handlers of errors, so it ends the
    call (whose cleanup runs) and reaches the :func:`no_waiting` caller.
    """


_refused = threading.local()


@exits.contextmanager
def no_waiting() -> Iterator[None]:
    """Within the block, a lock this thread would wait for raises :class:`WouldWait`."""
    before = getattr(_refused, "on", False)
    _refused.on = True
    try:
        yield
    finally:
        _refused.on = before


def waiting_refused() -> bool:
    """True inside :func:`no_waiting` (on this thread)."""
    return getattr(_refused, "on", False)


def would_wait(what: str) -> None:
    """Raise :class:`WouldWait` (naming ``what``) inside :func:`no_waiting`; else nothing."""
    if getattr(_refused, "on", False):
        raise WouldWait(what)


def _bound(seconds: float) -> float | None:
    """Bound this thread's lock waits by ``seconds`` too; return the bound to put back."""
    before: float | None = getattr(_refused, "limit", None)
    _refused.limit = seconds if before is None else min(seconds, before)
    return before


@exits.contextmanager
def waiting_at_most(seconds: float) -> Iterator[None]:
    """Within the block, this thread waits at most ``seconds`` for each lock (:func:`lock_wait`)."""
    before = _bound(seconds)
    try:
        yield
    finally:
        _refused.limit = before


def lock_wait(timeout: float) -> float:
    """How long this thread waits for a lock whose handle allows ``timeout`` seconds.

    ``timeout``, or less inside :func:`waiting_at_most`.
    """
    limit: float | None = getattr(_refused, "limit", None)
    return timeout if limit is None or limit >= timeout else limit


def at_most(seconds: float | None, fn: Callable[[], _T]) -> Callable[[], _T]:
    """``fn``, run inside ``waiting_at_most(seconds)`` by the thread that calls it (None: as is)."""
    if seconds is None:
        return fn

    def bounded() -> _T:  # waiting_at_most, without a generator per call (the server's)
        before = _bound(seconds)
        try:
            return fn()
        finally:
            _refused.limit = before

    return bounded
