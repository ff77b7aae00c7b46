"""Calls of the backend protocol over HTTP: routing, retries, errors back into exceptions.

One :class:`Transport` per store handle holds an httpx client (keep-alive
connections, shared by threads; a forked child makes its own). A call goes to
the member that owns its keyspace (:class:`~castore.cluster.Cluster`), with
the digest of the member list in the ``Castore-Cluster`` header:

* a connection that could not be made is retried (the request was not sent),
  up to :data:`ATTEMPTS` times with a growing pause;
* a connection lost after the request was sent is retried only for a call
  that is safe to resend (reads, and appends, which carry a request id);
  otherwise :class:`~castore.errors.StoreUnavailableError` says the call may
  or may not have been applied;
* 421 ``misdirected``: the server's member list is taken, and the call sent
  to the owner under it (at most :data:`REDIRECTS` times);
* an error body names the exception to raise (:func:`castore.wire.exception_of`).

Neither the token nor a value ever appears in an error.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

import httpx
import msgspec

from castore.cluster import Cluster
from castore.errors import CastoreError, StoreUnavailableError
from castore.urls import redacted
from castore.wire import (
    CALLS,
    CLUSTER_HEADER,
    FRAME_END,
    FRAME_ERROR,
    FRAME_ITEM,
    Misdirected,
    WireError,
    exception_of,
)

__all__ = ["ATTEMPTS", "REDIRECTS", "Transport"]

ATTEMPTS: Final = 8  # tries of one call when its connection fails (about 5 s in all)
REDIRECTS: Final = 3  # 421 answers followed by one call
_PAUSE: Final = 0.05  # the first pause between tries, doubled each time (at most 2 s)
_CONNECT_SECONDS: Final = 5.0
_MSGPACK: Final = "application/msgpack"
_MAINTENANCE: Final = frozenset({"check", "collect_garbage", "compact", "stats"})
_SAFE: Final = frozenset(
    {"current", "append", "exists", "keys", "namespaces", "listing", "remember", "version"}
    | {"history", "iter_versions", "stats", "check"}
)


class _Body(msgspec.Struct, frozen=True):
    error: WireError


class _Misdirected(msgspec.Struct, frozen=True):
    error: Misdirected


class Transport:
    """The HTTP side of an ``http://`` store.

    Args:
        members: the coordinators' URLs (one, or a cluster's list).
        token: the bearer token (``$CASTORE_TOKEN``), or None.
        read_timeout: seconds to wait for an answer (maintenance calls wait as long as they take).
    """

    def __init__(self, members: list[str], token: str | None, read_timeout: float) -> None:
        self._cluster = Cluster(members)
        self._headers = {"content-type": _MSGPACK, "accept": _MSGPACK}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._timeout = httpx.Timeout(read_timeout, connect=_CONNECT_SECONDS)
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._pid = 0
        self._tls = False
        self._decoders = {name: msgspec.msgpack.Decoder(CALLS[name][1]) for name in CALLS}

    @property
    def members(self) -> list[str]:
        """The member list in use (the server's, after a 421)."""
        return self._cluster.members

    def _http(self) -> httpx.Client:
        with self._lock:
            tls = any(url.startswith("https://") for url in self._cluster.members)
            if self._client is None or self._pid != os.getpid() or tls != self._tls:
                # A forked child never uses its parent's connections (nor closes them).
                # Without an https:// member no TLS is spoken, so no CA bundle is loaded
                # (40 ms of a command's start); one appears (a 421's list): a new client.
                self._client = httpx.Client(
                    timeout=self._timeout, headers=self._headers, verify=tls
                )
                self._pid, self._tls = os.getpid(), tls
            return self._client

    def close(self) -> None:
        """Close the connections (the transport opens new ones if used again)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()

    def call(
        self,
        name: str,
        request: Any,
        keyspace: tuple[str, str] | None,
        resend: Any = None,
        to: str = "",
    ) -> Any:
        """Send backend call ``name`` and decode its reply.

        It goes to the owner of ``keyspace``, else to member ``to``, else to
        the first member. ``resend`` is the request to send if the first
        one's answer was lost (an append marked as a retry); None sends
        ``request`` again.

        Raises:
            StoreUnavailableError: no server answered, or one failed.
            CastoreError: the exception the server's store call raised.
        """
        response = self._send(name, request, keyspace, resend, to)
        try:
            return self._decoders[name].decode(response.content)
        except msgspec.DecodeError as exc:
            raise self._unavailable(response.url, f"a bad answer to {name}: {exc}") from None

    def stream(self, name: str, request: Any, keyspace: tuple[str, str]) -> Iterator[Any]:
        """The items of a streamed call, decoded one frame at a time.

        Raises:
            StoreUnavailableError: the stream was cut.
            CastoreError: the exception that ended it on the server.
        """
        response = self._send(name, request, keyspace, None, "")
        decoder = msgspec.msgpack.Decoder(CALLS[name][1].__args__[0])
        data, at = response.content, 0
        while at + 5 <= len(data):
            kind, size = data[at : at + 1], int.from_bytes(data[at + 1 : at + 5], "big")
            payload, at = data[at + 5 : at + 5 + size], at + 5 + size
            if kind == FRAME_ITEM:
                yield decoder.decode(payload)
            elif kind == FRAME_ERROR:
                raise self._failure(response.url, 500, payload)
            elif kind == FRAME_END:
                return
        raise self._unavailable(response.url, f"the answer to {name} was cut")

    def _send(
        self, name: str, request: Any, keyspace: tuple[str, str] | None, resend: Any, to: str
    ) -> httpx.Response:
        body = msgspec.msgpack.encode(request)
        timeout = httpx.Timeout(None, connect=_CONNECT_SECONDS) if name in _MAINTENANCE else None
        attempt = redirects = 0
        while True:
            url = self._cluster.owner(*keyspace) if keyspace else to or self._cluster.members[0]
            headers = {CLUSTER_HEADER: self._cluster.digest}
            try:
                response = self._http().post(
                    f"{url}/v1/backend/{name}", content=body, headers=headers, timeout=timeout
                )
            except httpx.TransportError as exc:
                attempt += 1
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt >= ATTEMPTS or (sent and name not in _SAFE):
                    raise self._lost(url, name, exc, sent) from None
                if sent and resend is not None:
                    body = msgspec.msgpack.encode(resend)
                time.sleep(min(_PAUSE * 2 ** (attempt - 1), 2.0))
                continue
            if response.status_code == 200:
                return response
            if response.status_code == 421 and redirects < REDIRECTS and keyspace is not None:
                redirects += 1
                self._follow(response)
                continue
            raise self._failure(response.url, response.status_code, response.content)

    def _follow(self, response: httpx.Response) -> None:
        """Take the member list a 421 answer gives (the server's; it decides who owns what)."""
        try:
            answer = msgspec.json.decode(response.content, type=_Misdirected).error
            cluster = Cluster(answer.cluster)
        except (msgspec.DecodeError, ValueError):
            raise self._failure(response.url, 421, response.content) from None
        with self._lock:
            self._cluster = cluster

    def _failure(self, url: Any, status: int, content: bytes) -> Exception:
        """The exception an error answer stands for."""
        try:
            error = msgspec.json.decode(content, type=_Body).error
        except msgspec.DecodeError:
            return self._unavailable(url, f"HTTP {status} without an error body")
        exc = exception_of(error)
        if exc is not None:
            return exc
        if error.code == "io_error":
            return OSError(f"{redacted(str(url))}: {error.message}")
        if error.code == "unauthorized":
            return self._unavailable(url, "the server refused the token ($CASTORE_TOKEN)")
        return self._unavailable(url, f"{error.code}: {error.message}")

    def _unavailable(self, url: Any, what: str) -> CastoreError:
        return StoreUnavailableError(f"castore server {_origin(url)}: {what}")

    def _lost(self, url: str, name: str, exc: httpx.TransportError, sent: bool) -> CastoreError:
        reason = type(exc).__name__
        if not sent:
            return self._unavailable(url, f"cannot connect ({reason}, {ATTEMPTS} tries)")
        maybe = " (it may or may not have been applied)" if name not in _SAFE else ""
        return self._unavailable(url, f"the connection was lost during {name}{maybe}: {reason}")


def _origin(url: Any) -> str:
    """``scheme://host:port`` of a URL: what an error may show of it."""
    parsed = httpx.URL(str(url))
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"
