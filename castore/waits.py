"""Calls that must not wait: a thread says so, and what would make it wait raises.

``castore serve`` runs a file store's short reads on its event loop, where a
wait would stall every request of the process: it runs them inside
:func:`no_waiting`, and on :class:`WouldWait` runs the same call again in a
worker thread, where waiting is fine. The file backend refuses (through
:func:`would_wait`) to wait for a lock, another thread's blob index, or a
read of a whole file: a log scan, a version index's extension, a blob index
shard's refresh (``Backend.loop_safe_reads``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["WouldWait", "no_waiting", "waiting_refused", "would_wait"]


class WouldWait(BaseException):  # a signal, not an error
    """This thread refused to wait (:func:`no_waiting`) for what it would wait for.

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


def would_wait(what: str) -> None:
    """Raise :class:`WouldWait` (naming ``what``) inside :func:`no_waiting`; else nothing."""
    if getattr(_refused, "on", False):
        raise WouldWait(what)
