"""Calls that must not wait: a thread says so, and a lock that would make it wait raises.

``castore serve`` runs a file store's reads on its event loop, where a wait
for another process's lock would stall every request of the process: it
runs them inside :func:`no_waiting`, and on :class:`WouldWait` runs the same
call again in a worker thread, where waiting is fine. Only the file
backend's lock waits honour it (``Backend.quick_reads``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["WouldWait", "no_waiting", "waiting_refused"]


class WouldWait(BaseException):  # a signal, not an error
    """A lock is taken and this thread refused to wait (:func:`no_waiting`).

    A ``BaseException``: never caught by handlers of errors, so it ends the
    call (whose cleanup runs) and reaches the :func:`no_waiting` caller.
    """


_refused = threading.local()


@contextlib.contextmanager
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
