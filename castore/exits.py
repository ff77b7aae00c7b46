"""``contextmanager`` whose ``with`` never leaves its generator's cleanup to the garbage collector.

``contextlib.contextmanager``'s ``__enter__`` returns what the generator
yielded. An asynchronous exception (``KeyboardInterrupt``, or one a signal
handler raises: a job runner's timeout) delivered as that ``next`` returns
leaves the generator suspended at its ``yield`` and the ``with`` block never
entered, so ``__exit__`` is never called: the generator's ``finally`` (a log's
``flock`` released, a descriptor closed, a PostgreSQL session given back)
runs only when the generator is collected, which the exception's traceback
prevents for as long as it is kept (a REPL keeps the last one). Meanwhile
the key's log stayed locked (every write of it, by any process, timed out),
and the late ``finally`` then unlocked or closed whatever descriptor had that
number by then. Here ``__enter__`` closes the suspended generator at once
(its ``finally`` runs) before the exception goes on.

One window stays, as in any ``with`` of a Python context manager: an exception
delivered as ``__exit__`` begins (CPython runs a signal's handler as a
function starts). The generator is then closed when it is collected: when the
exception's traceback is dropped. So such a generator releases only what it
opened itself (still open then): an ``flock`` on a descriptor its caller
closes is taken by a class, ``fileio.locked``.
"""

from __future__ import annotations

import contextlib
import functools

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import ParamSpec, TypeVar

    _P = ParamSpec("_P")
    _T = TypeVar("_T")
else:
    _T = object  # contextlib's generic alias takes any parameter at run time

__all__ = ["contextmanager"]


class _Closing(contextlib._GeneratorContextManager[_T]):
    def __enter__(self) -> _T:
        try:
            return super().__enter__()
        except BaseException:  # the generator's own exception, or one that came as it yielded
            if getattr(self.gen, "gi_suspended", False):  # the latter: run its cleanup now
                with contextlib.suppress(Exception):  # the interruption is the error to raise
                    self.gen.close()
            raise


def contextmanager(func: Callable[_P, Iterator[_T]]) -> Callable[_P, _Closing[_T]]:
    """As :func:`contextlib.contextmanager`, the cleanup run at once if interrupted entering."""

    @functools.wraps(func)
    def helper(*args: _P.args, **kwargs: _P.kwargs) -> _Closing[_T]:
        return _Closing(func, args, kwargs)  # type: ignore[arg-type]

    return helper
