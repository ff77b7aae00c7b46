"""A certificate refused after a write's answer was lost still says the write may be applied."""

from __future__ import annotations

import ssl

import httpx
import msgspec
import pytest

from castore import Store, StoreUnavailableError
from castore.remote import transport
from castore.wire import EntryValue


def test_a_certificate_refused_after_a_502_to_a_write_says_it_may_have_been_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by a review: the append's first try got a proxy's 502 (the server may have
    # applied it: tests/integration/test_http_gateways.py), the next met a certificate
    # not trusted (a proxy restarted with another one), and the error said only that,
    # not "may or may not have been applied" (docs/SERVER.md, Workers).
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        calls.append(name)
        if name == "append" and calls.count("append") == 1:
            return httpx.Response(502, content=b"<html>502 Bad Gateway</html>")
        if name == "append":
            refused = ssl.SSLCertVerificationError(1, "certificate verify failed")
            refused.verify_message = "unable to get local issuer certificate"
            raise httpx.ConnectError("certificate verify failed") from refused
        return httpx.Response(200, content=msgspec.msgpack.encode(EntryValue(None, None)))

    def mocked(self: transport.Transport) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(transport=httpx.MockTransport(handler))
        return self._client

    monkeypatch.setattr(transport.Transport, "_http", mocked)
    store = Store("http://127.0.0.1:9", dag="d")
    try:
        with pytest.raises(StoreUnavailableError, match="not trusted") as caught:
            store.set("k", 1)
    finally:
        store.close()
    assert "may or may not have been applied" in str(caught.value)
    assert calls == ["current", "append", "append"]
