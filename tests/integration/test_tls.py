"""``castore serve`` behind TLS-terminating proxies, as docs/SERVER.md prescribes off one machine.

Workers and members reach servers at ``https://`` URLs through a forwarder
(:mod:`tests.integration.tlsproxy`) whose certificate a private CA signed:
the one ``$SSL_CERT_FILE`` names. Oracle: the same calls on a lone
``http://`` server, and docs/SERVER.md ("Security and limits", "A cluster").
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from castore import Store, StoreUnavailableError
from castore.cluster import Cluster
from castore.server.peers import INTERVAL
from tests.integration.test_cluster import START_TIMEOUT, Launcher, Node, free_ports
from tests.integration.tlsproxy import CA, TlsProxy

TOKEN = "tls-test-token-0123456789abcdef"  # noqa: S105  # a test token


@pytest.fixture
def proxies() -> Iterator[list[TlsProxy]]:
    """The forwarders a test starts; closed at teardown."""
    started: list[TlsProxy] = []
    yield started
    for proxy in started:
        proxy.close()


def test_a_worker_reaches_a_server_behind_tls_with_the_ca_of_ssl_cert_file(
    launcher: Launcher, proxies: list[TlsProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = launcher.lone()
    proxies.append(proxy := TlsProxy(node.port))
    monkeypatch.setenv("SSL_CERT_FILE", CA)
    store = Store(proxy.url, dag="d")
    try:
        assert store.set("k", {"a": 1}).version == 1
        assert store.get("k").value == {"a": 1}
    finally:
        store.close()


def test_an_untrusted_certificate_is_named_at_once_without_the_token(
    launcher: Launcher, proxies: list[TlsProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by a review: "cannot connect (ConnectError, 8 tries)" after 5 s of retries,
    # the same words as a server that is down; nothing said the certificate was refused.
    node = launcher.lone()
    proxies.append(proxy := TlsProxy(node.port))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("CASTORE_TOKEN", TOKEN)
    store = Store(proxy.url, dag="d")
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            store.get("k")
    finally:
        store.close()
    message = str(caught.value)
    assert "certificate" in message, message
    assert "$SSL_CERT_FILE" in message, message
    assert "tries" not in message, message  # not retried: the next try meets the same one
    assert TOKEN not in message


def _looked(node: Node) -> dict[str, object]:
    """``/healthz`` of a member, once its look at the others found it them all running."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        health: dict[str, object] = httpx.get(f"{node.url}/healthz", timeout=30).json()
        reason = str(health.get("reason", ""))
        assert "CERTIFICATE_VERIFY_FAILED" not in reason, health
        if health.get("serving") or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def _members_behind_proxies(
    launcher: Launcher, proxies: list[TlsProxy], name: str
) -> tuple[list[Node], str]:
    """Two members, each behind a TLS proxy and listed by its URL, serving: (nodes, list)."""
    nodes = [Node(launcher.tmp / f"{name}{i}", port) for i, port in enumerate(free_ports(2))]
    launcher.nodes += nodes
    proxies += [TlsProxy(node.port) for node in nodes]
    members = ",".join(proxy.url for proxy in proxies)
    for node, proxy in zip(nodes, proxies, strict=True):
        node.env["SSL_CERT_FILE"] = CA
        node.launch(None, "--cluster", members, "--self", proxy.url)
    for node in nodes:
        assert "warning" in node.wait_listening()  # --self names the proxy's port
    for node in nodes:
        assert _looked(node).get("serving") is True
    return nodes, members


def test_members_behind_tls_proxies_trust_the_ca_of_ssl_cert_file(
    launcher: Launcher, proxies: list[TlsProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by a review: a member's looks at the others (castore/server/peers.py) ran
    # with trust_env=False, which drops $SSL_CERT_FILE too: behind proxies whose
    # certificates a private CA signed, no member ever served ("certificate verify
    # failed"), whatever the members' environment said.
    _, members = _members_behind_proxies(launcher, proxies, "tls")
    monkeypatch.setenv("SSL_CERT_FILE", CA)
    store = Store(members, dag="d")
    try:
        for namespace in ("a", "b", "c", "d"):
            assert store.set("k", namespace, namespace=namespace).version == 1
            assert store.get("k", namespace=namespace).value == namespace
    finally:
        store.close()


def test_a_member_down_behind_its_proxy_stops_no_other_member(
    launcher: Launcher, proxies: list[TlsProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by a review: a stopped member's proxy answers its peers' looks with 502
    # (no digest), read as "runs no member list": every other member refused its own
    # keyspaces while any member was down, where members reached directly go on
    # serving theirs (a refused connection says a member is down: docs/SERVER.md).
    nodes, members = _members_behind_proxies(launcher, proxies, "down")
    nodes[1].kill()
    with httpx.Client(verify=False) as client:  # noqa: S501  # the proxy's own answer
        assert client.get(f"{proxies[1].url}/healthz").status_code == 502
    time.sleep(3 * INTERVAL)  # the looks since met the proxy's 502
    health = httpx.get(f"{nodes[0].url}/healthz", timeout=30).json()
    assert health.get("serving") is True, health
    cluster = Cluster([proxy.url for proxy in proxies])
    owned = [ns for ns in "abcdefgh" if cluster.owner("dag", ns) == proxies[0].url]
    assert 0 < len(owned) < 8
    monkeypatch.setenv("SSL_CERT_FILE", CA)
    store = Store(members, dag="d")
    try:
        for namespace in owned:
            assert store.set("k", namespace, namespace=namespace).version == 1
        stopped = next(ns for ns in "abcdefgh" if ns not in owned)
        with pytest.raises(StoreUnavailableError):  # until it is back (no failover)
            store.set("k", stopped, namespace=stopped)
    finally:
        store.close()
