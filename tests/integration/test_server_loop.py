"""A request's slow decode never runs on the server's event loop.

Found by a review (thirty-third session): a request body whose value nests deeper
than msgspec recurses was parsed in pure Python on the event loop (a 1 MiB body of
520,000 brackets: 1-2 s in which no other request, ``/healthz`` included, was
answered; in a cluster, long enough for the other members to stop serving), and
then refused anyway for its depth. The slow decode now runs in a worker thread,
and a depth past any value's is refused first, at C speed, without parsing.
The oracle: the thread the slow decode runs in, and what the store holds.
"""

from __future__ import annotations

import asyncio
import pathlib
import threading

import httpx
import pytest

from castore import Store, jsonparse
from castore.server import app, checks, operations
from castore.server.app import create_app
from tests.helpers import loopback_server

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
    server = loopback_server()
    store = Store(str(tmp_path / "s"))
    url = server.mount(create_app(store, access_log=server.log))
    try:
        yield url, store
    finally:
        server.unmount(url)
        store.close()


def test_a_deep_value_is_decoded_off_the_event_loop(served, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, store = served
    threads: list[str] = []
    slow = checks.decode_body

    def watched(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return slow(*args, **kwargs)

    monkeypatch.setattr(operations, "decode_body", watched)
    deep = b"[" * 5000 + b"]" * 5000  # past msgspec's recursion, as the process's limit allows
    lone = b'"\\ud800x"'  # a lone surrogate escape: msgspec refuses it, Go reads U+FFFD
    for key, value in (("deep", deep), ("lone", lone)):
        body = b'{"dag":"d","key":"' + key.encode() + b'","value":' + value + b"}"
        answer = httpx.post(url + "/v1/set", content=body, timeout=60)
        assert answer.status_code == 200, answer.text[:300]
    assert threads  # the lone surrogate at least took the slow decode
    assert "castore-test-server" not in threads  # the event loop's thread
    assert store.get("deep", namespace="d").value_json == deep
    assert store.get("lone", namespace="d").value_json == '"\ufffdx"'.encode()


def test_a_body_deeper_than_any_value_is_refused_unparsed(served, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, store = served

    def never(*args, **kwargs):
        raise AssertionError("a body too deep for any value was parsed")

    monkeypatch.setattr(jsonparse, "object_members", never)
    for depth in (10_001, 520_000):
        value = b"[" * depth + b"]" * depth
        body = b'{"dag":"d","key":"k","value":' + value + b"}"
        answer = httpx.post(url + "/v1/set", content=body, timeout=60)
        assert answer.status_code == 400, answer.text[:300]
        assert answer.json()["error"]["code"] == "invalid_value"
        assert "exceeded max depth" in answer.json()["error"]["message"]
    assert store.list(namespace="d").entries == []
    monkeypatch.undo()
    value = b"[" * 10_000 + b"]" * 10_000  # the deepest a value may be: taken
    body = b'{"dag":"d","key":"k","value":' + value + b"}"
    answer = httpx.post(url + "/v1/set", content=body, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    assert store.get("k", namespace="d").value_json == value


def test_a_call_still_queued_when_its_request_gives_up_is_never_run() -> None:
    """Found by the soak review: every call ran, even one whose request had timed out
    while it waited for a thread, so clients that sent requests and gave up faster
    than the server answered them grew its queue (and every answer's wait) without end.
    A call a thread has started still runs to its end (a write is all or nothing)."""
    calls = app._Calls(workers=1)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:
        started.set()
        release.wait()
        ran.append("started")

    async def main() -> bool:
        running = asyncio.ensure_future(calls.run(first))
        await asyncio.to_thread(started.wait)
        queued = asyncio.ensure_future(calls.run(lambda: ran.append("queued")))
        await asyncio.sleep(0)  # submitted: behind the first, the only thread busy
        running.cancel()  # both requests time out
        queued.cancel()
        await asyncio.wait([running, queued])  # both given up (the started call runs on)
        release.set()
        return await calls.drain(60)

    assert asyncio.run(main()) is True
    assert ran == ["started"]
