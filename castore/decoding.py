"""Whether results decode their values: not where they are only printed.

A result carries a stored value twice: ``value_json`` (the stored bytes) and
``value`` (them decoded to Python). The command line and the server answer with
the JSON, never the Python value, and decoding it would cost them time for
nothing (a 1 MiB integer literal: about half a second). :func:`printing` runs a
call whose results are left undecoded (``value`` None); the bytes are still
checked as JSON (:func:`castore.codec.result_value`). Kept apart from
:mod:`castore.codec` so the command line sets it without loading msgspec.
"""

from __future__ import annotations

import contextvars

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final, TypeVar

    _T = TypeVar("_T")

__all__ = ["DECODED", "printing"]

DECODED: Final = contextvars.ContextVar("castore_results_decoded", default=True)


def printing(call: Callable[[], _T]) -> _T:
    """``call()``, in this thread, with the values of the results it makes left undecoded."""
    token = DECODED.set(False)
    try:
        return call()
    finally:
        DECODED.reset(token)
