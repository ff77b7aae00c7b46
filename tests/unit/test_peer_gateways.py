"""A look at a member answered by its proxy with 502 (castore answers none): down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from castore.server.peers import PeerWatch
from castore.wire import CLUSTER_HEADER

OTHER = "http://127.0.0.1:7071"


class _Page(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"<html>502 Bad Gateway</html>"


class _Failing(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"<html>"
        raise httpx.ReadError("the proxy closed the connection")


def _ask(
    watch: PeerWatch,
    status: int,
    headers: dict[str, str],
    stream: httpx.AsyncByteStream | None = None,
) -> str:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, stream=stream or _Page())

    async def ask() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await watch._ask(client, OTHER)

    return asyncio.run(ask())


def test_a_proxys_502_is_a_member_down_unless_it_was_seen_on_another_list() -> None:
    # The oracle: a refused connection's verdicts (module docstring): down agrees, but
    # not for a member seen running another list since (it serves that list when back).
    watch = PeerWatch(["http://127.0.0.1:7070", OTHER], "http://127.0.0.1:7070", "d1")
    assert _ask(watch, 502, {}) == ""
    assert _ask(watch, 502, {}, _Failing()) == ""  # the proxy's page cut short: the same
    assert "another coordinator list" in _ask(watch, 200, {CLUSTER_HEADER: "d2"})
    assert "another coordinator list" in _ask(watch, 502, {})
    assert "another coordinator list" in _ask(watch, 502, {}, _Failing())
    assert _ask(watch, 200, {CLUSTER_HEADER: "d1"}) == ""
    assert _ask(watch, 502, {}) == ""


def test_a_502_from_castore_itself_would_be_judged_by_its_digest() -> None:
    watch = PeerWatch(["http://127.0.0.1:7070", OTHER], "http://127.0.0.1:7070", "d1")
    assert "another coordinator list" in _ask(watch, 502, {CLUSTER_HEADER: "d2"})
