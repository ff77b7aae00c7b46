"""The server's gathering transport: a response's writes leave in one send, in order."""

from __future__ import annotations

import asyncio

import pytest

from castore.server.onesend import OneSendProtocol, _Gathering


class _Recorder:
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> object:
        return {"peername": ("127.0.0.1", 9), "sockname": ("127.0.0.1", 8)}.get(name)


def test_writes_of_one_step_are_sent_once_in_order() -> None:
    async def main() -> list[list[bytes]]:
        real = _Recorder()
        gathering = _Gathering(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        gathering.write(b"HTTP/1.1 200 OK\r\n\r\n")
        gathering.write(bytearray(b"body"))
        assert real.sent == []  # nothing before the step ends
        assert gathering.get_write_buffer_size() == 23
        seen = []
        await asyncio.sleep(0)
        seen.append(list(real.sent))
        gathering.writelines([b"a", b"b"])
        gathering.write(b"c")
        await asyncio.sleep(0)
        seen.append(list(real.sent))
        assert gathering.get_extra_info("peername") == ("127.0.0.1", 9)  # the rest: as is
        return seen

    first, second = asyncio.run(main())
    assert first == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert second == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"abc"]


def test_close_sends_what_is_gathered_and_abort_drops_it() -> None:
    async def main() -> tuple[_Recorder, _Recorder]:
        loop = asyncio.get_running_loop()
        closing, aborting = _Recorder(), _Recorder()
        for real in (closing, aborting):
            gathering = _Gathering(real, loop)  # type: ignore[arg-type]
            gathering.write(b"last words")
            (gathering.close if real is closing else gathering.abort)()
        await asyncio.sleep(0)  # the scheduled send finds nothing more to send
        return closing, aborting

    closing, aborting = asyncio.run(main())
    assert (closing.sent, closing.closed) == ([b"last words"], True)
    assert (aborting.sent, aborting.aborted) == ([], True)


@pytest.mark.parametrize("protocol", ["onesend", "uvicorn"])
def test_each_response_leaves_in_one_write(protocol: str) -> None:
    # uvicorn's own protocol writes the head and the body apart (two TCP segments each
    # time); the one castore serve runs writes each response once, whole.
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        head = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"10")],
        }
        await send(head)  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"0123456789"})  # type: ignore[operator]

    kind = OneSendProtocol if protocol == "onesend" else HttpToolsProtocol

    async def main() -> list[bytes]:
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        real = _Recorder()
        proto = kind(config, ServerState(), {}, _loop=asyncio.get_running_loop())
        proto.connection_made(real)  # type: ignore[arg-type]
        for _ in range(3):
            proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(20):
                await asyncio.sleep(0)
        return real.sent

    sent = asyncio.run(main())
    if protocol == "uvicorn":
        assert len(sent) == 6  # what this module exists for: two writes per response
        return
    assert len(sent) == 3
    assert all(
        w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b"\r\n\r\n0123456789") for w in sent
    )
