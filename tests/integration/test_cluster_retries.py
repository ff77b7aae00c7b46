"""A write whose answer was lost is applied once, whatever happens before its resend.

The resend of an append (same request id, marked as a retry) meets a coordinator
restarted with another member list (a 421: the client follows it, and must resend the
same request, never decide the write again), or a key compacted since (the version
below the applied one is gone: the answer must still be the local store's). A 421 may
only move a client to members it was given: a misconfigured coordinator never receives
its token or its writes for a host it does not know. Real ``castore serve`` processes on
loopback; the client loses answers through an httpx transport that drops them.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from castore import Store, StoreUnavailableError
from castore.cluster import Cluster
from castore.wire import MEMBERS_HEADER, RefCall
from tests.integration.test_cluster import Node, free_ports, rpc

Hook = Callable[[httpx.Request], bool]


class _Lossy(httpx.HTTPTransport):
    """Forwards each request; when the hook says so, the answer is lost on its way back."""

    hook: Hook | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        hook = _Lossy.hook
        if hook is not None and hook(request):
            response.read()
            response.close()
            raise httpx.ReadError("the answer was lost (test)", request=request)
        return response


@pytest.fixture
def lose(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Hook], None]]:
    real = httpx.Client

    class Client(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kw: Any) -> None:
            kw.setdefault("transport", _Lossy())
            super().__init__(*args, **kw)

    monkeypatch.setattr(httpx, "Client", Client)

    def arm(hook: Hook) -> None:
        _Lossy.hook = hook

    yield arm
    _Lossy.hook = None


def _once(effect: Callable[[], object]) -> Hook:
    """Lose the first append's answer, after ``effect`` (what happens before the resend)."""
    armed = [True]

    def hook(request: httpx.Request) -> bool:
        if request.url.path.endswith("/append") and armed.pop() if armed else False:
            effect()
            return True
        return False

    return hook


def _owned_by_first(lists: list[list[str]]) -> str:
    """A namespace the first member of ``lists[0]`` owns under every list."""
    first = lists[0][0]
    return next(
        f"n{i}"
        for i in range(100_000)
        if all(Cluster(members).owner("custom", f"n{i}") == first for members in lists)
    )


def test_a_resend_after_the_list_changed_is_applied_once(launcher, lose):
    a, b, c = launcher.cluster(3)
    whole, smaller = [a.url, b.url, c.url], [a.url, b.url]
    namespace = _owned_by_first([whole, smaller])
    worker = Store(",".join(whole))
    assert worker.incr("n", scope="custom", namespace=namespace).to_dict()["number"] == 1

    def shrink() -> None:  # c leaves: a and b restart with the smaller list; a still owns
        c.kill()
        for node in (a, b):
            node.kill()
            node.start(smaller, serving=False)  # b runs the old list until it restarts
        for node in (a, b):
            node.wait_serving()

    lose(_once(shrink))
    result = worker.incr("n", scope="custom", namespace=namespace).to_dict()
    assert (result["number"], result["version"]) == (2, 2)
    local = Store(a.store)
    history = local.history("n", scope="custom", namespace=namespace).entries
    assert [e.version for e in history] == [2, 1]
    assert local.get("n", scope="custom", namespace=namespace).value == 2


def test_a_list_naming_a_member_the_client_was_not_given_is_refused(launcher, monkeypatch):
    stranger = socket.create_server(("127.0.0.1", 0))
    stranger.settimeout(0.2)
    elsewhere = f"http://127.0.0.1:{stranger.getsockname()[1]}"
    heard: list[bytes] = []  # what reached it: the member's own look at its list, no more

    def listen() -> None:
        while True:
            try:
                conn, _ = stranger.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    heard.append(conn.recv(65536))

    threading.Thread(target=listen, daemon=True).start()
    node = Node(launcher.tmp / "a", free_ports(1)[0])
    launcher.nodes.append(node)
    node.start([node.url, elsewhere], serving=False)  # a typo: a host the workers never named
    given = [node.url, "http://127.0.0.1:9"]
    namespace = next(
        f"n{i}" for i in range(100_000) if Cluster(given).owner("custom", f"n{i}") == node.url
    )
    try:
        monkeypatch.setenv("CASTORE_TOKEN", "secret-token-0123456789")
        worker = Store(",".join(given))
        with pytest.raises(StoreUnavailableError, match="not given") as raised:
            worker.set("k", 1, scope="custom", namespace=namespace)
        assert "secret-token" not in str(raised.value)
    finally:
        stranger.close()
    assert all(request.startswith(b"GET /healthz ") for request in heard), heard
    assert not any(b"secret-token" in request for request in heard)  # no worker's token
    assert Store(node.store).list("", scope="custom", namespace=namespace).entries == []


