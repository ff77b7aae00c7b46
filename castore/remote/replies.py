"""How much of an answer an ``http://`` store reads: at most the largest legitimate one.

Every answer is read as it streams in and refused once past the bound of its
call (its declared ``Content-Length`` first): a faulty server or proxy that
answers a ``get`` with gigabytes costs the client no more than the largest
answer a ``get`` can have (docs/SERVER.md, "What the worker believes").

* ``current``, ``version``, an item of ``iter_versions``: one value
  (:data:`~castore.jsonrules.MAX_VALUE_BYTES`) and its entry.
* ``history``: ``limit`` entries; ``append``: one per version sent, and the
  entry before them.
* Answers whose length only the store bounds (``history`` without a limit,
  ``keys``, ``listing``, ``namespaces``, ``removed``, ``replace``, the
  maintenance reports): :data:`LIST_BYTES_MAX`.
* An error answer: :data:`ERROR_BYTES_MAX`.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from castore.errors import CastoreError
from castore.jsonrules import MAX_VALUE_BYTES
from castore.remote.failures import MAYBE, unavailable
from castore.wire import CALL_BODY_MAX, CALLS, Append, HistoryCall

__all__ = ["ENTRY_BYTES_MAX", "ERROR_BYTES_MAX", "ITEM_BYTES_MAX", "LIST_BYTES_MAX", "read"]

# An entry in MessagePack. One written today holds its audit's text fields at their bound
# (MAX_AUDIT_TEXT characters, 336 KiB in UTF-8 with the rest), but before 2026-12-03 audit
# text had no bound, and such an entry is no damage (a reason of 5 MiB was seen): an
# entry is bounded as one part of the backend protocol is, 64 MiB (CALL_BODY_MAX).
ENTRY_BYTES_MAX: Final = CALL_BODY_MAX
ITEM_BYTES_MAX: Final = MAX_VALUE_BYTES + ENTRY_BYTES_MAX  # an entry and its value: 65 MiB
ERROR_BYTES_MAX: Final = 1 << 20  # 1 MiB: an error body (a message, a 421's member list)
LIST_BYTES_MAX: Final = 1 << 30  # 1 GiB: a list only the store bounds (a namespace's keys)
_SMALL: Final = 4096  # exists, remember: a constant
_BOUNDS: Final = {
    "current": ITEM_BYTES_MAX,
    "version": ITEM_BYTES_MAX,
    "exists": _SMALL,
    "remember": _SMALL,
}


def _bound(name: str, request: Any) -> int:
    """The largest legitimate answer to ``request``, a call ``name``."""
    if name in _BOUNDS:
        return _BOUNDS[name]
    if isinstance(request, HistoryCall) and request.limit:
        return min(request.limit * ENTRY_BYTES_MAX + _SMALL, LIST_BYTES_MAX)
    if isinstance(request, Append):
        return (len(request.versions) + 1) * ENTRY_BYTES_MAX + _SMALL
    return LIST_BYTES_MAX


def read(response: httpx.Response, name: str, request: Any) -> httpx.Response:
    """``response`` (its status and headers read) with its body read, if within its bound.

    Raises:
        StoreUnavailableError: the body is larger than any answer to the call (the
            connection is closed, the rest never read).
        httpx.HTTPError: the body could not be read (closed).
    """
    bound = _bound(name, request) if response.status_code == 200 else ERROR_BYTES_MAX
    body = bytearray()
    try:
        declared = response.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > bound:
            raise _too_large(response, name, bound)
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > bound:
                raise _too_large(response, name, bound)
    finally:
        response.close()  # at the end of the body: the connection is kept, else closed
    # A response of its own: the body as read (no content-encoding to decode again).
    return httpx.Response(response.status_code, content=bytes(body), request=response.request)


def _too_large(response: httpx.Response, name: str, bound: int) -> CastoreError:
    maybe = MAYBE * CALLS[name].writes
    what = "an error answer" if response.status_code != 200 else f"the answer to {name}"
    return unavailable(
        response.url,
        f"{what} is over {bound} bytes, more than any such answer can be{maybe}: refused unread",
    )
