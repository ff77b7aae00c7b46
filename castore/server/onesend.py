"""One ``send`` per response: uvicorn's httptools protocol over a transport that gathers writes.

uvicorn writes a response's head and its body with two ``transport.write``
calls; uvloop sends each at once, so every answer costs two TCP segments, two
wake-ups of the client and, on loopback, the receiving side's work twice in
the sending system call. Here the writes made while the event loop runs one
step are joined and sent once, when that step ends (``call_soon``): nothing
waits longer than the step that wrote it, and the order of bytes is kept.
A ``close`` sends what is gathered first. docs/PERFORMANCE.md has the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HEAD_MAX_BYTES", "HEAD_SECONDS", "OneSendProtocol", "every_descriptor"]


class _Gathering:
    """An ``asyncio.Transport`` in front of another: writes within one loop step, sent once."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._send)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _send(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._send()
        self._transport.close()

    def write_eof(self) -> None:
        self._send()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info, ...
        return getattr(self._transport, name)


HEAD_SECONDS: Final = 10.0  # a request's head arrives whole within this, or the connection ends
HEAD_MAX_BYTES: Final = 64 * 1024  # a head still incomplete past this many bytes: 431, closed
_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8"
    b"\r\nconnection: close\r\ncontent-length: 29\r\n\r\nRequest headers are too large"
)


class OneSendProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol, writing through :class:`_Gathering`.

    It also bounds a request's head, which uvicorn does not: a connection that
    sends no complete head within :data:`HEAD_SECONDS` of opening or of its
    last response is closed (idle connections held open, or heads sent a byte
    at a time, would keep descriptors until the process has none left), and a
    head still incomplete after :data:`HEAD_MAX_BYTES` is answered 431 and
    closed (uvicorn read 11 MB of headers, 1 s of the event loop). Bytes of a
    body that arrive after its response (a 401 or 413 sent before the body was
    read) are neither counted nor timed as a head.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Serve the connection through a transport that gathers the writes of a step."""
        super().connection_made(_Gathering(transport, self.loop))  # type: ignore[arg-type]
        self._heads = self._received = self._answered = self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._await_head()

    def _idle(self) -> bool:
        """Whether every request begun was received whole and answered: a head is next."""
        return self._heads == self._received == self._answered

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _await_head(self) -> None:
        self._cancel_head()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_late, self._heads)

    def _head_late(self, heads: int) -> None:
        if self._heads == heads and not self.transport.is_closing():
            self.transport.close()  # no complete head in time: nothing was asked

    def data_received(self, data: bytes) -> None:
        """Feed the parser; count what a head still incomplete has taken."""
        heads, waiting = self._heads, self._heads == self._received  # no body in progress
        super().data_received(data)
        if self._heads != heads or not waiting or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > HEAD_MAX_BYTES:
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        """A head arrived whole: its deadline ends."""
        self._heads += 1
        self._cancel_head()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """A request's body arrived whole (answered already: the next head's deadline starts)."""
        self._received += 1
        super().on_message_complete()
        if self._idle() and not self.transport.is_closing():
            self._await_head()

    def on_response_complete(self) -> None:
        """A response went out: once its request arrived whole, the next head's deadline starts.

        A response may go out before its request's body arrived (401, 404, 413): the rest
        of that body is neither a head nor timed as one.
        """
        self._answered += 1
        super().on_response_complete()
        if self._idle() and not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended: no deadline is left for it."""
        self._cancel_head()
        super().connection_lost(exc)


def every_descriptor() -> None:
    """Raise the soft limit of open descriptors to the hard one (Go's runtime does so).

    Each client connection holds one, idle ones too until a head's deadline
    (:class:`OneSendProtocol`): the common soft limit of 1,024 is soon
    reached by a burst of connections, and a member that cannot accept answers
    no other member's look either.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # an unlimited hard limit: kept as is
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
