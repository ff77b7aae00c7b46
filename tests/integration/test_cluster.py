"""A cluster of ``castore serve`` coordinators, and the backend protocol, against real processes.

Each coordinator is ``python -m castore --dir STORE serve --listen 127.0.0.1:PORT
--cluster URL,URL,URL --self URL`` on a port chosen before it starts (every
member must know the list), with its own file store below ``tmp_path``. The
oracle is always the stores themselves: after the requests, each directory is
opened with a local :class:`~castore.Store` and what it holds is compared
with what was written and with :meth:`Cluster.owner`. Processes are killed
(SIGKILL) at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest

from castore import Store, codec, export_lines, import_lines
from castore.cluster import Cluster
from castore.errors import ConflictError, LockTimeoutError, StoreUnavailableError
from castore.records import OP_SET, Audit, Entry
from castore.server.app import BACKEND_BODY_BYTES, MAX_BODY_BYTES
from castore.wire import (
    APPLIED,
    CLUSTER_HEADER,
    MEMBERS_HEADER,
    STALE,
    WRITTEN,
    Append,
    AppendReply,
    EntryValue,
    GCCall,
    NamespaceCall,
    RefCall,
    WireVersion,
)
from tests.helpers import CASTORE_PATH, read_response

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0  # a hang guard only: nothing asserts how long anything takes
PROGRESS_TIMEOUT = 60.0
SCOPES = ("dag", "root_dag", "global", "custom")
TOKEN = "cluster-test-token-0123456789abcdef"  # noqa: S105  # a test token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MSGPACK = {"content-type": "application/msgpack"}

Ref3 = tuple[str, str, str]  # (scope, namespace, key)


# -- helpers: processes -------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (held together, then freed)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def server_env(tmp: pathlib.Path) -> dict[str, str]:
    """A clean environment: the castore under test, no token, no caller's variables."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PYTHONPATH": CASTORE_PATH,
        "LC_ALL": "C.UTF-8",
    }


class Node:
    """One ``castore serve`` process on a fixed port and store; it can be killed and restarted."""

    def __init__(self, base: pathlib.Path, port: int) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.store = str(base / "store")
        self.access_log = base / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.start_line: dict[str, Any] = {}
        self._stderr = base / "stderr0"
        self.env: dict[str, str] = {}  # added to server_env's (e.g. $SSL_CERT_FILE)

    def launch(self, members: Sequence[str] | None, *extra: str) -> None:
        """Start the process (not waiting for it): clustered with ``members``, else alone."""
        argv = [sys.executable, "-m", "castore", "--dir", self.store, "serve"]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--access-log", str(self.access_log)]
        if members is not None:
            argv += ["--cluster", ",".join(members), "--self", self.url]
        self._stderr = self.base / f"stderr{self.runs}"
        self.runs += 1
        with open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [*argv, *extra],
                env={**server_env(self.base), **self.env},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def wait_listening(self) -> dict[str, Any]:
        """The start line, once written (the socket listens from then on)."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            first = self._stderr.read_bytes().split(b"\n", 1)
            if len(first) == 2:
                line: dict[str, Any] = json.loads(first[0])
                assert line["event"] == "listening", line
                assert line["url"] == self.url, line
                self.start_line = line
                return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"server did not start: {self._stderr.read_text()}")

    def start(
        self, members: Sequence[str] | None, *extra: str, serving: bool = True
    ) -> dict[str, Any]:
        """Start and wait for the start line; with ``serving``, until it serves its keyspaces."""
        self.launch(members, *extra)
        line = self.wait_listening()
        if serving:
            self.wait_serving()
        return line

    def wait_serving(self) -> None:
        """Until a clustered member has seen every member it reaches run its list (peers.py)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            health = httpx.get(f"{self.url}/healthz", timeout=30)
            if health.status_code == 200 and health.json().get("serving", True):
                return
            assert time.monotonic() < deadline, f"{self.url} never served: {health.text}"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(20)

    def statuses(self) -> list[tuple[str, int]]:
        """(path, status) of every request in the access log (all runs)."""
        if not self.access_log.exists():
            return []
        lines = [json.loads(line) for line in self.access_log.read_text().splitlines()]
        return [(line["path"], line["status"]) for line in lines]

    def settled_statuses(self) -> list[tuple[str, int]]:
        """:meth:`statuses` once every request so far is logged: ends with a ``/healthz`` marker.

        The server writes a request's line after its response, at its event loop's next
        turn, in order (one process): once the marker's line is there, so are the others.
        """
        count = len(self.statuses())
        assert httpx.get(f"{self.url}/healthz", timeout=30).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = self.statuses()
            if len(seen) > count and seen[-1] == ("/healthz", 200):
                return seen
            time.sleep(0.01)
        pytest.fail(f"{self.url}: the marker request was never logged")


@dataclass
class Launcher:
    """Starts nodes below ``tmp``; every one of them is killed at teardown."""

    tmp: pathlib.Path
    nodes: list[Node] = field(default_factory=list)

    def cluster(
        self, count: int = 3, *extra: str, want: Callable[[Cluster], bool] | None = None
    ) -> list[Node]:
        """``count`` coordinators with the same member list, started together.

        ``want``: a condition on the member list (ports are drawn again until it holds).
        """
        ports = free_ports(count)
        while want is not None and not want(Cluster([f"http://127.0.0.1:{p}" for p in ports])):
            ports = free_ports(count)
        nodes = [
            Node(self.tmp / f"node{len(self.nodes) + i}", port) for i, port in enumerate(ports)
        ]
        self.nodes += nodes
        members = [node.url for node in nodes]
        for node in nodes:
            node.launch(members, *extra)
        cluster = Cluster(members)
        for node in nodes:
            line = node.wait_listening()
            assert (line["cluster"], line["digest"]) == (cluster.members, cluster.digest)
            assert (line["self"], "warning" in line) == (node.url, False)
        for node in nodes:
            node.wait_serving()
        return nodes

    def lone(self, *extra: str) -> Node:
        """One server without ``--cluster``."""
        node = Node(self.tmp / f"node{len(self.nodes)}", free_ports(1)[0])
        self.nodes.append(node)
        line = node.start(None, *extra)
        assert "cluster" not in line
        assert "digest" not in line
        return node


# -- helpers: the stores, the wire --------------------------------------------------------


def contents(location: str) -> dict[Ref3, tuple[int, Any]]:
    """Every key of a store, read by a local Store: (scope, namespace, key) -> (version, value)."""
    if not os.path.exists(location):
        return {}
    store = Store(location)
    try:
        found: dict[Ref3, tuple[int, Any]] = {}
        for scope in SCOPES:
            for namespace in store.backend.namespaces(scope):
                for key in store.backend.keys(scope, namespace, ""):
                    got = store.get(key, scope=scope, namespace=namespace)
                    found[scope, namespace, key] = (got.version, got.value)
        return found
    finally:
        store.close()


def every_version(location: str, scope: str, namespace: str, key: str) -> list[tuple[int, Any]]:
    """(version, value) of every version of a key, oldest first, read by a local Store."""
    store = Store(location)
    try:
        ref = store.ref(key, scope, namespace)
        return [
            (entry.version, None if value is None else json.loads(value))
            for entry, value in store.backend.iter_versions(ref)
        ]
    finally:
        store.close()


