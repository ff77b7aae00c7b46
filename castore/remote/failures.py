"""What an ``http://`` store raises when a call fails: error bodies back into exceptions.

An error body names the exception the server's store call raised
(:func:`castore.wire.exception_of`); anything else a server, or whatever stands
between, answers is :class:`~castore.errors.StoreUnavailableError`, naming the
server by ``scheme://host:port`` only. Neither the token nor a value ever
appears in an error.
"""

from __future__ import annotations

import errno
import ssl
from typing import Any, Final

import httpx
import msgspec

from castore.errors import CastoreError, StoreUnavailableError
from castore.wire import WireError, exception_of

__all__ = [
    "MAYBE",
    "NOT_SENT",
    "BadGateway",
    "GatewayTimeout",
    "connection_lost",
    "distrust",
    "failure",
    "gateway",
    "no_answer",
    "origin",
    "unavailable",
]

# Said of a write whose outcome is not known: an attempt may have been applied.
MAYBE: Final = " (it may or may not have been applied)"
NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # nothing sent


class BadGateway(httpx.ReadError):
    """A proxy's 502: its connection to the server failed, maybe after the request went."""


class GatewayTimeout(httpx.ReadTimeout):
    """A proxy's 504: the server sent it no answer in time (it may still apply a write)."""


def gateway(response: httpx.Response) -> None:
    """Raise a 502 or 504 (a proxy's: castore answers neither) as the answer lost it is.

    So a proxy in between changes nothing (docs/SERVER.md, "Behind a TLS proxy"): a 502
    is a connection lost (a call safe to send again is sent again, an append marked as a
    retry), a 504 the read timeout (a write is not sent again: maybe applied).
    """
    if response.status_code == 502:
        raise BadGateway("a proxy answered HTTP 502", request=response.request)
    if response.status_code == 504:
        raise GatewayTimeout("a proxy answered HTTP 504", request=response.request)


def no_answer(
    name: str, exc: httpx.HTTPError, read_timeout: float, times: int, writes: bool
) -> str:
    """What went wrong with a call that met ``times`` read timeouts (its own or a proxy's 504)."""
    waited = f"within {read_timeout:g} s" + ", twice" * (times > 1)
    if isinstance(exc, GatewayTimeout):  # the proxy's timeout, which the worker cannot know
        waited = "in time (a proxy answered HTTP 504" + ", twice" * (times > 1) + ")"
    maybe = f"{MAYBE}; read the key before writing it again" * writes
    return f"the server took {name} and sent no answer {waited}{maybe}"


# What answers such a status without castore's error body (castore's own 413 has one).
_BETWEEN: Final = {
    413: (
        ": a proxy in between refused the request's size (nothing was applied; nginx:"
        " client_max_body_size, docs/SERVER.md, Behind a TLS proxy)"
    ),
}


class _Body(msgspec.Struct, frozen=True):
    error: WireError


def failure(url: Any, status: int, content: bytes, *, token_sent: bool = True) -> Exception:
    """The exception an error answer stands for (``token_sent``: the request carried one)."""
    try:
        error = msgspec.json.decode(content, type=_Body).error
    except (msgspec.DecodeError, RecursionError):  # msgspec recurses per level of nesting
        return unavailable(url, f"HTTP {status} without an error body{_BETWEEN.get(status, '')}")
    exc = exception_of(error)
    if exc is not None:
        return exc
    if error.code == "io_error":
        number = getattr(errno, error.errno, None) if error.errno.startswith("E") else None
        where = f"castore server {origin(url)}: {error.message}"
        return OSError(number, where) if isinstance(number, int) else OSError(where)
    if error.code == "unauthorized" and not token_sent:
        return unavailable(url, "the server needs a token: $CASTORE_TOKEN is not set")
    if error.code == "unauthorized":
        return unavailable(url, "the server refused the token ($CASTORE_TOKEN)")
    return unavailable(url, f"{error.code}: {error.message}")


def unavailable(url: Any, what: str) -> CastoreError:
    """StoreUnavailableError: ``what`` went wrong with the server at ``url``."""
    return StoreUnavailableError(f"castore server {origin(url)}: {what}")


def origin(url: Any) -> str:
    """``scheme://host:port`` of a URL: what an error may show of it."""
    parsed = httpx.URL(str(url))
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host  # IPv6, as written
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}"


def distrust(url: str, exc: BaseException, maybe: str = "") -> None:
    """StoreUnavailableError, raised, if ``exc`` is the server's TLS certificate refused.

    Not to be retried: every try meets the same certificate (retries hid the reason behind
    "cannot connect", the words of a server that is down). ``maybe``: :data:`MAYBE` for a
    write an earlier try of which lost its answer (it may have been applied).
    """
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, ssl.SSLCertVerificationError):
        seen = seen.__cause__ or seen.__context__
    if seen is not None:
        reason = seen.verify_message or seen.reason or "certificate verify failed"
        raise unavailable(
            url,
            f"its TLS certificate is not trusted ({reason}): give the CA that signed it in"
            f" $SSL_CERT_FILE (docs/SERVER.md, Behind a TLS proxy){maybe}",
        ) from None


def connection_lost(
    url: str, name: str, exc: httpx.HTTPError, write_sent: bool, proxy: str | None, attempts: int
) -> CastoreError:
    """The error of a call whose connection failed (on each of its ``attempts``, if never sent)."""
    reason, maybe = type(exc).__name__, MAYBE * write_sent
    if isinstance(exc, BadGateway):
        reason = f"{exc} on each of {attempts} tries"
    if isinstance(exc, NOT_SENT):  # through a proxy, the connection that failed was its
        to = f" to the proxy {proxy} names" if proxy else ""
        return unavailable(url, f"cannot connect{to} ({reason}, {attempts} tries){maybe}")
    return unavailable(url, f"the connection was lost during {name}{maybe}: {reason}")