@pytest.mark.parametrize("when", ["removed before", "compacted after"])
def test_a_resend_over_a_compacted_version_answers_as_a_local_store(launcher, lose, tmp_path, when):
    node = launcher.lone()
    remote, local = Store(node.url, dag="d"), Store(tmp_path / "local", dag="d")
    for store in (remote, local):
        for i in range(3):
            store.set("k", i)
        if when == "removed before":
            store.delete("k")
            store.compact(keep_last=1, keep_within_seconds=0)
    expected = local.set("k", "again").to_dict()
    if when == "compacted after":
        lose(_once(lambda: Store(node.store, dag="d").compact(keep_last=1)))
    else:
        lose(_once(lambda: None))
    assert remote.set("k", "again").to_dict() == expected
    versions = [e.version for e in Store(node.store, dag="d").history("k").entries]
    assert versions[0] == expected["version"]
    assert versions.count(expected["version"]) == 1


@pytest.mark.parametrize("members", [b"\xb2", b"9" * 5000, b"-1"])  # latin-1 "\u00b2" is a digit
def test_a_malformed_member_count_is_no_internal_error(launcher, members):
    a, _ = launcher.cluster(2)
    call = RefCall(scope="custom", namespace="n", key="k")
    response = rpc(a.url, "current", call, digest="x", headers={MEMBERS_HEADER: members})
    assert response.status_code == 421, response.text  # another list's digest: misdirected
    assert "Traceback" not in (a.base / "stderr0").read_text()


def test_a_resend_that_meets_two_list_changes_is_still_applied_once(launcher, lose, monkeypatch):
    """The answer lost once: every later hop of that write resends it, whatever 421s come."""
    a, b, c = launcher.cluster(3)
    lists = [[a.url, b.url, c.url], [a.url, b.url], [a.url, c.url]]
    namespace = _owned_by_first(lists)
    worker = Store(",".join(lists[0]))
    assert worker.incr("n", scope="custom", namespace=namespace).to_dict()["number"] == 1
    appends: list[httpx.Request] = []
    real = _Lossy.handle_request

    def handle(self: _Lossy, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/append"):
            appends.append(request)
            if len(appends) in (2, 3):  # before each resend, the members run another list
                members = lists[len(appends) - 1]
                for node in (a, b, c):  # a member left out stops first (SERVER.md)
                    node.kill()
                for node in (a, b, c):
                    if node.url in members:
                        node.start(members)
        response = real(self, request)
        if request.url.path.endswith("/append") and len(appends) == 1:
            response.read()
            response.close()
            raise httpx.ReadError("the answer was lost (test)", request=request)
        return response

    monkeypatch.setattr(_Lossy, "handle_request", handle)
    lose(lambda _request: False)  # installs the transport; ``handle`` loses the answer
    result = worker.incr("n", scope="custom", namespace=namespace).to_dict()
    assert (result["number"], result["version"]) == (2, 2)
    history = Store(a.store).history("n", scope="custom", namespace=namespace).entries
    assert [e.version for e in history] == [2, 1]


def test_a_resend_that_meets_a_503_retry_is_still_marked_as_a_retry(launcher, lose):
    # Found by a review: the answer was lost, then the member refused with 503
    # "retry":true (a peer paused: it cannot tell that its list agrees); the next attempt
    # went out without the retry mark, the server answered stale, and the worker decided
    # the incr again: applied twice (number 3, history [3, 2, 1]).
    a, b, c = launcher.cluster(3)
    members = [a.url, b.url, c.url]
    namespace = _owned_by_first([members])
    worker = Store(",".join(members))
    assert worker.incr("n", scope="custom", namespace=namespace).to_dict()["number"] == 1

    def pause_b() -> None:  # b stops answering a's looks: a refuses ("retry shortly") for ~3 s
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)
        threading.Timer(3.0, os.kill, (b.proc.pid, signal.SIGCONT)).start()
        a.kill()
        a.start(members, serving=False)

    lose(_once(pause_b))
    result = worker.incr("n", scope="custom", namespace=namespace).to_dict()
    local = Store(a.store)
    history = [e.version for e in local.history("n", scope="custom", namespace=namespace).entries]
    assert (result["number"], history) == (2, [2, 1])


def test_a_resend_that_fails_says_the_write_may_have_been_applied(launcher, lose):
    # Found by a review: the write was applied, its answer lost, and the resend met a
    # list this client must refuse; the error said only "update the list", so a caller
    # that ran the increment again applied it twice.
    a, b = launcher.cluster(2)
    given = [a.url, b.url]
    joined = [*given, f"http://127.0.0.1:{free_ports(1)[0]}"]  # a member the client lacks
    namespace = _owned_by_first([given, joined])
    worker = Store(",".join(given))

    def grow() -> None:  # every member restarts with the bigger list
        for node in (a, b):
            node.kill()
            node.start(joined, serving=False)
        for node in (a, b):
            node.wait_serving()

    lose(_once(grow))
    with pytest.raises(StoreUnavailableError, match="may or may not have been applied"):
        worker.incr("n", scope="custom", namespace=namespace)
    assert Store(a.store).get("n", scope="custom", namespace=namespace).value == 1  # it was


