"""The http:// client reads a streamed reply (``iter_versions``: an export) as it arrives.

A small Starlette app on the loopback server stands in for ``castore serve`` and
sends crafted frames, byte by byte; the oracles are the items the client yields,
in order, and the exception it raises where the stream breaks.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from castore.errors import CorruptionError, StoreUnavailableError
from castore.records import Entry
from castore.remote.transport import Transport
from castore.server.errors import api_error, error_body
from castore.wire import FRAME_END, FRAME_ERROR, FRAME_ITEM, EntryValue, RefCall, frame
from tests.helpers import loopback_server

pytestmark = pytest.mark.integration

WAIT_SECONDS = 10.0


def item(version: int) -> bytes:
    entry = Entry(version=version, op="set", time_ns=version, hash="ab" * 32, size=1)
    return frame(FRAME_ITEM, msgspec.msgpack.encode(EntryValue(entry, b"%d" % version)))


CLIENTS: list[object] = []  # the client address of each request served


@pytest.fixture
def serving() -> Iterator[Callable[..., str]]:
    """Serves a body (an iterator of byte strings, sent one byte at a time): its URL.

    ``serve(body, status=200)``; a body that raises cuts the connection there.
    """
    server = loopback_server()
    urls: list[str] = []
    CLIENTS.clear()

    def serve(body: Callable[[], Iterator[bytes]], status: int = 200) -> str:
        async def chunks() -> AsyncIterator[bytes]:
            for part in body():
                for at in range(len(part)):
                    yield part[at : at + 1]

        async def endpoint(request: Request) -> StreamingResponse:
            CLIENTS.append(request.client)
            return StreamingResponse(chunks(), status, media_type="application/msgpack")

        route = Route("/v1/backend/iter_versions", endpoint, methods=["POST"])
        urls.append(server.mount(Starlette(routes=[route])))
        return urls[-1]

    yield serve
    for transport in TRANSPORTS:
        transport.close()
    TRANSPORTS.clear()
    for url in urls:
        server.unmount(url)


TRANSPORTS: list[Transport] = []  # closed by the fixture


def stream(url: str) -> Iterator[EntryValue]:
    transport = Transport([url], None, read_timeout=WAIT_SECONDS)
    TRANSPORTS.append(transport)
    call = RefCall(scope="dag", namespace="d", key="k")
    items: Iterator[EntryValue] = transport.stream("iter_versions", call, ("dag", "d"))
    return items


def versions(items: Iterator[EntryValue]) -> list[tuple[int, bytes | None]]:
    return [(item.entry.version if item.entry else 0, item.value) for item in items]


def drain(items: Iterator[EntryValue], got: list[tuple[int, bytes | None]]) -> None:
    """Append each item's version and value to ``got`` as it comes (until one raises)."""
    for one in items:
        got.extend(versions(iter([one])))


def test_items_arrive_before_the_stream_ends(serving):
    """The server sends the rest only once the client has decoded the first item."""
    first_seen = threading.Event()

    def body() -> Iterator[bytes]:
        yield item(1)
        if not first_seen.wait(WAIT_SECONDS):  # a client reading the whole body first
            return  # never sees an item: cut the stream, which it reports
        yield item(2) + item(3) + frame(FRAME_END, b"")

    items = stream(serving(body))
    first = next(items)
    first_seen.set()
    assert versions(iter([first, *items])) == [(1, b"1"), (2, b"2"), (3, b"3")]


def test_a_stream_cut_before_its_end_frame_is_an_error_after_its_items(serving):
    items = stream(serving(lambda: iter([item(1), item(2), item(3)[:7]])))
    got: list[tuple[int, bytes | None]] = []
    with pytest.raises(StoreUnavailableError, match="the answer to iter_versions was cut"):
        drain(items, got)
    assert got == [(1, b"1"), (2, b"2")]


def test_an_error_frame_raises_the_servers_exception(serving):
    error = error_body(api_error(CorruptionError("log damaged at 42"), exception=True))
    items = stream(serving(lambda: iter([item(1), frame(FRAME_ERROR, error)])))
    got: list[tuple[int, bytes | None]] = []
    with pytest.raises(CorruptionError, match="log damaged at 42"):
        drain(items, got)
    assert got == [(1, b"1")]


@pytest.mark.parametrize(
    "garbage",
    [
        b"Z" + (3).to_bytes(4, "big") + b"abc",  # an unknown frame kind
        FRAME_ITEM + (2**31).to_bytes(4, "big"),  # a frame larger than any item
        FRAME_ITEM + (3).to_bytes(4, "big") + b"\xc1\xc1\xc1",  # not MessagePack
    ],
)
def test_garbage_is_an_error_not_an_item(serving, garbage):
    items = stream(serving(lambda: iter([item(1), garbage, item(2), frame(FRAME_END, b"")])))
    got: list[tuple[int, bytes | None]] = []
    with pytest.raises(StoreUnavailableError, match="cut or garbled"):
        drain(items, got)
    assert got == [(1, b"1")]


def test_streams_that_end_cleanly_reuse_one_connection(serving):
    url = serving(lambda: iter([item(1), item(2), frame(FRAME_END, b"")]))
    transport = Transport([url], None, read_timeout=WAIT_SECONDS)
    TRANSPORTS.append(transport)
    call = RefCall(scope="dag", namespace="d", key="k")
    for _ in range(3):
        assert versions(transport.stream("iter_versions", call, ("dag", "d"))) == [
            (1, b"1"),
            (2, b"2"),
        ]
    assert len(CLIENTS) == 3
    assert len(set(map(str, CLIENTS))) == 1  # one keep-alive connection for the three


def test_an_error_answer_cut_short_is_unavailable_not_an_httpx_error(serving):
    def cut() -> Iterator[bytes]:
        yield b'{"error": {"code": "store_unavailable", "mess'
        raise RuntimeError("the connection drops here")

    items = stream(serving(cut, status=503))
    with pytest.raises(StoreUnavailableError, match="connection was lost during iter_versions"):
        next(items)
