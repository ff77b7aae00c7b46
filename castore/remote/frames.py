"""A streamed reply of the backend protocol, decoded one frame at a time as it arrives.

A frame is its kind (one byte), its length (four bytes, big-endian) and its
payload (:mod:`castore.wire`): items, then an end frame, or an error frame
that ends the stream with the server's exception. Only the frames not yet
decoded are held in memory, so a key's whole history streams in the space
of its largest version.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec

from castore.remote.failures import failure, unavailable
from castore.remote.replies import ITEM_BYTES_MAX
from castore.wire import CALLS, FRAME_END, FRAME_ERROR, FRAME_ITEM

__all__ = ["frames"]


def frames(name: str, response: httpx.Response) -> Iterator[Any]:
    """The items of call ``name``'s streamed ``response`` (its status read, its body not).

    Raises:
        StoreUnavailableError: the stream was cut or is not made of frames.
        CastoreError: the exception that ended it on the server.
    """
    decoder = msgspec.msgpack.Decoder(CALLS[name].reply.__args__[0])
    pending = bytearray()
    chunks = response.iter_bytes()
    try:
        for chunk in chunks:
            pending += chunk
            at = 0
            while len(pending) - at >= 5:
                size = int.from_bytes(pending[at + 1 : at + 5], "big")
                if size > ITEM_BYTES_MAX:  # an entry and its value at most
                    raise msgspec.DecodeError("a frame larger than any reply item")
                if len(pending) - at - 5 < size:
                    break
                kind, payload = pending[at : at + 1], bytes(pending[at + 5 : at + 5 + size])
                at += 5 + size
                if kind == FRAME_ITEM:
                    yield decoder.decode(payload)
                elif kind == FRAME_ERROR:  # the body ends here too: read to its end, so the
                    with contextlib.suppress(httpx.HTTPError):  # server sees it taken whole
                        any(chunks)  # (not cut), and the connection is reused
                    raise failure(response.url, 500, payload)
                elif kind == FRAME_END:  # the body ends here: read to its end,
                    if any(chunks) or len(pending) > at:  # so the connection is reused
                        raise msgspec.DecodeError("bytes after the end frame")
                    return
                else:
                    raise msgspec.DecodeError(f"unknown frame kind {bytes(kind)!r}")
            del pending[:at]
    except (httpx.HTTPError, msgspec.DecodeError, RecursionError):
        pass
    raise unavailable(response.url, f"the answer to {name} was cut or garbled")
