"""A fake castore server on loopback: well-formed HTTP/1.1, answers chosen by the test.

What a faulty server, or a faulty proxy in front of a real one, may answer an
``http://`` store: the client must refuse it in one line, never return it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["HANG", "LOSE", "Answer", "FakeServer", "mp"]

mp = msgspec.msgpack.encode
LOSE = "lose"  # close the connection without an answer (the answer was lost)
HANG = "hang"  # never answer (a server stopped with SIGSTOP)

# call name, request body -> (status line, body), or (status line, body, False): a body
# without its length, ending when the connection closes; or LOSE or HANG.
Answer = Callable[[str, bytes], "tuple[str, bytes] | tuple[str, bytes, bool] | str"]


class FakeServer:
    """Answers each ``POST /v1/backend/<call>`` with ``answer(call, body)``; keeps the calls."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer: Answer = lambda call, body: ("500 Internal Server Error", b"")
        self.calls: list[tuple[str, Any]] = []  # (call, decoded request), in order
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def calls_of(self, name: str) -> list[Any]:
        """The requests of call ``name`` received so far."""
        return [request for call, request in self.calls if call == name]

    def close(self) -> None:
        self._stop.set()
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        try:
            while line := f.readline():
                length = 0
                while (header := f.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                body = f.read(length)
                call = line.split()[1].rsplit(b"/", 1)[-1].decode()
                self.calls.append((call, msgspec.msgpack.decode(body) if body else None))
                answer = self.answer(call, body)
                if answer == LOSE:
                    return
                if answer == HANG:
                    self._stop.wait()
                    return
                assert isinstance(answer, tuple)
                status, payload, *sized = answer
                framing = f"content-length: {len(payload)}"
                if sized == [False]:
                    framing = "connection: close"
                conn.sendall(f"HTTP/1.1 {status}\r\n{framing}\r\n\r\n".encode())
                conn.sendall(payload)  # apart: a large body is never copied
                if sized == [False]:
                    return
        except OSError:
            pass
        finally:
            conn.close()
