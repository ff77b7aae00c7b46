"""What an ``http://`` store's errors show of a server's URL: scheme, host and port only."""

from __future__ import annotations

import ssl

import httpx
import pytest

from castore import StoreUnavailableError
from castore.remote.failures import (
    BadGateway,
    GatewayTimeout,
    connection_lost,
    distrust,
    failure,
    no_answer,
    origin,
    unavailable,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "http://[::1]:7070/v1/backend/current",
            "http://[::1]:7070",
        ),  # a review: "http://::1:7070"
        ("https://[2001:db8::7]/v1/backend/append", "https://[2001:db8::7]"),
        ("http://user:secret@coord:7070/v1/backend/keys?x=1", "http://coord:7070"),
        ("http://127.0.0.1:7070", "http://127.0.0.1:7070"),
    ],
)
def test_an_error_shows_the_servers_origin_as_written(url, shown):
    assert origin(url) == shown
    assert str(unavailable(url, "down")) == f"castore server {shown}: down"
    assert (
        str(failure(url, 502, b"<html>"))
        == f"castore server {shown}: HTTP 502 without an error body"
    )


URL = "http://127.0.0.1:7070"
_REQUEST = httpx.Request("POST", f"{URL}/v1/backend/append")


@pytest.mark.parametrize(
    ("exc", "times", "said"),
    [
        (httpx.ReadTimeout("t", request=_REQUEST), 1, "no answer within 30 s"),
        (httpx.ReadTimeout("t", request=_REQUEST), 2, "no answer within 30 s, twice"),
        (GatewayTimeout("t", request=_REQUEST), 1, "no answer in time (a proxy answered HTTP 504)"),
        (
            GatewayTimeout("t", request=_REQUEST),
            2,
            "no answer in time (a proxy answered HTTP 504, twice)",
        ),
    ],
)
def test_no_answer_names_whose_timeout_it_was_and_how_often(exc, times, said):
    message = no_answer("append", exc, 30.0, times, writes=False)
    assert message == f"the server took append and sent {said}"


def test_a_proxys_502_on_every_try_is_named_with_the_tries():
    exc = BadGateway("a proxy answered HTTP 502", request=_REQUEST)
    message = str(connection_lost(URL, "append", exc, True, None, 8))
    assert message.endswith(": a proxy answered HTTP 502 on each of 8 tries"), message
    assert "may or may not have been applied" in message


def _refused(reason: str | None, verify: str | None) -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")
    err.reason, err.verify_message = reason, verify  # type: ignore[assignment]
    return err


def _chained(inner: BaseException, how: str) -> httpx.ConnectError:
    """``inner`` as the ``__cause__`` alone, or the ``__context__`` alone, of the error."""
    outer = httpx.ConnectError("tls")
    setattr(outer, f"__{how}__", inner)
    return outer


@pytest.mark.parametrize("how", ["cause", "context"])
def test_a_refused_certificate_is_found_by_cause_or_context_and_named(how):
    exc = _chained(_refused("CERTIFICATE_VERIFY_FAILED", "self-signed certificate"), how)
    with pytest.raises(StoreUnavailableError, match=r"not trusted \(self-signed certificate\)"):
        distrust(URL, exc)
    exc = _chained(_refused("CERTIFICATE_VERIFY_FAILED", None), how)
    with pytest.raises(StoreUnavailableError, match=r"not trusted \(CERTIFICATE_VERIFY_FAILED\)"):
        distrust(URL, exc)


def test_another_tls_failure_is_no_refused_certificate():
    distrust(URL, _chained(ssl.SSLError(1, "handshake"), "cause"))  # returns: retried as before
