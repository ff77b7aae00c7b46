"""The calls running on one file-store handle, so that closing it never closes a descriptor in use.

A handle shared by threads caches directory, ``STATE``, log and reader
descriptors. Closing one while another thread is between looking it up and
using it let that thread use a closed number, or one the kernel had given
to another open meanwhile: a log created in the wrong directory of the store
(``check`` then reports a file in place of a directory), ``EBADF`` errors,
and in principle a file made through a directory outside the store.

So each call of the handle counts itself in (:meth:`InUse.enter`, a set
add, atomic under the GIL) and out, and :meth:`InUse.close` closes the
descriptors only when no call runs: at once if none does, else when the
last one ends. While it closes, calls that start wait for it (microseconds:
it only closes descriptors), and a close never waits for a call, so a
thread closing the handle inside an iteration over one of its streams does
not deadlock: that stream's step ends, then the close runs.

A call counts itself in as an object of its own, inside the ``try`` whose
``finally`` discards it first thing (one ``set.discard``, no Python call in
between): a ``KeyboardInterrupt``, or an exception a signal handler raises,
arriving anywhere leaves nothing counted. (A count appended before the
``try`` stayed counted when the exception came just after the append, and
the handle's ``close`` then waited for that call forever: its descriptors
were never closed.)
"""

from __future__ import annotations

import functools
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

from castore import forks

__all__ = ["InUse", "guard"]

_T = TypeVar("_T")


class InUse:
    """The calls running on one handle, and its close, deferred while any runs.

    Args:
        close: closes the handle's descriptors and drops its caches; never runs
            concurrently with a call counted in, nor with itself. A bound method is
            held weakly: the handle holds this, and a dropped handle is freed (its
            descriptors closed) at once, not by the cyclic garbage collector.
    """

    def __init__(self, close: Callable[[], None]) -> None:
        self._close: Callable[[], Callable[[], None] | None] = (
            weakref.WeakMethod(close) if isinstance(close, types.MethodType) else lambda: close
        )
        self.calls: set[object] = set()  # one object per call running: add/discard are atomic
        self._closing = False  # a close runs: calls starting now wait for it
        self._wanted = False  # a close was asked: the last call to end runs it
        self._done = threading.Condition()
        self._closer = threading.Lock()
        forks.track(self)

    def enter(self, call: object) -> None:
        """Count ``call`` in (the caller's own object); wait first while a close runs.

        Call it inside the ``try`` whose ``finally`` starts with ``calls.discard(call)``
        (then :meth:`leave_last`): interrupted anywhere, nothing stays counted.
        """
        self.calls.add(call)
        while self._closing:  # seen after counting in: that close waits for this call
            self.calls.discard(call)
            with self._done:
                self._done.wait_for(lambda: not self._closing)
            self.calls.add(call)

    def leave_last(self) -> None:
        """After a call counted out: if it was the last, run a close asked meanwhile."""
        if self._wanted and not self.calls:
            self._try_close(deferred=True)

    def close(self) -> None:
        """Close the handle's descriptors now if no call runs, else when the last one ends."""
        self._wanted = True
        self._try_close(deferred=False)

    def _try_close(self, *, deferred: bool) -> None:
        """Close if no call runs.

        ``deferred``: run as a call ends, which an ``OSError`` of the close must not
        fail (a write that call made was applied: its caller would write it again).
        """
        with self._closer:  # one close at a time
            if not self._wanted:
                return
            self._closing = True  # calls counting in from now wait
            try:
                if self.calls:  # counted in before that: the last of them closes
                    return
                self._wanted = False
                if (close := self._close()) is not None:  # None: its handle is gone
                    close()
            except OSError:
                if not deferred:
                    raise
            finally:
                with self._done:
                    self._closing = False
                    self._done.notify_all()

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`): no call runs there; new locks."""
        self.calls = set()  # a call begun in the parent discards itself from the old set
        self._closing = self._wanted = False
        self._done = threading.Condition()
        self._closer = threading.Lock()

    def stepwise(self, items: Iterator[_T]) -> Iterator[_T]:
        """``items``, each step counted in (not the pauses between: a close may run there)."""
        while True:
            call = object()
            try:
                self.enter(call)
                item = next(items, _END)
            finally:
                self.calls.discard(call)
                if self._wanted:
                    self.leave_last()
            if item is _END:
                return
            yield item


_END: Final[Any] = object()


def guard(cls: type, methods: str) -> None:
    """Count each call of ``cls``'s ``methods`` (names, spaced) in ``self.in_use``."""
    for name in methods.split():
        method = getattr(cls, name)
        code = method.__code__
        kinds = code.co_kwonlyargcount or method.__defaults__ or code.co_flags & 0x0C  # *, **
        short = code.co_argcount in (2, 3) and not kinds  # self and one or two arguments
        setattr(cls, name, functools.wraps(method)((_short if short else _any)(method)))


def _short(method: Callable[..., _T]) -> Callable[..., _T]:
    """``method`` counted in: one or two arguments by position fast (every get).

    Arguments passed by name go through :func:`_any` (``counted``'s own are positional only).
    """
    slow = _any(method)

    def counted(self: Any, a: Any = _END, b: Any = _END, /, **named: Any) -> _T:  # no *args
        if named or a is _END:
            return slow(self, *(given for given in (a, b) if given is not _END), **named)
        use: InUse = self.in_use
        call = object()
        try:
            use.calls.add(call)  # InUse.enter, inlined
            if use._closing:
                use.enter(call)
            return method(self, a) if b is _END else method(self, a, b)
        finally:
            use.calls.discard(call)  # first: an exception in what follows leaves it counted out
            if use._wanted:
                use.leave_last()

    return counted


def _any(method: Callable[..., _T]) -> Callable[..., _T]:
    """``method`` counted in."""

    def counted(self: Any, *args: Any, **kwargs: Any) -> _T:
        use: InUse = self.in_use
        call = object()
        try:
            use.enter(call)
            return method(self, *args, **kwargs)
        finally:
            use.calls.discard(call)
            if use._wanted:
                use.leave_last()

    return counted