def reference_owner(members: Sequence[str], scope: str, namespace: str) -> str:
    """Rendezvous hashing as castore/cluster.py's docstring states it, written out independently."""
    best: tuple[bytes, str] | None = None
    for url in members:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        score = hashlib.sha256(f"{scope}\0{namespace}\0{host}:{port}".encode()).digest()
        candidate = (score, url)
        # the highest score wins; on a tie, the lower host:port
        if best is None or score > best[0] or (score == best[0] and url < best[1]):
            best = candidate
    assert best is not None
    return best[1]


def wire_set(value: Any, request_id: str, **audit: Any) -> WireVersion:
    """A set's version as the http:// client sends it (its request id in the audit record)."""
    normalized = codec.normalize(value)
    return WireVersion(
        op=OP_SET,
        normalized=normalized,
        digest_hex=codec.hexdigest(normalized),
        audit=Audit(request_id=request_id, **audit),
    )


def append_of(
    scope: str,
    namespace: str,
    key: str,
    value: Any,
    *,
    expect: Entry | int,
    request_id: str | None = None,
    retry: bool = False,
) -> Append:
    """An append after ``expect`` (the newest entry the client saw; 0: none)."""
    request_id = request_id or secrets.token_hex(16)
    newest = (
        (expect.version, expect.time_ns, expect.hash) if isinstance(expect, Entry) else (0, 0, "")
    )
    return Append(
        scope=scope,
        namespace=namespace,
        key=key,
        expect=newest[0] if isinstance(expect, Entry) else expect,
        expect_time_ns=newest[1],
        expect_hash=newest[2],
        versions=[wire_set(value, request_id, actor="test")],
        request_id=request_id,
        retry=retry,
    )


def rpc(
    url: str,
    call: str,
    message: Any,
    digest: str | None = None,
    headers: dict[str, Any] | None = None,
) -> httpx.Response:
    """``POST /v1/backend/<call>`` with ``message`` (a struct, or raw bytes) as MessagePack."""
    body = message if isinstance(message, bytes) else msgspec.msgpack.encode(message)
    sent = {**MSGPACK, **(headers or {})}
    if digest is not None:
        sent[CLUSTER_HEADER] = digest
    return httpx.post(f"{url}/v1/backend/{call}", content=body, headers=sent, timeout=30)


def assert_misdirected(response: httpx.Response, cluster: Cluster, owner: str) -> None:
    """A 421 ``misdirected`` answer naming the server's member list and the keyspace's owner."""
    assert response.status_code == 421, response.text
    error = response.json()["error"]
    assert error["code"] == "misdirected", error
    assert error["cluster"] == cluster.members, error
    assert error["owner"] == owner, error


def assert_error(response: httpx.Response, status: int, code: str, fragment: str = "") -> None:
    assert response.status_code == status, (status, code, response.text)
    error = response.json()["error"]
    assert error["code"] == code, error
    assert fragment in error["message"], (fragment, error)


def owned_namespaces(
    want: Callable[[str], bool], count: int, prefix: str = "ns", scope: str = "custom"
) -> list[str]:
    """The first ``count`` namespaces ``{prefix}-N`` for which ``want(namespace)`` holds."""
    found: list[str] = []
    for i in range(100_000):
        if want(f"{prefix}-{i}"):
            found.append(f"{prefix}-{i}")
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} namespaces found in scope {scope}")


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (a hang guard: a deadline fails the test, never decides it)."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"no progress: {what}"
        time.sleep(0.01)


# -- 1. routing: each keyspace on exactly one coordinator, its owner ------------------------


def test_a_self_url_on_another_port_than_the_listening_one_is_flagged(launcher, tmp_path):
    """Right behind a proxy, a mistake otherwise: the start line says so (it still starts)."""
    other = free_ports(1)[0]
    node = Node(tmp_path / "node", free_ports(1)[0])
    launcher.nodes.append(node)
    elsewhere = f"http://127.0.0.1:{other}"
    line = node.start(None, "--cluster", elsewhere, "--self", elsewhere)
    assert line["self"] == elsewhere
    assert f"--self names port {other}, this server listens on {node.port}" in line["warning"]


