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
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["OneSendProtocol"]


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


class OneSendProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol, writing through :class:`_Gathering`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Serve the connection through a transport that gathers the writes of a step."""
        super().connection_made(_Gathering(transport, self.loop))  # type: ignore[arg-type]
