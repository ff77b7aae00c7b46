"""A proxy between worker and server answers 502 or 504: the answer was lost, not refused.

nginx answers 502 when its connection to the server failed (refused: the server
restarting; or closed after the request went: a server killed mid-write) and 504
when the server sent no answer within ``proxy_read_timeout`` (the server may still
apply the write). Here a fake proxy (:mod:`tests.integration.fakeserver`) forwards
each call to a real ``castore serve`` and answers the append with the gateway's
status instead of the server's answer. Oracle: docs/SERVER.md, "Workers": a write
whose answer was lost is sent again marked as a retry and applied once, or said to
be one that "may or may not have been applied"; a local store's one ``set`` makes
one version.
"""

from __future__ import annotations

import httpx
import pytest

from castore import Store, StoreUnavailableError
from castore.wire import EntryValue
from tests.integration.fakeserver import FakeServer, mp
from tests.integration.test_cluster import Launcher, Node, every_version

_PAGE = b"<html><head><title>%s</title></head><body>nginx</body></html>"


def _through(node: Node, fake: FakeServer, status: str, times: int) -> None:
    """Forward every call to ``node``; the first ``times`` appends get ``status`` back."""
    left = [times]

    def answer(call: str, body: bytes) -> tuple[str, bytes]:
        reply = httpx.post(
            f"{node.url}/v1/backend/{call}",
            content=body,
            headers={"content-type": "application/msgpack"},
            timeout=30,
        )
        if call == "append" and left[0] > 0:
            left[0] -= 1
            return status, _PAGE % status.encode()
        return f"{reply.status_code} {reply.reason_phrase}", reply.content

    fake.answer = answer


def test_a_write_whose_answer_a_proxy_lost_with_502_is_applied_once(
    launcher: Launcher, fake: FakeServer
) -> None:
    # Found by a review: the worker raised "HTTP 502 without an error body" (no "may
    # or may not have been applied"), though the server had applied the write; the
    # user who ran it again made two versions (an incr counted twice).
    node = launcher.lone()
    _through(node, fake, "502 Bad Gateway", times=2)
    store = Store(fake.url, dag="d")
    try:
        result = store.incr("n")
    finally:
        store.close()
    assert (result.version, result.number) == (1, 1)
    assert every_version(node.store, "dag", "d", "n") == [(1, 1)]
    appends = fake.calls_of("append")
    assert [call["retry"] for call in appends] == [False, True, True]
    assert len({call["request_id"] for call in appends}) == 1


@pytest.mark.parametrize("status", ["504 Gateway Time-out", "502 Bad Gateway"])
def test_a_write_a_proxy_answered_with_a_gateway_error_may_have_been_applied(
    launcher: Launcher, fake: FakeServer, status: str
) -> None:
    # 504: the server took the write and sent the proxy no answer in time; it is not
    # sent again (as a worker's own read timeout), and said to be unsure. 502 on every
    # try: the same words once the tries are spent.
    node = launcher.lone()
    _through(node, fake, status, times=1000)
    store = Store(fake.url, dag="d")
    try:
        with pytest.raises(StoreUnavailableError, match=r"may or may not have been applied"):
            store.set("k", 1)
    finally:
        store.close()
    assert every_version(node.store, "dag", "d", "k") == [(1, 1)]  # it was applied
    if status.startswith("504"):
        assert len(fake.calls_of("append")) == 1


def test_a_read_a_proxy_answered_with_502_while_the_server_restarts_is_sent_again(
    launcher: Launcher, fake: FakeServer
) -> None:
    # What a worker rides out without a proxy (a refused connection, tried 8 times over
    # about 5 s): through nginx, a restarting server is a 502 at once.
    node = launcher.lone()
    Store(node.url, dag="d").set("k", 1)
    _through(node, fake, "", times=0)
    forward = fake.answer
    misses = [2]

    def answer(call: str, body: bytes) -> tuple[str, bytes]:
        if misses[0] > 0:
            misses[0] -= 1
            return "502 Bad Gateway", _PAGE % b"502 Bad Gateway"
        return forward(call, body)  # type: ignore[return-value]

    fake.answer = answer
    store = Store(fake.url, dag="d")
    try:
        assert store.get("k").value == 1
    finally:
        store.close()
    assert len(fake.calls_of("current")) == 3


def test_a_proxys_413_names_its_body_limit(fake: FakeServer) -> None:
    # Found by a review: behind nginx's default client_max_body_size (1 MiB), a set of a
    # 1 MiB value, or an import of a key whose history is over 1 MiB, said only "HTTP 413
    # without an error body" (castore's own 413 has one, and its limits are larger).
    def answer(call: str, body: bytes) -> tuple[str, bytes]:
        if call == "append":
            return "413 Request Entity Too Large", _PAGE % b"413 Request Entity Too Large"
        return "200 OK", mp(EntryValue(None, None))

    fake.answer = answer
    store = Store(fake.url, dag="d")
    try:
        with pytest.raises(StoreUnavailableError, match="client_max_body_size") as caught:
            store.set("k", 1)
    finally:
        store.close()
    assert "may or may not" not in str(caught.value)