def test_a_repair_whose_answer_was_lost_is_not_run_again(launcher, lose):
    # Found by a review: ``check --repair`` was resent, so the caller saw only the second
    # run's report (what the first left) and never what was repaired.
    node = launcher.lone()
    local = Store(node.store, dag="d")
    local.set("k", {"a": 1})
    local.set("k", {"a": 2})
    local.close()
    (log,) = pathlib.Path(node.store, "refs", "dag").glob("*/*.log")
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x40
    log.write_bytes(bytes(data))
    checks: list[str] = []

    def hook(request: httpx.Request) -> bool:
        if request.url.path.endswith("/check"):
            checks.append(request.url.path)
            return len(checks) == 1
        return False

    lose(hook)
    worker = Store(node.url)
    with pytest.raises(StoreUnavailableError, match="may or may not have been applied"):
        worker.backend.check(repair=True, progress=None)
    assert len(checks) == 1  # sent once
    report = Store(node.store).backend.check(
        repair=False, progress=None
    )  # the first run repaired it
    assert [f.problem for f in report.findings if f.severity == "error"] == []
    assert len(worker.backend.check(repair=False, progress=None).findings) == len(
        report.findings
    )  # resent
    assert len(checks) == 2


@pytest.mark.parametrize("between", [10, 70], ids=["within-window", "beyond-window"])
def test_a_resend_the_server_cannot_place_is_never_decided_again(launcher, lose, between):
    # Found by a review (kill -9 of `serve --processes` children over PostgreSQL): a
    # resend whose id was no longer among the newest 64 versions was answered "stale",
    # and the client decided its increment again: the counter counted it twice.
    node = launcher.lone()
    worker = Store(node.url, dag="d")
    assert worker.incr("n").to_dict()["number"] == 1

    def others() -> None:  # the lost increment is applied; then `between` others come
        local = Store(node.store, dag="d")
        for _ in range(between):
            local.incr("n")
        local.close()

    lose(_once(others))
    if between < 64:  # found among the newest versions: applied once, told so
        assert worker.incr("n").to_dict()["number"] == 2
    else:
        with pytest.raises(StoreUnavailableError, match="may or may not have been applied"):
            worker.incr("n")
    worker.close()
    local = Store(node.store, dag="d")
    assert local.get("n").value == 2 + between  # the lost increment counted once, not twice
    assert len(local.history("n", limit=500).entries) == 2 + between
    local.close()


def test_a_resend_whose_versions_were_compacted_says_so(launcher, lose):
    # Found by a review: a compaction between the lost answer and the resend left the
    # server unable to place it ("unknown", rightly); the error blamed only "more than 64
    # versions written since, or one unreadable", leaving the compaction unnamed.
    node = launcher.lone()
    worker = Store(node.url, dag="d")
    assert worker.incr("n").to_dict()["number"] == 1

    def compacted() -> None:  # the lost increment is applied; one more, then a compaction
        local = Store(node.store, dag="d")
        local.incr("n")
        local.compact(keep_last=1)
        local.close()

    lose(_once(compacted))
    with pytest.raises(StoreUnavailableError, match="compacted") as raised:
        worker.incr("n")
    assert "may or may not have been applied" in str(raised.value)
    worker.close()
    local = Store(node.store, dag="d")
    assert local.get("n").value == 3  # the lost increment counted once, not twice
    local.close()


def test_a_resend_a_421_sends_to_another_owner_is_never_decided_again(launcher, lose):
    # Found by a review: the incr was applied on a, its answer lost, and the members
    # restarted with a list under which c owns the keyspace (c joining): the resend
    # followed the 421 to c, whose store never saw it, was answered stale there and
    # decided again: applied on a (number 4) and on c (number 1), acknowledged once.
    a, b, c = launcher.cluster(3)
    whole, small = [a.url, b.url, c.url], [a.url, b.url]
    moving = [Cluster(small).owner, Cluster(whole).owner]
    namespace = next(
        f"n{i}"
        for i in range(100_000)
        if [owner("custom", f"n{i}") for owner in moving] == [a.url, c.url]
    )
    staying = _owned_by_first([small, whole])
    c.kill()
    for node in (a, b):
        node.kill()
        node.start(small, serving=False)
    for node in (a, b):
        node.wait_serving()
    worker = Store(",".join(whole))
    worker.incr("x", scope="custom", namespace=staying)  # a 421: the worker takes a's list
    for _ in range(3):
        worker.incr("n", scope="custom", namespace=namespace)  # on a

    def grow() -> None:  # c joins last (SERVER.md): now it owns the keyspace
        for node in (a, b):
            node.kill()
            node.start(whole, serving=False)
        c.start(whole, serving=False)
        for node in (a, b, c):
            node.wait_serving()

    lose(_once(grow))
    with pytest.raises(StoreUnavailableError, match=r"another owner now \(it may or may not"):
        worker.incr("n", scope="custom", namespace=namespace)
    history = Store(a.store).history("n", scope="custom", namespace=namespace).entries
    assert [e.version for e in history] == [4, 3, 2, 1]
    assert (
        not Store(c.store).get("n", scope="custom", namespace=namespace).found
    )  # not decided again
