"""What a request brings: its body (bounded), its operation, its member list, its lock timeout.

Each is read here for :mod:`castore.server.app`; what is wrong is an
:class:`~castore.server.errors.ApiError` (400, or 413 for a body past its limit).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Final

import msgspec
from starlette.requests import ClientDisconnect, Request

from castore.defaults import MAX_LOCK_TIMEOUT_SECONDS, lock_timeout_of
from castore.server.errors import ApiError
from castore.server.operations import decode_request
from castore.wire import CLUSTER_HEADER, LOCK_TIMEOUT_HEADER, MEMBERS_HEADER

__all__ = ["BODY_ARRIVED", "decode", "list_of", "lock_wait_of", "read_body"]

_NUMBER_CHARS: Final = 32  # the longest lock timeout header read as a number
_SECONDS: Final = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")  # no sign, space or _
BODY_ARRIVED: Final = "castore.body_arrived"  # in a request's scope once its body was read


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before it is read whole."""
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
        raise ApiError("body_too_large", f"request body of {length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError("body_too_large", f"request body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError("bad_request", "the client went away before the body ended") from None
    request.scope[BODY_ARRIVED] = True  # a timeout from here on may leave a write applied
    return b"".join(chunks)


def decode(name: str, body: bytes) -> Any:
    """The request of operation ``name`` in ``body`` (400 ``bad_request`` if it is not one)."""
    try:
        return decode_request(name, body)
    except msgspec.DecodeError as exc:  # a ValidationError too: not this operation's request
        raise ApiError("bad_request", f"bad request body: {exc}") from None
    except RecursionError:  # msgspec's decoder recurses per level of nesting
        raise ApiError("bad_request", "bad request body: nested too deeply") from None


def list_of(request: Request) -> tuple[str | None, int]:
    """What a request says of its client's member list: its digest and length (0: not said)."""
    members = request.headers.get(MEMBERS_HEADER, "")
    plain = members.isascii() and members.isdigit() and len(members) <= 6  # "²" is a digit
    return request.headers.get(CLUSTER_HEADER), int(members) if plain else 0


def lock_wait_of(request: Request) -> float | None:
    """The client's lock timeout (its header), which bounds the store's waits; None: not said.

    Raises:
        ApiError: ``bad_request``, a header that is not a number of seconds from 0 to a day.
    """
    given = request.headers.getlist(LOCK_TIMEOUT_HEADER)
    if not given:
        return None
    if len(given) > 1:  # which one a proxy added cannot be told
        raise ApiError("bad_request", f"{LOCK_TIMEOUT_HEADER} header: given {len(given)} times")
    text = given[0]
    with contextlib.suppress(ValueError):
        if len(text) <= _NUMBER_CHARS and _SECONDS.fullmatch(text):
            return lock_timeout_of(float(text))
    raise ApiError(
        "bad_request",
        f"{LOCK_TIMEOUT_HEADER} header: expected a number of seconds from 0 to"
        f" {MAX_LOCK_TIMEOUT_SECONDS:g}, not {text[:_NUMBER_CHARS]!r}",
    )
