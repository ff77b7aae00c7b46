"""Calls of the backend protocol over HTTP: routing, retries, errors back into exceptions.

One :class:`Transport` per store handle holds an httpx client (keep-alive
connections, shared by threads; a forked child makes its own). A call about a
keyspace goes to its owner (:class:`~castore.cluster.Cluster`), with the
digest and length of the member list in the ``Castore-Cluster`` and
``Castore-Members`` headers; a store-wide call goes to the member it names.

* A connection not made is retried, :data:`ATTEMPTS` times in all with a growing pause (about
  5 s); one lost after the request was sent only for a call safe to send again (reads; appends,
  known by their request id), else :class:`~castore.errors.StoreUnavailableError` says it may or
  may not have been applied. No answer within the read timeout (past the server's: it is stuck)
  is retried once for a read, never for a write (it may or may not have been applied).
* 421 ``misdirected``: the server's member list is taken (only from a server in it, naming only
  members of the list given, never moving one from https to http) and the call sent to the owner
  under it, at most :data:`REDIRECTS` times; an append raises :class:`Rerouted` to decide again
  on the new owner's newest entry unless an earlier answer was lost, and so does a survey of
  every member (``namespaces``, ``removed``), asked of every member again under the new list.
* A 503 saying to retry shortly (it wrote nothing): sent again for :data:`MEMBERS_WAIT` s.
* Once an answer was lost, every later attempt (after a 421, a 503, another lost answer) is the
  same request marked as a retry, applied once; never to another owner.
* An error body names the exception to raise (:mod:`castore.remote.failures`).

Neither the token nor a value ever appears in an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import httpx
import msgspec

from castore import forks
from castore.cluster import Cluster, member_of
from castore.errors import CastoreError, InvalidValueError
from castore.inuse import InUse
from castore.remote import failures, proxies
from castore.remote.failures import MAYBE, NOT_SENT, connection_lost, failure, unavailable
from castore.remote.frames import frames
from castore.remote.replies import read as read_reply
from castore.wire import (
    CALLS,
    CLUSTER_HEADER,
    LOCK_TIMEOUT_HEADER,
    MEMBERS_HEADER,
    Misdirected,
    retry_soon,
)

__all__ = ["ATTEMPTS", "MEMBERS_WAIT", "REDIRECTS", "Rerouted", "Transport"]

ATTEMPTS: Final = 8  # tries of one call when its connection fails (about 5 s in all)
REDIRECTS: Final = 3  # 421 answers followed by one call
MEMBERS_WAIT: Final = 5.0  # seconds a call waits for cluster members to agree (wire.retry_soon)
_PAUSE: Final = 0.05  # the first pause between tries, doubled each time (at most 2 s)
_CONNECT_SECONDS: Final = 5.0
_MSGPACK: Final = "application/msgpack"
_NEVER_SENDABLE: Final = (httpx.LocalProtocolError, httpx.UnsupportedProtocol)
# No progress for the whole read timeout, past the server's request timeout: a server that
# took the request and is stuck (stopped, overloaded), not an answer lost on its way.
_STALLED: Final = (httpx.ReadTimeout, httpx.WriteTimeout)
_MOVED: Final = "the answer to append was lost, and its keyspace has another owner now" + MAYBE


class Rerouted(Exception):  # noqa: N818  # a signal, not an error: the write decides again
    """An append or a survey met a member with another list or owner; the list was updated."""


class _Misdirected(msgspec.Struct, frozen=True):
    error: Misdirected


class Transport:
    """The HTTP side of an ``http://`` store.

    Args:
        members: the coordinators' URLs (one, or a cluster's list).
        token: the bearer token (``$CASTORE_TOKEN``), or None.
        read_timeout: seconds to wait for an answer (maintenance waits as long as it takes).
        lock_timeout: the caller's lock timeout, sent with every request (None: the server's).

    Raises:
        InvalidValueError: a token a header cannot carry.
    """

    def __init__(
        self,
        members: list[str],
        token: str | None,
        read_timeout: float,
        lock_timeout: float | None = None,
    ) -> None:
        self._cluster = Cluster(members)
        self._given = frozenset(map(member_of, self._cluster.members))  # what a 421 may name
        self._headers = {"content-type": _MSGPACK, "accept": _MSGPACK}
        token = proxies.checked_token(token)
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        if lock_timeout is not None:
            self._headers[LOCK_TIMEOUT_HEADER] = repr(float(lock_timeout))
        self._timeout = httpx.Timeout(read_timeout, connect=_CONNECT_SECONDS)
        self._read_timeout = read_timeout
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._retired: list[httpx.Client] = []  # replaced (a member list turned https): close
        self._tls = False
        self._decoders = {name: msgspec.msgpack.Decoder(CALLS[name].reply) for name in CALLS}
        self._in_use = InUse(self._close_now)  # a close waits for no call, runs after all
        forks.track(self)

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`): a new lock; the parent's client let go."""
        self._lock, self._client = threading.Lock(), None  # never closed: the parent's sockets
        self._retired = []

    @property
    def cluster(self) -> Cluster:
        """The member list in use (the server's, after a 421); replaced, never changed."""
        return self._cluster

    @property
    def members(self) -> list[str]:
        """The member list in use (the server's, after a 421)."""
        return self._cluster.members

    def owner(self, scope: str, namespace: str) -> str:
        """The member that owns a keyspace under the list in use."""
        return self._cluster.owner(scope, namespace)

    def _http(self) -> httpx.Client:
        with self._lock:
            tls = any(url.startswith("https://") for url in self._cluster.members)
            if self._client is None or tls != self._tls:
                if self._client is not None:  # other threads' calls may use it: closed later
                    self._retired.append(self._client)
                # Without an https:// member no TLS is spoken, so no CA bundle is loaded
                # (40 ms of a command's start); one appears (a 421's list): a new client.
                proxies.check_proxy_environment()  # httpx would raise from inside, a traceback
                try:
                    self._client = httpx.Client(
                        timeout=self._timeout, headers=self._headers, verify=tls
                    )
                except (ValueError, httpx.InvalidURL):  # a $NO_PROXY entry httpx cannot read
                    raise InvalidValueError(proxies.NO_PROXY_UNREAD) from None
                self._tls = tls
            return self._client

    def close(self) -> None:
        """Close the connections once no call runs (the transport opens new ones if used again).

        A connection closed under a call of another thread would fail it (httpx: "the
        client has been closed") or leave its socket open.
        """
        self._in_use.close()

    def _close_now(self) -> None:
        with self._lock:
            clients, self._client, self._retired = [self._client, *self._retired], None, []
        for client in clients:
            if client is not None:
                client.close()

    def _interrupted(self, exc: BaseException) -> None:
        """A call raised ``exc``: if an interruption (maybe inside httpx), a new client."""
        # One in httpcore may leave a connection half-readied (h11's AssertionError next) or
        # its pool's lock held (later calls waited for ever): the old one is closed apart.
        if isinstance(exc, Exception | GeneratorExit):  # GeneratorExit: a stream dropped
            return
        with self._lock:
            client, self._client = self._client, None
            if client is not None and len(self._in_use.calls) > 1:  # another call may use it
                self._retired.append(client)  # closed with the handle
            elif client is not None:
                threading.Thread(target=client.close, daemon=True).start()

    def call(
        self,
        name: str,
        request: Any,
        where: tuple[str, str] | str,
        resend: Any = None,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """Send backend call ``name`` and decode its reply.

        ``where`` is the keyspace the call is about (sent to its owner), or the
        URL of the member a store-wide call is for. ``resend`` is the request to
        send if the first one's answer was lost (an append marked as a retry).
        ``check`` says what is wrong with a decoded reply (None: nothing).

        Raises:
            Rerouted: an append reached a member that does not own its keyspace.
            StoreUnavailableError: no server answered, or one failed, or its answer is
                not one (it does not decode, or ``check`` finds it wrong).
            CastoreError: the exception the server's store call raised.
        """
        response = self._send(name, request, where, resend)
        reply: Any = None
        try:
            reply = self._decoders[name].decode(response.content)
        except (msgspec.DecodeError, RecursionError) as exc:  # nested deeper than msgspec goes
            problem: str | None = str(exc)
        else:
            problem = check(reply) if check is not None else None
        if problem is not None:
            maybe = MAYBE * CALLS[name].writes
            raise unavailable(response.url, f"a bad answer to {name}{maybe}: {problem}")
        return reply

    def stream(
        self,
        name: str,
        request: Any,
        keyspace: tuple[str, str],
        check: Callable[[Any], str | None] | None = None,
    ) -> Iterator[Any]:
        """The items of a streamed call, decoded one frame at a time as they arrive.

        Only the frames not yet decoded are held in memory, so a key's whole
        history streams in the space of its largest version. ``check`` says what
        is wrong with an item (None: nothing).

        Raises:
            StoreUnavailableError: the stream was cut or is not made of frames, or
                ``check`` finds an item wrong.
            CastoreError: the exception that ended it on the server.
        """
        use, call = self._in_use, object()
        try:
            use.enter(call)  # until the stream ends: its connection is in use
            response = self._send(name, request, keyspace, None, stream=True)
            try:
                for item in frames(name, response):
                    problem = check(item) if check is not None else None
                    if problem is not None:
                        raise unavailable(response.url, f"a bad answer to {name}: {problem}")
                    yield item
            finally:
                response.close()
        except BaseException as exc:
            self._interrupted(exc)
            raise
        finally:
            use.calls.discard(call)  # first (castore/inuse.py)
            use.leave_last()

    def _send(
        self,
        name: str,
        request: Any,
        where: tuple[str, str] | str,
        resend: Any,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """The 200 answer to one call, after its retries and redirects.

        With ``stream``, its body is still to be read (and the response closed).
        """
        sent, use, call = [False], self._in_use, object()  # sent: an answer lost (maybe applied)
        try:
            use.enter(call)
            return self._until_answered(name, request, where, resend, stream, sent)
        except (CastoreError, OSError) as exc:
            if not (sent[0] and CALLS[name].writes) or MAYBE in str(exc):
                raise
            url = self._cluster.owner(*where) if isinstance(where, tuple) else where
            raise unavailable(
                url, f"the answer to {name} was lost, and sending it again failed: {exc}{MAYBE}"
            ) from None
        except BaseException as exc:
            self._interrupted(exc)
            raise
        finally:
            use.calls.discard(call)  # first (castore/inuse.py)
            use.leave_last()

    def _until_answered(
        self,
        name: str,
        request: Any,
        where: tuple[str, str] | str,
        resend: Any,
        stream: bool,
        sent: list[bool],
    ) -> httpx.Response:
        """:meth:`_send`'s attempts; ``sent[0]`` is set once an answer was lost."""
        redirects, lost_at = 0, set[str]()  # lost_at: the members an answer was lost from
        patience = time.monotonic() + MEMBERS_WAIT
        while True:
            url = self._cluster.owner(*where) if isinstance(where, tuple) else where
            outgoing = resend if sent[0] and resend is not None else request
            response, lost = self._post(name, url, outgoing, resend, stream=stream)
            sent[0] = sent[0] or lost
            if lost:
                lost_at.add(url)
            if response.status_code == 200:
                return response
            if response.status_code == 421 and redirects < REDIRECTS and isinstance(where, tuple):
                redirects += 1
                self._follow(response, url)
                if name == "append" and not sent[0]:
                    raise Rerouted
                if name == "append" and (owner := self._cluster.owner(*where)) not in lost_at:
                    raise unavailable(owner, _MOVED)
                continue
            if response.status_code == 421 and isinstance(where, str) and CALLS[name].survey:
                self._follow(response, url)  # a survey of every member: asked again, all of them
                raise Rerouted
            if (
                response.status_code == 503
                and retry_soon(response.content)
                and time.monotonic() < patience
            ):
                time.sleep(4 * _PAUSE)  # members agreeing on their list: it wrote nothing
                continue
            raise failure(
                response.url,
                response.status_code,
                response.content,
                token_sent="authorization" in self._headers,
            )

    def _post(
        self, name: str, url: str, request: Any, resend: Any, *, stream: bool = False
    ) -> tuple[httpx.Response, bool]:
        """One call's answer from ``url``, retrying lost connections as the call allows.

        And whether an attempt whose answer was lost came before it (it may have been applied).
        """
        spec = CALLS[name]
        body = msgspec.msgpack.encode(request)
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if spec.maintenance:
            timeout = httpx.Timeout(None, connect=_CONNECT_SECONDS)
        headers = {CLUSTER_HEADER: self._cluster.digest, MEMBERS_HEADER: str(len(self._cluster))}
        sent, stalled = False, 0
        for attempt in range(1, ATTEMPTS + 1):
            try:
                client = self._http()
                outgoing = client.build_request(
                    "POST",
                    f"{url}/v1/backend/{name}",
                    content=body,
                    headers=headers,
                    timeout=timeout,
                )
                response = client.send(outgoing, stream=True)
                if not (stream and response.status_code == 200):  # else read as it streams
                    response = read_reply(response, name, request)  # bounded: never held whole
                failures.gateway(response)  # a proxy's 502 or 504: raised as the answer lost it is
                return response, sent
            except httpx.HTTPError as exc:
                # a certificate refused: said at once, never retried (a lost answer still said)
                failures.distrust(url, exc, MAYBE * (sent and spec.writes))
                lost = not isinstance(exc, NOT_SENT)
                sent = sent or lost
                if isinstance(exc, _NEVER_SENDABLE) or not isinstance(exc, httpx.TransportError):
                    maybe = MAYBE * (sent and spec.writes)
                    raise unavailable(url, f"{name} failed: {type(exc).__name__}{maybe}") from None
                stalled += isinstance(exc, _STALLED)
                if stalled and (spec.writes or stalled > 1):  # no answer: stuck, not lost
                    what = failures.no_answer(name, exc, self._read_timeout, stalled, spec.writes)
                    raise unavailable(url, what) from None
                if attempt == ATTEMPTS or (lost and not spec.resendable(request)):
                    proxy = proxies.proxy_variable(self._http(), url)
                    applied = sent and spec.writes
                    raise connection_lost(url, name, exc, applied, proxy, ATTEMPTS) from None
                if lost and resend is not None:
                    body = msgspec.msgpack.encode(resend)
                time.sleep(min(_PAUSE * 2 ** (attempt - 1), 2.0))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _follow(self, response: httpx.Response, asked: str) -> None:
        """Take the member list of a 421 answer: the server's, which decides who owns what.

        Only a list that holds the server that answered and names no member this client
        was not given (scheme, host and port): a misconfigured or stale member never
        sends the token, or a keyspace's writes, to a host the client was not told of,
        nor over http to a member it was given as https.

        Raises:
            StoreUnavailableError: the answer is not such a list.
        """
        try:
            answer = msgspec.json.decode(response.content, type=_Misdirected).error
            cluster = Cluster(answer.cluster)
        except (msgspec.DecodeError, ValueError, RecursionError):
            raise failure(response.url, 421, response.content) from None
        unknown = [url for url in cluster.members if member_of(url) not in self._given]
        if asked not in cluster.members or unknown:
            named = f"; it names {len(unknown)} member(s) this client was not given" * bool(unknown)
            what = f"refused this client's coordinator list ({answer.message}{named})"
            raise unavailable(asked, f"{what}; update the list")
        with self._lock:
            self._cluster = cluster
