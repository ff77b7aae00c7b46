"""A streamed answer whose client must keep reading it.

Starlette's ``StreamingResponse`` sends each part when the client has taken the
last: a client that stops reading holds the stream, and what its producer holds
(an export's history of a key, one read of a log), for as long as its connection
lasts; a review held 20 such streams at 62 MB each past the request timeout.
:class:`BoundedStream` gives each part ``stall`` seconds to be taken, then ends
the answer: the connection is closed, the producer dropped, and the request's
ASGI scope marked (:data:`CUT`: ``"stalled"``) for the access log. A producer
that raises :class:`StreamCut` (an error after the status, which it logged) ends
the answer the same way: the client sees it incomplete, never short.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable
from typing import Final

from starlette.responses import StreamingResponse
from starlette.types import Message, Scope, Send

__all__ = ["CUT", "BoundedStream", "StreamCut"]

CUT: Final = "castore.cut"  # ASGI scope key: why an answer ended without its end


class _StalledError(Exception):
    """The client took no part within the bound."""


class StreamCut(Exception):  # noqa: N818  # not an error of the server's: an outcome
    """A producer's last word: end the answer without its end (the cause is logged)."""


class BoundedStream(StreamingResponse):
    """A ``StreamingResponse`` whose every part must be taken within ``stall`` seconds."""

    def __init__(
        self, content: AsyncIterable[bytes], media_type: str, stall: float, scope: Scope
    ) -> None:
        super().__init__(content, media_type=media_type)
        self.stall = stall if math.isfinite(stall) else None  # inf: no bound
        self.scope = scope  # the request's: marked when the answer is cut

    async def stream_response(self, send: Send) -> None:
        """Send the parts; stop (the connection then closes) at the first not taken in time."""

        async def bounded(message: Message) -> None:
            try:
                async with asyncio.timeout(self.stall):
                    await send(message)
            except TimeoutError:
                raise _StalledError from None

        try:
            await super().stream_response(bounded)
        except StreamCut:  # uvicorn closes a connection whose answer did not end
            return
        except _StalledError:
            self.scope[CUT] = "stalled"
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()  # what the producer holds is let go now
