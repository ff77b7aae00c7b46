"""A streamed answer that ends without its end is named so in the access log.

Found in the thirty-fourth session: an ``audit`` stream cut by an error after
its status (damage found midway), by a client that stopped reading (the
request timeout's bound on each part) or by a client that went away was
logged as a plain ``200``, and the error itself was written nowhere: the
operator never learned of the damage a client saw as a short answer. The
access-log line now carries ``cut`` (the error's code, ``stalled`` or
``disconnected``), and the server logs the error's message.

The oracle is the fault each test injects: an audit that raises after its
first lines, a client that reads nothing, a client that closes the stream.
"""

from __future__ import annotations

import io
import json
import logging
import pathlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from castore import Store
from castore.errors import CorruptionError
from castore.server import operations
from castore.server.app import create_app
from tests.helpers import loopback_server, ref_log_path

pytestmark = pytest.mark.integration


class _Log(io.StringIO):
    """An access log the test reads while the server's event loop writes it."""

    def lines(self, path: str) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.getvalue().splitlines() if path in line]

    def wait_for(self, path: str, count: int = 1) -> list[dict[str, object]]:
        deadline = time.monotonic() + 20
        while len(self.lines(path)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.lines(path)


def _serve(tmp_path: pathlib.Path, timeout: float | None = None) -> Iterator[tuple[str, _Log]]:
    server = loopback_server()
    store = Store(str(tmp_path / "s"), dag="d")
    for key in ("a", "b", "c"):
        store.set(key, 1)
    log = _Log()
    url = server.mount(create_app(store, access_log=log, request_timeout=timeout))
    try:
        yield url, log
    finally:
        server.unmount(url)
        store.close()


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[tuple[str, _Log]]:
    yield from _serve(tmp_path)


def _audit_then(monkeypatch: pytest.MonkeyPatch, lines: int, error: Exception | None) -> None:
    """Make ``audit`` give the store's first record ``lines`` times, then raise ``error``."""
    real = operations.audit  # type: ignore[attr-defined]

    def audit(*args: object, **kwargs: object) -> Iterator[object]:
        record = next(iter(real(*args, **kwargs)))  # type: ignore[arg-type]
        for _ in range(lines):
            yield record
        if error is not None:
            raise error

    monkeypatch.setattr(operations, "audit", audit)


def test_damage_found_midway_is_logged_and_the_line_says_cut(served, monkeypatch, caplog):
    url, log = served
    store_path = "/somewhere/the-store/refs/dag/x.log"
    _audit_then(monkeypatch, 250, CorruptionError(f"{store_path} has damage"))
    with (
        caplog.at_level(logging.ERROR, "castore.server"),
        pytest.raises(httpx.RemoteProtocolError),  # the answer ends without its end
    ):
        httpx.post(url + "/v1/audit", content=b"{}", timeout=30)
    (line,) = log.wait_for("/v1/audit")
    assert (line["status"], line["cut"]) == (200, "damaged"), line
    messages = [r.getMessage() for r in caplog.records if r.name == "castore.server"]
    assert messages == [
        f"a streamed answer was cut: damaged: corrupt store: {store_path} has damage"
    ]
    assert not [r for r in caplog.records if r.exc_info], "a traceback for damage"
    # A whole answer has no `cut`: the same audit, not failing.
    monkeypatch.undo()
    assert httpx.post(url + "/v1/audit", content=b"{}", timeout=30).text.count("\n") == 3
    whole = log.wait_for("/v1/audit", 2)[1]
    assert "cut" not in whole, whole
    assert whole["status"] == 200, whole


def test_a_client_that_goes_away_midway_is_logged_as_disconnected(served, monkeypatch):
    url, log = served
    _audit_then(monkeypatch, 200_000, None)  # ~60 MB of lines: more than sockets buffer
    with httpx.stream("POST", url + "/v1/audit", content=b"{}", timeout=30) as answer:
        assert answer.status_code == 200
        next(answer.iter_bytes())  # the first part, then away
    (line,) = log.wait_for("/v1/audit")
    assert (line["status"], line.get("cut")) == (200, "disconnected"), line


def test_a_client_that_stops_reading_is_logged_as_stalled(tmp_path, monkeypatch):
    for url, log in _serve(tmp_path, timeout=1.0):
        _audit_then(monkeypatch, 200_000, None)
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"POST /v1/audit HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            (line,) = log.wait_for("/v1/audit")  # read nothing: the server gives up
        assert (line["status"], line.get("cut")) == (200, "stalled"), line


def test_damage_in_an_http_stores_stream_is_logged_by_the_server(tmp_path, caplog):
    """A backend stream (an ``http://`` store's export) ends whole, its error as its last
    part, which the client raises; the server logged nothing of the damage either."""
    for url, log in _serve(tmp_path):
        local = Store(str(tmp_path / "s"), dag="d")
        log_path = pathlib.Path(ref_log_path(local, "b"))
        damaged = bytearray(log_path.read_bytes())
        damaged[len(damaged) // 2] ^= 1
        log_path.write_bytes(bytes(damaged))
        remote = Store(url, dag="d")
        with (
            caplog.at_level(logging.ERROR, "castore.server"),
            pytest.raises(CorruptionError, match="damaged bytes"),
        ):
            list(remote.backend.iter_versions(remote.ref("b")))
        messages = [r.getMessage() for r in caplog.records if r.name == "castore.server"]
        assert len(messages) == 1, messages
        assert messages[0].startswith("a streamed reply ended with an error: damaged: "), messages
        assert str(tmp_path) not in messages[0]  # the store is "<store>"
        (line,) = log.wait_for("/v1/backend/iter_versions")
        assert "cut" not in line, line  # it ended whole