@pytest.mark.parametrize(
    ("members", "self_url", "said"),
    [
        # Found by a review: --self took the first URL of a list and the server started.
        (
            "http://127.0.0.1:7001,http://127.0.0.1:7002",
            "http://127.0.0.1:7001,http://127.0.0.1:7002",
            "--self names 2 URLs: give this server's URL alone",
        ),
        (
            "http://127.0.0.1:7001,http://127.0.0.1:7002",
            "http://127.0.0.1:7003",
            "--self http://127.0.0.1:7003 is not in the --cluster list",
        ),
        (
            "http://127.0.0.1:7001,http://127.0.0.1:7002",
            "https://127.0.0.1:7001",
            "--self https://127.0.0.1:7001 is not in the --cluster list",
        ),
        # Found by a review: port 0 was taken as the scheme's default port, 80.
        (
            "http://127.0.0.1:0,http://127.0.0.1:7002",
            "http://127.0.0.1:0",
            "invalid coordinator URL 'http://127.0.0.1:0': port 0",
        ),
    ],
)
def test_a_self_url_that_is_not_one_member_of_the_list_is_refused(
    members, self_url, said, tmp_path
):
    argv = [sys.executable, "-m", "castore", "--dir", str(tmp_path / "s"), "serve"]
    argv += ["--listen", "127.0.0.1:0", "--cluster", members, "--self", self_url]
    # a hang guard: a server that starts runs until killed
    done = subprocess.run(
        argv, check=False, env=server_env(tmp_path), capture_output=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr.decode() == f"castore: {said}\n"


def test_every_keyspace_lands_on_its_owner_and_only_there(launcher):
    nodes = launcher.cluster(3)
    members = [node.url for node in nodes]
    cluster = Cluster(members)
    for scope in SCOPES:  # the library's choice equals the documented rule, written out here
        for i in range(50):
            assert cluster.owner(scope, f"n{i}") == reference_owner(members, scope, f"n{i}")
    keyspaces = [(scope, f"ns-{i:02d}") for scope in ("dag", "custom") for i in range(30)]
    keyspaces += [("root_dag", f"root-{i}") for i in range(4)] + [("global", "_"), ("global", "g")]
    client = Store(",".join(reversed(members)), dag="unused")  # the order of the list is no matter
    written: dict[Ref3, Any] = {}
    try:
        for scope, namespace in keyspaces:
            for key in ("k0", "k1", "dir/k2"):
                value = {"scope": scope, "namespace": namespace, "key": key, "n": len(written)}
                result = client.set(key, value, scope=scope, namespace=namespace)
                assert (result.version, result.namespace) == (1, namespace)
                written[scope, namespace, key] = value
        held = {node.url: contents(node.store) for node in nodes}
        for url, items in held.items():
            mine = {ref: (1, v) for ref, v in written.items() if cluster.owner(*ref[:2]) == url}
            assert items == mine, url
            assert items, f"{url} owns none of {len(keyspaces)} keyspaces"
        assert sum(len(items) for items in held.values()) == len(written)
        for (scope, namespace, key), value in written.items():
            got = client.get(key, scope=scope, namespace=namespace)
            assert (got.found, got.version, got.value) == (True, 1, value)
        for scope, namespace in keyspaces:
            listed = client.list(scope=scope, namespace=namespace)
            assert [entry.key for entry in listed.entries] == ["dir/k2", "k0", "k1"]
        assert client.backend.namespaces("custom") == [f"ns-{i:02d}" for i in range(30)]
        assert client.backend.namespaces("global") == ["_", "g"]
    finally:
        client.close()
    for node in nodes:  # a client with the servers' list is never misdirected
        statuses = node.settled_statuses()
        assert statuses, node.url
        assert {status for _, status in statuses} == {200}, node.url


# -- 2. a client with another list: 421, nothing written; the library follows ---------------


def test_a_stale_or_different_list_is_refused_and_writes_nothing(launcher):
    nodes = launcher.cluster(3)
    members = [node.url for node in nodes]
    cluster = Cluster(members)
    unknown = f"http://127.0.0.1:{free_ports(1)[0]}"
    other_lists = [members[:2], members[1:], [members[0]], [*members, unknown]]
    scope, namespace = "custom", "orders"
    owner = cluster.owner(scope, namespace)
    write = append_of(scope, namespace, "k", {"v": 1}, expect=0)
    read = RefCall(scope=scope, namespace=namespace, key="k")
    for members_seen in other_lists:
        digest = Cluster(members_seen).digest
        assert digest != cluster.digest
        for node in nodes:
            assert_misdirected(rpc(node.url, "append", write, digest), cluster, owner)
            assert_misdirected(rpc(node.url, "current", read, digest), cluster, owner)
    for node in nodes:
        assert_misdirected(rpc(node.url, "append", write), cluster, owner)  # no header at all
        assert_misdirected(rpc(node.url, "append", write, "0" * 64), cluster, owner)
        if node.url != owner:  # the right list, the wrong member
            assert_misdirected(rpc(node.url, "append", write, cluster.digest), cluster, owner)
            listing = NamespaceCall(scope=scope, namespace=namespace)
            assert_misdirected(rpc(node.url, "keys", listing, cluster.digest), cluster, owner)
        # the JSON API is checked alike
        data = b'{"key":"k","scope":"custom","namespace":"orders","value":1}'
        stale = {CLUSTER_HEADER: Cluster(members[:2]).digest}
        response = httpx.post(f"{node.url}/v1/set", content=data, headers=stale, timeout=30)
        assert_misdirected(response, cluster, owner)
        if node.url != owner:
            right = {CLUSTER_HEADER: cluster.digest}
            response = httpx.post(f"{node.url}/v1/set", content=data, headers=right, timeout=30)
            assert_misdirected(response, cluster, owner)
    assert all(contents(node.store) == {} for node in nodes)
    # the control: the same append, with the right list, at the owner, is written there only
    reply = rpc(owner, "append", write, cluster.digest)
    assert reply.status_code == 200, reply.text
    assert msgspec.msgpack.decode(reply.content, type=AppendReply).status == WRITTEN
    for node in nodes:
        expected = {(scope, namespace, "k"): (1, {"v": 1})} if node.url == owner else {}
        assert contents(node.store) == expected

    # Through the library, a client with another list takes the servers' list and writes
    # each keyspace at its owner (it holds the value there and nowhere else), when that
    # list names only members the client was given; one missing a member is refused.
    third = members[2]
    missing = owned_namespaces(lambda ns: cluster.owner("dag", ns) == third, 3, "miss", "dag")
    others = owned_namespaces(lambda ns: cluster.owner("dag", ns) != third, 3, "have", "dag")
    short = Store(",".join(members[:2]))
    for ns in [*missing, *others]:
        with pytest.raises(StoreUnavailableError, match="not given"):
            short.set("by-2", {"ns": ns}, scope="dag", namespace=ns)
    short.close()
    with_unknown = Cluster([*members, unknown])
    live_first = owned_namespaces(
        lambda ns: with_unknown.owner("dag", ns) != unknown, 1, "first", "dag"
    )
    to_unknown = owned_namespaces(
        lambda ns: with_unknown.owner("dag", ns) == unknown, 2, "unk", "dag"
    )
    written: dict[Ref3, Any] = {(scope, namespace, "k"): {"v": 1}}
    for members_seen, namespaces in (
        ([*members, unknown], [*live_first, *to_unknown, *others]),  # never to the unknown URL
    ):
        client = Store(",".join(members_seen))
        try:
            for ns in namespaces:
                value = {"list": len(members_seen), "ns": ns}
                result = client.set(f"by-{len(members_seen)}", value, scope="dag", namespace=ns)
                assert result.version == 1
                written["dag", ns, f"by-{len(members_seen)}"] = value
                assert client.get(f"by-{len(members_seen)}", namespace=ns).value == value
        finally:
            client.close()
    held = {node.url: contents(node.store) for node in nodes}
    for ref, value in written.items():
        places = [url for url, items in held.items() if ref in items]
        assert places == [cluster.owner(*ref[:2])], ref
        assert held[places[0]][ref] == (1, value)
    assert sum(len(items) for items in held.values()) == len(written)
    assert any(status == 421 for node in nodes for _, status in node.settled_statuses())


def test_the_keyspace_checked_is_the_keyspace_served(launcher):
    """Scope ``global`` with an empty namespace is the namespace ``_`` (the store resolves it
    so): a backend call naming it so must be refused by every member but the owner of
    global/_, as the JSON API resolves the namespace before its check."""
    nodes = launcher.cluster(3, want=lambda c: c.owner("global", "") != c.owner("global", "_"))
    cluster = Cluster([node.url for node in nodes])
    owner = cluster.owner("global", "_")
    calls: list[tuple[str, Any]] = [
        ("append", append_of("global", "", "k", "via-empty", expect=0)),
        ("current", RefCall(scope="global", namespace="", key="k")),
        ("keys", NamespaceCall(scope="global", namespace="")),
    ]
    wrong = cluster.owner("global", "")  # first: the member the unresolved name points at
    for node in sorted(nodes, key=lambda node: node.url != wrong):
        if node.url == owner:
            continue
        # the JSON API: the namespace resolved, then checked
        data = b'{"key":"k","scope":"global","value":"via-json"}'
        headers = {CLUSTER_HEADER: cluster.digest}
        response = httpx.post(f"{node.url}/v1/set", content=data, headers=headers, timeout=30)
        assert_misdirected(response, cluster, owner)
        for call, message in calls:
            response = rpc(node.url, call, message, cluster.digest)
            role = "owner of global/''" if node.url == wrong else "neither"
            assert response.status_code in (400, 421), (call, role, response.status_code)
            if response.status_code == 421:
                assert_misdirected(response, cluster, owner)
    assert [contents(node.store) for node in nodes] == [{}, {}, {}]


# -- 3. a member restarted with another list ------------------------------------------------


def test_a_member_restarted_with_another_list_refuses_the_old_one(launcher):
    nodes = launcher.cluster(3)
    members = [node.url for node in nodes]
    old = Cluster(members)
    client = Store(",".join(members))
    try:
        for i in range(12):
            client.set("k", i, scope="custom", namespace=f"before-{i}")
    finally:
        client.close()
    before = {node.url: contents(node.store) for node in nodes}
    assert sum(len(items) for items in before.values()) == 12

    first, second, moved = nodes
    moved.kill()
    new = Cluster([second.url, moved.url])  # the first member is dropped
    line = moved.start(new.members, serving=False)  # the second runs the old list
    assert (line["cluster"], line["digest"]) == (new.members, new.digest)
    namespaces = [f"before-{i}" for i in range(12)] + ["fresh-1", "fresh-2"]
    for ns in namespaces:
        owner = new.owner("custom", ns)
        write = append_of("custom", ns, "k", "late", expect=0)
        for call, message in (
            ("append", write),
            ("current", RefCall(scope="custom", namespace=ns, key="k")),
        ):
            assert_misdirected(rpc(moved.url, call, message, old.digest), new, owner)
        write = append_of("custom", ns, "k", "late", expect=0, retry=True)
        assert_misdirected(rpc(moved.url, "append", write, old.digest), new, owner)
        # and the members still on the old list refuse the new one
        for node in (first, second):
            old_owner = old.owner("custom", ns)
            assert_misdirected(rpc(node.url, "append", write, new.digest), old, old_owner)
    after = {node.url: contents(node.store) for node in nodes}
    assert after == before

    # A library client on the old list, for a keyspace the moved member owned: it takes the
    # moved member's list (which, by rendezvous hashing, still gives it the keyspace), but
    # the moved member serves nothing while the second member runs the old list (a split
    # otherwise: the first member, left running, would serve the old list's clients).
    stays = owned_namespaces(lambda ns: old.owner("dag", ns) == moved.url, 1, "stays", "dag")[0]
    assert new.owner("dag", stays) == moved.url
    client = Store(",".join(members))
    try:
        with pytest.raises(StoreUnavailableError, match="runs another coordinator list"):
            client.set("x", 1, namespace=stays)
        assert {node.url: contents(node.store) for node in nodes} == before
        first.kill()  # the member removed stops; the other runs the new list
        second.kill()
        second.start(new.members)
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        while True:  # once the moved member has looked again (castore.server.peers)
            try:
                assert client.set("x", 1, namespace=stays).version == 1
                break
            except StoreUnavailableError:
                assert time.monotonic() < deadline, "the members never agreed"
                time.sleep(0.2)
        assert client.get("x", namespace=stays).value == 1
    finally:
        client.close()
    after = {node.url: contents(node.store) for node in nodes}
    expected = {**before[moved.url], ("dag", stays, "x"): (1, 1)}
    assert after == {**before, moved.url: expected}


def _until_served(write: Callable[[], object]) -> None:
    """Run ``write`` until the members agree (a refusal writes nothing: safe to run again)."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while True:
        try:
            write()
            return
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "the members never agreed"
            time.sleep(0.2)


def test_a_member_added_before_the_others_run_its_list_serves_nothing(launcher):
    # Found by a review (thirty-second session): a member started with the new list while
    # another still ran the old one served a keyspace it owns under the new list, and a
    # worker with the new list that met the old member took its list (it names only
    # members the worker was given) and wrote the same keyspace there: version 1 twice,
    # in two stores. A member now serves only while the members it reaches run its list.
    a, b, c = launcher.cluster(3)
    old = [a.url, b.url, c.url]
    d = Node(launcher.tmp / "added", free_ports(1)[0])
    launcher.nodes.append(d)
    new = Cluster([*old, d.url])
    joining = owned_namespaces(lambda ns: new.owner("custom", ns) == d.url, 1, "join")[0]
    d.start(new.members, serving=False)
    worker = Store(",".join(new.members))
    try:
        for _ in range(3):  # before its first look, and after it
            with pytest.raises(StoreUnavailableError, match="a member serves only while"):
                worker.set("k", "from-the-new-list", scope="custom", namespace=joining)
            time.sleep(0.5)
        assert "runs another coordinator list" in httpx.get(f"{d.url}/healthz").json()["reason"]
        assert contents(d.store) == {}
        other = Store(",".join(new.members))  # a worker that meets an old member first
        try:
            meet = owned_namespaces(lambda ns: new.owner("custom", ns) != d.url, 1, "meet")[0]
            other.get("k", scope="custom", namespace=meet)  # a 421 naming the old list
            other.set("k", "at-the-old-owner", scope="custom", namespace=joining)
        finally:
            other.close()
        holding = [n.url for n in (a, b, c, d) if ("custom", joining, "k") in contents(n.store)]
        assert holding == [Cluster(old).owner("custom", joining)]  # one place
        for node in (a, b, c):  # then every member runs the new list
            node.kill()
            node.start(new.members, serving=False)
        _until_served(
            lambda: worker.set("k", "from-the-new-list", scope="custom", namespace=joining)
        )
        assert contents(d.store) == {("custom", joining, "k"): (1, "from-the-new-list")}
    finally:
        worker.close()


def _growing(launcher: Launcher) -> tuple[Node, Node, Cluster, str]:
    """A one-member cluster running, a member to add (not started), the list of both, and
    a namespace the added member owns under it."""
    (old,) = launcher.cluster(1)
    added = Node(launcher.tmp / "added", free_ports(1)[0])
    launcher.nodes.append(added)
    both = Cluster([old.url, added.url])
    joining = owned_namespaces(lambda ns: both.owner("custom", ns) == added.url, 1, "join")[0]
    return old, added, both, joining


def test_a_member_that_does_not_answer_is_not_taken_for_agreeing(launcher):
    # Found by a review of the first version of the check: a member that did not answer
    # in time (paused, or busy) counted as agreeing, so a member added first served a
    # keyspace the paused old owner, its list unchanged, went on serving after SIGCONT.
    old, added, both, joining = _growing(launcher)
    assert old.proc is not None
    old.proc.send_signal(signal.SIGSTOP)
    try:
        added.start(both.members, serving=False)
        worker = Store(",".join(both.members))
        try:
            for _ in range(2):  # each after the worker's 5 s of retries
                with pytest.raises(StoreUnavailableError, match=r"did not answer|not seen"):
                    worker.set("k", 1, scope="custom", namespace=joining)
                time.sleep(0.5)
        finally:
            worker.close()
    finally:
        old.proc.send_signal(signal.SIGCONT)
    assert contents(added.store) == {}


def test_an_old_member_that_goes_down_and_back_never_lets_an_added_one_serve(launcher):
    # Found by the review of the second version: a member seen running the old list that
    # went down (restarted by a supervisor) counted as agreeing while down, so the added
    # member served, and the old one served again at once when back (a split).
    old, added, both, joining = _growing(launcher)
    added.start(both.members, serving=False)
    worker = Store(",".join(both.members))
    try:
        with pytest.raises(StoreUnavailableError, match="a member serves only while"):
            worker.set("k", 1, scope="custom", namespace=joining)
        old.kill()
        time.sleep(1.5)  # looks at the old member now find it down
        with pytest.raises(StoreUnavailableError, match="is down now"):
            worker.set("k", 1, scope="custom", namespace=joining)
        old.start([old.url])
        with pytest.raises(StoreUnavailableError, match="a member serves only while"):
            worker.set("k", 1, scope="custom", namespace=joining)
    finally:
        worker.close()
    assert contents(added.store) == {}


def test_a_worker_waits_for_a_member_that_just_started(launcher):
    # The members' looks make a member refuse until its first (about a second): a refusal
    # that says to retry shortly is sent again by the worker, for up to 5 s.
    a, b = launcher.cluster(2)
    both = Cluster([a.url, b.url])
    own = owned_namespaces(lambda ns: both.owner("custom", ns) == b.url, 1, "own")[0]
    b.kill()
    b.start(both.members, serving=False)
    worker = Store(",".join(both.members))
    try:
        assert worker.set("k", 1, scope="custom", namespace=own).version == 1
    finally:
        worker.close()
    assert contents(b.store) == {("custom", own, "k"): (1, 1)}


def test_a_peer_that_trickles_its_answer_never_freezes_the_looks(launcher):
    # The same review: a peer sending its answer a byte at a time kept a look waiting for
    # good (each read within the timeout), and the member's view never changed again.
    fake = socket.create_server(("127.0.0.1", 0))
    fake.settimeout(0.1)
    peer = f"http://127.0.0.1:{fake.getsockname()[1]}"
    stop = threading.Event()

    def trickle() -> None:
        held = []
        while not stop.is_set():
            try:
                conn, _ = fake.accept()
                held.append(conn)
            except TimeoutError:
                pass
            for conn in held:
                with contextlib.suppress(OSError):
                    conn.send(b"H")  # "HTTP/1.1 200 OK", one byte now and then
        for conn in held:
            conn.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    node = Node(launcher.tmp / "member", free_ports(1)[0])
    launcher.nodes.append(node)
    members = Cluster([node.url, peer])
    own = owned_namespaces(lambda ns: members.owner("custom", ns) == node.url, 1, "own")[0]
    node.start(members.members, serving=False)
    worker = Store(",".join(members.members))
    try:
        with pytest.raises(StoreUnavailableError, match=r"did not answer|not seen"):
            worker.set("k", 1, scope="custom", namespace=own)
        stop.set()
        thread.join(10)
        fake.close()  # now it refuses connections: down, which serves nothing
        node.wait_serving()
        assert worker.set("k", 1, scope="custom", namespace=own).version == 1
    finally:
        worker.close()


def test_the_looks_at_a_peer_keep_one_connection(launcher):
    # Noted in the thirty-second session: a look read the answer's headers only, so its
    # connection could not be kept and every look (one a second per member and process)
    # opened a new one. A short answer is read whole and the connection kept.
    fake = socket.create_server(("127.0.0.1", 0))
    fake.settimeout(0.1)
    peer = f"http://127.0.0.1:{fake.getsockname()[1]}"
    node = Node(launcher.tmp / "member", free_ports(1)[0])
    launcher.nodes.append(node)
    members = Cluster([node.url, peer])
    answer = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n"
        f"castore-cluster: {members.digest}\r\n\r\n" + '{"status":"ok"}'
    ).encode()
    stop = threading.Event()
    accepted: list[socket.socket] = []
    looks = 0

    def serve(conn: socket.socket) -> None:
        nonlocal looks
        conn.settimeout(0.1)
        while not stop.is_set():
            try:
                asked = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not asked:
                return
            looks += asked.count(b"GET /healthz")
            conn.sendall(answer)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = fake.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        node.start(members.members, serving=True)
        deadline = time.monotonic() + 30
        while looks < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert looks >= 5
        assert len(accepted) == 1, f"{len(accepted)} connections for {looks} looks"
    finally:
        stop.set()
        thread.join(10)
        for conn in accepted:
            conn.close()
        fake.close()


def test_a_removed_member_left_running_stops_serving(launcher):
    # The other order (SERVER.md: stop a member you remove first): the member left running
    # with the old list stops serving once it sees the others run another list.
    a, b, c = launcher.cluster(3)
    old = Cluster([a.url, b.url, c.url])
    kept = owned_namespaces(lambda ns: old.owner("custom", ns) == c.url, 1, "kept")[0]
    asked = [path for path, _ in c.settled_statuses()].count("/healthz")  # the harness's
    for node in (a, b):
        node.kill()
        node.start([a.url, b.url], serving=False)
    stale = Store(",".join(old.members))
    try:
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        refused: list[StoreUnavailableError] = []
        while not refused:  # served until c looks again, then refused
            try:
                stale.set("k", "late", scope="custom", namespace=kept)
            except StoreUnavailableError as exc:
                refused.append(exc)
            assert time.monotonic() < deadline, "the removed member kept serving"
            time.sleep(0.2)
        assert "runs another coordinator list" in str(refused[0])
        before = contents(c.store)
        for _ in range(5):
            with pytest.raises(StoreUnavailableError):
                stale.set("k", "later", scope="custom", namespace=kept)
        assert contents(c.store) == before
    finally:
        stale.close()
    # the members' looks at each other (once a second) are not in the access log
    assert [path for path, _ in c.statuses()].count("/healthz") == asked, c.statuses()


def test_a_member_restarted_without_a_cluster_refuses_a_clients_list(launcher):
    # A review's mutation (the lone server's refusal disabled) passed every test: a member
    # restarted without --cluster then took writes for keyspaces other members own.
    nodes = launcher.cluster(3)
    members = [node.url for node in nodes]
    old = Cluster(members)
    lone = nodes[1]
    elsewhere = owned_namespaces(lambda ns: old.owner("custom", ns) != lone.url, 2, "away")
    own = owned_namespaces(lambda ns: old.owner("custom", ns) == lone.url, 2, "own")
    client = Store(",".join(members))
    try:
        for ns in elsewhere + own:
            client.set("k", ns, scope="custom", namespace=ns)
    finally:
        client.close()
    before = {node.url: contents(node.store) for node in nodes}
    lone.kill()
    lone.start(None)
    listed = {MEMBERS_HEADER: str(len(members))}
    for ns in elsewhere + own:
        write = append_of("custom", ns, "k", "late", expect=0)
        for call, message in (
            ("append", write),
            ("current", RefCall(scope="custom", namespace=ns, key="k")),
        ):
            response = rpc(lone.url, call, message, old.digest, listed)
            assert response.status_code == 421, response.text
            error = response.json()["error"]
            assert (error["code"], error["cluster"], error["owner"]) == ("misdirected", [], "")
    client = Store(",".join(members))
    try:
        for ns in own:  # the library client is refused too: the lone server names no list
            with pytest.raises(StoreUnavailableError, match="coordinator list"):
                client.set("k", "late", scope="custom", namespace=ns)
    finally:
        client.close()
    assert {node.url: contents(node.store) for node in nodes} == before


# -- 4. kill -9 a coordinator under load ----------------------------------------------------


@dataclass
class Tally:
    """What one client thread was told: acknowledged, may-or-may-not, refused."""

    acked: int = 0
    maybe: int = 0
    refused: int = 0
    values: list[tuple[str, int]] = field(default_factory=list)  # acknowledged sets
    maybe_values: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def test_kill_9_and_restart_under_load_loses_and_repeats_nothing(launcher):
    nodes = launcher.cluster(3)
    members = [node.url for node in nodes]
    cluster = Cluster(members)
    victim = nodes[0]
    ns_count, ns_log = owned_namespaces(lambda ns: cluster.owner("custom", ns) == victim.url, 2)
    stop = threading.Event()
    tallies: dict[str, Tally] = {}

    def worker(name: str, op: Callable[[Store, int], Any]) -> None:
        tally = tallies[name]
        client = Store(",".join(members), lock_timeout=30)
        i = 0
        try:
            while not stop.is_set():
                i += 1
                try:
                    result = op(client, i)
                except StoreUnavailableError:  # may or may not have been applied
                    tally.maybe += 1
                    tally.maybe_values.append(f"{name}-{i}")
                except (ConflictError, LockTimeoutError):  # refused: nothing written
                    tally.refused += 1
                else:
                    tally.acked += 1
                    tally.values.append((f"{name}-{i}", result.version))
        except BaseException as exc:  # noqa: BLE001  # reported by the test
            tally.errors.append(exc)
        finally:
            client.close()

    def incr(client: Store, i: int) -> Any:
        return client.incr("hits", scope="custom", namespace=ns_count)

    def update(client: Store, i: int) -> Any:
        return client.update("cas", lambda v: (v or 0) + 1, scope="custom", namespace=ns_count)

    def setter(name: str) -> Callable[[Store, int], Any]:
        return lambda client, i: client.set("log", f"{name}-{i}", scope="custom", namespace=ns_log)

    specs: list[tuple[str, Callable[[Store, int], Any]]] = [
        ("incr-0", incr),
        ("incr-1", incr),
        ("cas-0", update),
        ("cas-1", update),
        ("set-0", setter("set-0")),
        ("set-1", setter("set-1")),
    ]
    threads = []
    for name, op in specs:
        tallies[name] = Tally()
        threads.append(threading.Thread(target=worker, args=(name, op)))

    def done() -> int:
        return sum(t.acked + t.maybe + t.refused for t in tallies.values())

    def forty_more() -> Callable[[], bool]:
        mark = done()
        return lambda: done() >= mark + 40

    for thread in threads:
        thread.start()
    try:
        for _ in range(3):  # three times: killed under load, restarted on its port and directory
            wait_for(forty_more(), "before the kill")
            victim.kill()
            time.sleep(0.3)  # the clients meet a refused connection, and retry
            victim.start(members)
            wait_for(forty_more(), "after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert [exc for t in tallies.values() for exc in t.errors] == []
    assert victim.runs == 4

    def totals(prefix: str) -> tuple[int, int]:
        mine = [t for name, t in tallies.items() if name.startswith(prefix)]
        return sum(t.acked for t in mine), sum(t.maybe for t in mine)

    for key, prefix in (("hits", "incr"), ("cas", "cas")):
        acked, maybe = totals(prefix)
        versions = every_version(victim.store, "custom", ns_count, key)
        final = versions[-1][1]
        assert acked <= final <= acked + maybe, (key, acked, maybe, final)
        if maybe == 0:
            assert final == acked, key
        # each increment wrote one version, counting up by one: none lost, none applied twice
        assert versions == [(n, n) for n in range(1, final + 1)], key
    log = every_version(victim.store, "custom", ns_log, "log")
    seen: dict[str, list[int]] = {}
    for version, value in log:
        seen.setdefault(value, []).append(version)
    acked_sets = [(value, version) for t in tallies.values() for value, version in t.values]
    assert acked_sets
    for value, version in acked_sets:
        if value.startswith("set-"):
            assert seen.get(value) == [version], value  # present once, where it was acknowledged
    maybe_sets = {
        v for name, t in tallies.items() if name.startswith("set") for v in t.maybe_values
    }
    acked_values = {value for value, _ in acked_sets if value.startswith("set-")}
    assert set(seen) <= acked_values | maybe_sets  # nothing that no client sent
    assert all(len(versions) == 1 for versions in seen.values())
    assert [version for version, _ in log] == list(range(1, len(log) + 1))
    for node in nodes[1:]:  # the victim's keyspaces are nowhere else
        assert all(ref[1] not in (ns_count, ns_log) for ref in contents(node.store))


# -- 5. a retried append is applied once; a stale one writes nothing ------------------------


def test_a_retried_append_is_applied_once_and_a_stale_one_writes_nothing(launcher):
    node = launcher.lone()
    scope, namespace, key = "custom", "retry", "k"
    local = Store(node.store)
    ref = local.ref(key, scope, namespace)

    def post(message: Append) -> AppendReply:
        response = rpc(node.url, "append", message, digest="not-a-cluster")  # a lone server
        assert response.status_code == 200, response.text
        return msgspec.msgpack.decode(response.content, type=AppendReply)

    def versions() -> list[Entry]:
        return [entry for entry, _ in local.backend.iter_versions(ref)]

    try:
        # the first version of a key, then a resend of it
        first = append_of(scope, namespace, key, {"n": 1}, expect=0)
        one = post(first)
        assert (one.status, one.previous, [e.version for e in one.written]) == (WRITTEN, None, [1])
        again = post(msgspec.structs.replace(first, retry=True))
        assert (again.status, again.previous, again.written) == (APPLIED, None, one.written)
        assert versions() == one.written

        # a later version, sent twice: written once, the resend answers what it wrote
        second = append_of(scope, namespace, key, {"n": 2}, expect=one.written[0])
        two = post(second)
        assert (two.status, two.previous) == (WRITTEN, one.written[0])
        resend = msgspec.structs.replace(second, retry=True)
        for _ in range(2):
            applied = post(resend)
            assert (applied.status, applied.previous, applied.written) == (
                APPLIED,
                one.written[0],
                two.written,
            )
        assert versions() == [*one.written, *two.written]
        assert two.written[0].audit.request_id == second.request_id

        # a resend once another write came on top: still found, still not written again
        third = post(append_of(scope, namespace, key, {"n": 3}, expect=two.written[0]))
        assert third.status == WRITTEN
        assert post(resend).written == two.written
        assert len(versions()) == 3

        # a stale expect: the newest entry and its value, nothing written
        newest = local.backend.current(ref)
        for stale in (
            append_of(scope, namespace, key, {"n": "late"}, expect=two.written[0]),
            append_of(scope, namespace, key, {"n": "late"}, expect=0),
            # version 3's number, but not its time and hash (another history's version 3)
            msgspec.structs.replace(
                append_of(scope, namespace, key, {"n": "late"}, expect=third.written[0]),
                expect_hash=one.written[0].hash,
            ),
            append_of(scope, namespace, key, {"n": "late"}, expect=one.written[0], retry=True),
            # the same request id as a version that was written, but not marked a retry
            second,
        ):
            reply = post(stale)
            assert (reply.status, reply.previous) == (STALE, newest.entry)
            assert reply.written == []
        assert len(versions()) == 3
        assert local.get(key, scope=scope, namespace=namespace).value == {"n": 3}

        # a retry whose first attempt never landed is written (once)
        lost = append_of(scope, namespace, key, {"n": 4}, expect=third.written[0], retry=True)
        assert post(lost).status == WRITTEN
        assert post(lost).status == APPLIED
        assert [e.version for e in versions()] == [1, 2, 3, 4]

        # found by a review: the id of a written request, resent with another value (a
        # buggy or hostile client), was answered "applied" with the other write's version
        other = msgspec.structs.replace(
            append_of(scope, namespace, key, {"n": "other"}, expect=third.written[0]),
            request_id=lost.request_id,
            retry=True,
        )
        response = rpc(node.url, "append", other, digest="not-a-cluster")
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["exception"]) == ("invalid_value", "InvalidValueError")
        assert "used by another write" in error["message"]
        assert lost.request_id not in response.text  # a client's id is not echoed
        assert [e.version for e in versions()] == [1, 2, 3, 4]
        assert [json.loads(v or b"null") for _, v in local.backend.iter_versions(ref)] == [
            {"n": 1},
            {"n": 2},
            {"n": 3},
            {"n": 4},
        ]
        current = rpc(node.url, "current", RefCall(scope=scope, namespace=namespace, key=key))
        assert msgspec.msgpack.decode(current.content, type=EntryValue).entry == versions()[-1]
    finally:
        local.close()


# -- 6. hostile input: the documented error, nothing written, the server stays up -----------


def oversized(port: int, path: str, limit: int, *, chunked: bool, pause: float = 0.0) -> None:
    """A body over ``limit``: announced by Content-Length, or streamed in chunks without it."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        if not chunked:
            conn.sendall(f"{head}Content-Length: {limit + 1}\r\n\r\n".encode())
        else:
            conn.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            piece = b"\x00" * (limit // 16 + 1)
            for _ in range(16):  # 16 pieces are just over the limit
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(pause)
        status, answer = read_response(conn)
    assert (status, json.loads(answer)["error"]["code"]) == (413, "body_too_large"), answer


def test_hostile_input_is_refused_with_its_code_and_writes_nothing(launcher, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    node = launcher.lone("--token-file", str(token_file))
    enc = msgspec.msgpack.encode
    good = append_of("custom", "n", "k", {"a": 1}, expect=0)
    good_version = good.versions[0]
    as_dict: dict[str, Any] = msgspec.msgpack.decode(enc(good))

    def with_version(**changes: Any) -> Append:
        return msgspec.structs.replace(
            good, versions=[msgspec.structs.replace(good_version, **changes)]
        )

    def digest_of(raw: bytes) -> str:
        return hashlib.sha256(raw).hexdigest()

    # (call, body, status, code, a fragment of the message)
    backend_cases: list[tuple[str, bytes | Any, int, str, str]] = [
        ("append", b"\xc1", 400, "bad_request", "bad request body"),
        ("append", b"", 400, "bad_request", "bad request body"),
        ("append", b"\x93\x01\x02", 400, "bad_request", "bad request body"),  # an array
        ("append", enc({**as_dict, "expect": "0"}), 400, "bad_request", "$.expect"),
        ("append", enc({**as_dict, "versions": "x"}), 400, "bad_request", "$.versions"),
        ("append", enc({**as_dict, "bogus": 1}), 400, "bad_request", "unknown field `bogus`"),
        (
            "append",
            enc({k: v for k, v in as_dict.items() if k != "key"}),
            400,
            "bad_request",
            "key",
        ),
        ("current", enc({"scope": 1, "namespace": "n", "key": "k"}), 400, "bad_request", "$.scope"),
        (
            "current",
            enc({"scope": "custom", "namespace": "n", "key": "k", "x": 1}),
            400,
            "bad_request",
            "`x`",
        ),
        ("append", with_version(digest_hex="0" * 64), 400, "invalid_value", "does not hash"),
        (
            "append",
            with_version(normalized=b'{ "a": 1 }', digest_hex=digest_of(b'{ "a": 1 }')),
            400,
            "invalid_value",
            "not normalized",
        ),
        (
            "append",
            with_version(normalized=b'{"b":1,"a":2}', digest_hex=digest_of(b'{"b":1,"a":2}')),
            400,
            "invalid_value",
            "not normalized",
        ),
        (
            "append",
            with_version(normalized=b"{", digest_hex=digest_of(b"{")),
            400,
            "invalid_value",
            "",
        ),
        ("append", with_version(op="frobnicate"), 400, "invalid_value", "unknown operation"),
        ("append", with_version(normalized=None), 400, "invalid_value", "without a value"),
        # an append of no versions names an entry to make durable (test_durable_answers.py):
        # naming none, it would only make the key's directories
        ("append", msgspec.structs.replace(good, versions=[]), 400, "invalid_value", "nothing"),
        # what an import's lines may not do either (castore.transfer), and numbers that fit
        ("append", with_version(version=2**64 - 1), 400, "invalid_value", "out of range"),
        ("append", with_version(time_ns=2**63), 400, "invalid_value", "out of range"),
        ("append", with_version(damaged_from=1), 400, "invalid_value", "damaged range"),
        (
            "append",
            with_version(op="delete", digest_hex=""),
            400,
            "invalid_value",
            "a delete carries no value",
        ),
        (
            "append",
            with_version(op="damaged"),  # with a value
            400,
            "invalid_value",
            "with no value",
        ),
        (
            "append",
            msgspec.structs.replace(good, request_id=""),
            400,
            "invalid_value",
            "request id",
        ),
        ("append", msgspec.structs.replace(good, scope="bogus"), 400, "invalid_ref", ""),
        ("append", msgspec.structs.replace(good, namespace=".."), 400, "invalid_ref", ""),
        ("append", msgspec.structs.replace(good, namespace="a/b"), 400, "invalid_ref", ""),
        ("namespaces", enc({"scope": "../refs"}), 400, "invalid_ref", ""),
        # Was (the time review): grace up to 2**63 s passed, where Store.gc refuses
        # past MAX_SECONDS (292 years): the same call answered two ways.
        (
            "collect_garbage",
            GCCall(grace_seconds=1e18, dry_run=True),
            400,
            "invalid_value",
            "grace_seconds must be from 0 to 9223372036 seconds (got 1e+18)",
        ),
        ("collect_garbage", GCCall(grace_seconds=-1.0), 400, "invalid_value", "grace_seconds"),
        (
            "remember",
            NamespaceCall(scope="custom", namespace="n", keys=["../x"]),
            400,
            "invalid_ref",
            "",
        ),
    ]
    for key in ("../x", "a/../../b", "/etc/passwd", "a/", "a\\b", "a//b", ".", ""):
        backend_cases.append(
            ("append", msgspec.structs.replace(good, key=key), 400, "invalid_ref", "")
        )
        backend_cases.append(
            ("current", RefCall(scope="custom", namespace="n", key=key), 400, "invalid_ref", "")
        )
    for call, message, status, code, fragment in backend_cases:
        response = rpc(node.url, call, message, headers=AUTH)
        assert_error(response, status, code, fragment)
        if code in ("invalid_ref", "invalid_value"):  # named, so that the client raises it
            error = response.json()["error"]
            assert error["exception"] in ("InvalidRefError", "InvalidValueError"), error

    # the JSON API: (body, status, code, fragment)
    json_cases: list[tuple[bytes, int, str, str]] = [
        (b"{not json", 400, "bad_request", "malformed"),
        (b"[1]", 400, "bad_request", "Expected `object`"),
        (b'{"key":"k","dag":"d","value":1,"bogus":1}', 400, "bad_request", "unknown field"),
        (b'{"key":1,"dag":"d","value":1}', 400, "bad_request", "$.key"),
        (b'{"key":"k","dag":"d","value":1,"expected_version":"1"}', 400, "bad_request", ""),
        (b'{"key":"k","dag":"d"}', 400, "bad_request", "value"),
        (b'{"key":"k","scope":"custom","namespace":"..","value":1}', 400, "invalid_ref", ""),
        (b'{"key":"k","dag":"d","value":1,"scope":"nope"}', 400, "invalid_ref", ""),
    ]
    for key in ("../x", "a/../../b", "/abs", "a/./b"):
        json_cases.append(
            (
                json.dumps({"key": key, "dag": "d", "value": 1}).encode(),
                400,
                "invalid_ref",
                "invalid key",
            )
        )
    big = b'{"key":"k","dag":"d","value":"' + b"x" * (1 << 20) + b'"}'
    json_cases.append((big, 413, "value_too_large", ""))
    for data, status, code, fragment in json_cases:
        response = httpx.post(f"{node.url}/v1/set", content=data, headers=AUTH, timeout=30)
        assert_error(response, status, code, fragment)

    # oversized bodies: by Content-Length before any of it is read, and while streamed
    oversized(node.port, "/v1/set", MAX_BODY_BYTES, chunked=False)
    oversized(node.port, "/v1/set", MAX_BODY_BYTES, chunked=True, pause=0.02)
    oversized(node.port, "/v1/backend/append", BACKEND_BODY_BYTES, chunked=False)
    oversized(node.port, "/v1/backend/append", BACKEND_BODY_BYTES, chunked=True)

    # no token, a wrong one, the wrong scheme: 401 before anything else
    data = b'{"key":"k","dag":"d","value":1}'
    for headers in (
        {},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        response = httpx.post(f"{node.url}/v1/set", content=data, headers=headers, timeout=30)
        assert_error(response, 401, "unauthorized")
        assert_error(rpc(node.url, "append", good, headers=headers), 401, "unauthorized")

    assert httpx.get(f"{node.url}/healthz", timeout=30).status_code == 200
    assert node.proc is not None
    assert node.proc.poll() is None
    assert contents(node.store) == {}
    stray = [p for p in (tmp_path / "etc", pathlib.Path(node.store).parent / "etc") if p.exists()]
    assert stray == []

    # the controls: the same requests, well formed, are written
    assert rpc(node.url, "append", good, headers=AUTH).status_code == 200
    response = httpx.post(f"{node.url}/v1/set", content=data, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    # a NUL is a valid key character (the library's rules): stored inside the store
    nul = msgspec.structs.replace(good, key="a\x00b", request_id=secrets.token_hex(16))
    nul = msgspec.structs.replace(nul, versions=[wire_set({"a": 1}, "nul-1")])
    assert rpc(node.url, "append", nul, headers=AUTH).status_code == 200
    assert contents(node.store) == {
        ("custom", "n", "k"): (1, {"a": 1}),
        ("custom", "n", "a\x00b"): (1, {"a": 1}),
        ("dag", "d", "k"): (1, 1),
    }
    store_root = pathlib.Path(node.store).resolve()
    outside = [
        p for p in tmp_path.rglob("*") if p.is_file() and store_root not in p.resolve().parents
    ]
    assert all(p.name in ("token", "access.log") or p.name.startswith("stderr") for p in outside), (
        outside
    )


@pytest.mark.parametrize(
    ("audit", "explicit", "said"),
    [
        (Audit(pid=-1), False, "pid -1 is out of range"),
        (Audit(pid=2**64 - 1), False, "out of range"),
        (Audit(rollback_from=-5), False, "rollback_from -5 is out of range"),
        (Audit(reason="r" * 5_000_000), True, "holds 5000000 characters"),
        (Audit(pid=-1), True, "pid -1 is out of range"),
    ],
    ids=["pid", "pid-64-bit", "rollback-from", "explicit-reason", "explicit-pid"],
)
def test_a_worker_cannot_write_an_audit_record_no_import_could_take(
    launcher, audit, explicit, said
):
    # Found by a review: pid and rollback_from were never range-checked, and an import's
    # append (explicit versions) had no audit check at all: 200, written, and the
    # keyspace's export was then refused by import, so it could not be moved.
    (node,) = launcher.cluster(1)
    digest = Cluster([node.url]).digest
    write = append_of("custom", "orders", "k", {"v": 1}, expect=0)
    bad = msgspec.structs.replace(write.versions[0], audit=audit)
    if explicit:
        bad = msgspec.structs.replace(bad, version=1, time_ns=1, created_ns=1)
    reply = rpc(node.url, "append", msgspec.structs.replace(write, versions=[bad]), digest)
    assert reply.status_code == 400, reply.text
    assert said in reply.json()["error"]["message"]
    assert contents(node.store) == {}
    assert rpc(node.url, "append", write, digest).status_code == 200


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"time_ns": 0}, "comes with its time"),
        ({"op": "damaged", "normalized": None, "digest_hex": "zz"}, "64 lowercase hex"),
    ],
    ids=["time-0", "damaged-digest"],
)
def test_a_worker_import_append_is_checked_as_an_import_line(launcher, change, said):
    # Found by a review: a time 0 was stamped "now" (times then went back), and a
    # damaged entry's digest was never read: gc and stats then failed on it for good.
    (node,) = launcher.cluster(1)
    digest = Cluster([node.url]).digest
    write = append_of("custom", "orders", "k", {"v": 1}, expect=0)
    explicit = msgspec.structs.replace(write.versions[0], version=3, time_ns=5, created_ns=5)
    bad = msgspec.structs.replace(explicit, **change)
    reply = rpc(node.url, "append", msgspec.structs.replace(write, versions=[bad]), digest)
    assert reply.status_code == 400, reply.text
    assert said in reply.json()["error"]["message"]
    assert contents(node.store) == {}


def test_an_append_gives_versions_and_times_for_all_its_versions_or_none(launcher):
    # Found by a review (thirty-third session): a version without a time (stamped now)
    # followed by one with version 3 and time 6 ns was written: the key's export then
    # failed to import ("time_ns goes back"), so the keyspace could not be moved.
    (node,) = launcher.cluster(1)
    digest = Cluster([node.url]).digest
    write = append_of("custom", "orders", "k", {"v": 1}, expect=0)
    explicit = msgspec.structs.replace(write.versions[0], version=3, time_ns=6, created_ns=6)
    mixed = msgspec.structs.replace(write, versions=[write.versions[0], explicit])
    reply = rpc(node.url, "append", mixed, digest)
    assert reply.status_code == 400, reply.text
    assert "is given for some versions of an append, not all" in reply.json()["error"]["message"]
    assert contents(node.store) == {}


def test_a_worker_cannot_write_audit_text_no_export_line_could_hold(launcher):
    # Found by a review: a backend append with a 5 MiB reason was written; the
    # keyspace's export then had a line import refuses, so it could not be moved.
    (node,) = launcher.cluster(1)
    digest = Cluster([node.url]).digest
    write = append_of("custom", "orders", "k", {"v": 1}, expect=0)
    long = msgspec.structs.replace(write.versions[0], audit=Audit(reason="r" * 5_000_000))
    reply = rpc(node.url, "append", msgspec.structs.replace(write, versions=[long]), digest)
    assert reply.status_code == 400, reply.text
    assert "holds 5000000 characters" in reply.json()["error"]["message"]
    assert contents(node.store) == {}
    assert rpc(node.url, "append", write, digest).status_code == 200


def test_a_keyspace_moved_as_documented_keeps_its_removed_keys_versions(launcher, tmp_path):
    # Found by a review: after the move (SERVER.md, "Moving a keyspace"), the former
    # owner's record of a key compaction removed was still used under the new list:
    # the import into the empty new owner was refused ("already exist"), and with
    # --on-conflict skip the next set of that key gave version 1 again.
    a, b, c = launcher.cluster(3)
    old, new = [a.url, b.url], [a.url, b.url, c.url]
    namespace = next(
        f"n{i}"
        for i in range(100_000)
        if Cluster(old).owner("dag", f"n{i}") == a.url
        and Cluster(new).owner("dag", f"n{i}") == c.url
    )
    for node in (a, b, c):
        node.kill()
    for node in (a, b):
        node.start(old)
    before = Store(",".join(old), dag=namespace)
    before.set("k", 1)
    before.set("gone", 1)
    before.delete("gone")
    Store(a.store).compact(keep_within_seconds=0, namespace=namespace, prefix="gone")
    lines = list(export_lines(before, scope="dag", namespace=namespace))
    for node in (a, b):
        node.kill()
    for node in (a, b, c):
        node.start(new)
    after = Store(",".join(new), dag=namespace)
    assert list(export_lines(after, scope="dag", namespace=namespace))[1:-1] == []
    local = Store(tmp_path / "oracle", dag=namespace)
    for store in (after, local):
        report = import_lines(store, lambda: iter(lines))
        assert (report.refs, report.versions) == (2, 2)
        assert store.set("gone", 2).version == 3
    assert Store(c.store, dag=namespace).get("gone").version == 3
