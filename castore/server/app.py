"""The HTTP/JSON API over one store: a Starlette app made by :func:`create_app`.

``POST /v1/<operation>`` for each of :data:`~castore.server.operations.OPERATIONS`,
``GET /healthz`` and ``GET /metrics`` (docs/SERVER.md). One :class:`~castore.store.Store`
handle serves every request: each store call runs in a worker thread (the
handle is thread-safe), on a per-request handle that writes as the caller.

``POST /v1/backend/<call>`` serves the backend protocol of ``http://`` stores
(:mod:`castore.server.rpc`). Around the routes, :mod:`castore.server.middleware`:
the request id, the access log, the metrics and the bearer token. A clustered
server checks every request's member list and keyspace first
(:mod:`castore.server.membership`). A request body is bounded before it is read whole, and each
request has a time limit; a call abandoned by the limit runs to its end, and
shutdown waits for it before closing the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TextIO, TypeVar

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from castore.cluster import Cluster
from castore.decoding import printing
from castore.jsonrules import MAX_VALUE_BYTES
from castore.server.errors import ApiError, api_error, error_response
from castore.server.incoming import BODY_ARRIVED, decode, list_of, lock_wait_of, read_body
from castore.server.membership import Membership
from castore.server.middleware import AccessLog, Guard, Metrics, Observe
from castore.server.operations import (
    OPERATIONS,
    Operation,
    decode_request,
    handle_for,
    keyspace,
    spans,
)
from castore.server.rpc import BACKEND_CALLS, BackendCall, decode_call, framed, keyspace_of
from castore.server.streaming import CUT, BoundedStream, StreamCut
from castore.store import Store
from castore.urls import is_url
from castore.waits import WouldWait, at_most, no_waiting
from castore.wire import CALL_BODY_MAX, CALLS, CLUSTER_HEADER, PEER_HEADER

__all__ = [
    "BACKEND_BODY_BYTES",
    "CALL_THREADS",
    "DRAIN_TIMEOUT_SECONDS",
    "ENVELOPE_BYTES",
    "LOCK_MARGIN_SECONDS",
    "MAX_BODY_BYTES",
    "create_app",
]

ENVELOPE_BYTES: Final = 64 * 1024  # the request's other members, around a value
MAX_BODY_BYTES: Final = MAX_VALUE_BYTES + ENVELOPE_BYTES
BACKEND_BODY_BYTES: Final = CALL_BODY_MAX  # a backend call: an import's whole history of a key
LOCK_MARGIN_SECONDS: Final = 30.0  # the default request timeout: the store's lock timeout + this
DRAIN_TIMEOUT_SECONDS: Final = 120.0  # shutdown waits this long for abandoned store calls
CALL_THREADS: Final = 40  # worker threads of a server process (anyio's default, before)
_HEALTH_TIMEOUT_SECONDS: Final = 5.0
_BODY_READ: Final = Response(b"")  # what reading a body answers when it got the whole body
_STREAM_BATCH: Final = 100  # audit lines read per worker-thread hop
_MSGPACK: Final = "application/msgpack"
_JSON: Final = "application/json"

_log = logging.getLogger("castore.server")
_T = TypeVar("_T")


class _Calls:
    """The store calls of one server process: run in a pool of worker threads of its own.

    A call whose request timed out is abandoned, not cancelled: it runs to its
    end, and :meth:`drain` (at shutdown) waits for it; one no thread had started
    yet is dropped (an overloaded server's queue holds no call its request gave
    up on, so it cannot grow past what arrives within a request timeout). The pool is
    ``concurrent.futures``' (a C queue hands a call to a thread): anyio's worker
    threads cost the event loop a ``Condition`` notify per call, a sixth of a
    server's CPU at 32 clients (docs/PERFORMANCE.md).
    """

    def __init__(self, workers: int = CALL_THREADS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="castore-call")
        self._running: set[asyncio.Future[Any]] = set()

    async def run(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in a worker thread; if the caller is cancelled, a started ``fn`` runs on."""
        job = self._pool.submit(fn)
        future = asyncio.wrap_future(job)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            job.cancel()  # still queued: never run (nothing done); started: no effect
            raise

    async def drain(self, timeout: float) -> bool:
        """Wait until no call runs (at most ``timeout`` seconds), then stop the pool.

        Returns:
            True if no call runs any more.
        """
        pending: set[asyncio.Future[Any]] = set()
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=timeout)
        self._pool.shutdown(wait=False)
        return not pending


def _take(lines: Iterator[bytes]) -> bytes:
    return b"".join(line for _, line in zip(range(_STREAM_BATCH), lines, strict=False))


class _Api:
    """What the endpoints share: the store, the limits and the running calls."""

    def __init__(
        self, store: Store, timeout: float | None, max_body: int, membership: Membership
    ) -> None:
        timeout = store.lock_timeout + LOCK_MARGIN_SECONDS if timeout is None else timeout
        self.store, self.timeout, self.max_body = store, timeout, max_body
        self.root = "" if is_url(store.root) else store.root  # named "<store>" in errors
        self.membership = membership
        self.calls = _Calls()
        self.health_ref = store.ref("castore-healthz", scope="global")
        self.loop_safe = store.backend.loop_safe_reads

    async def call(
        self, fn: Callable[[], _T], *, loop_safe: bool = False, wait: float | None = None
    ) -> _T:
        """``fn()`` in a worker thread; abandoned (it runs on, counted) if the request times out.

        ``wait``: the client's lock timeout, when it gave one: ``fn`` waits at most that
        long for each lock (:func:`castore.waits.waiting_at_most`), never longer than the
        store allows.

        ``loop_safe`` (a short read) on a backend with ``loop_safe_reads`` runs
        it here, on the event loop, unless it would wait (:mod:`castore.waits`):
        then in a thread, from the start (a read may run twice). A hand-off to
        a thread and back costs more than such a read (docs/PERFORMANCE.md).
        A call run here is never abandoned: it does not wait.
        """
        if loop_safe and self.loop_safe:
            try:
                with no_waiting():  # it waits for nothing here: no bound needed
                    return fn()
            except WouldWait:
                pass
        return await self.calls.run(at_most(wait, fn))

    async def guarded(
        self,
        work: Callable[[], Awaitable[Response]],
        timeout: float | None = None,
        *,
        exception: bool = False,
        request: Request | None = None,
    ) -> Response:
        """The response of ``work``, or the error response of what it raised, or of the timeout.

        With ``exception`` the error names the exception to raise (the backend protocol).
        A timeout before ``request``'s body arrived says that nothing was applied.
        """
        timeout = self.timeout if timeout is None else timeout
        limit = asyncio.timeout(None if math.isinf(timeout) else timeout)
        try:
            async with limit:
                return await work()
        except Exception as exc:  # noqa: BLE001  # every failure is an error response
            if isinstance(exc, TimeoutError) and limit.expired():
                message = f"no answer within {timeout:g} s (a write may still be applied)"
                if request is not None and not request.scope.get(BODY_ARRIVED):
                    message = f"the request body did not arrive within {timeout:g} s: nothing done"
                return error_response(ApiError("timeout", message))
            err = api_error(exc, exception=exception, root=self.root)
            if err.code == "internal":
                _log.error("internal error", exc_info=exc)
            return error_response(err)

    def endpoint(self, name: str, op: Operation) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of operation ``name``."""

        async def work(request: Request) -> Response:
            wait = lock_wait_of(request)
            body = await read_body(request, self.max_body)
            try:
                req = decode_request(name, body, quick=True)
            except (msgspec.DecodeError, RecursionError):  # a deep value: Python, not on the loop
                req = await self.call(lambda: decode(name, body), wait=wait)
            self.membership.check(list_of(request), keyspace(req), spans=spans(req))
            handle = handle_for(self.store, req)
            if op.stream:
                return await self._stream(op, handle, req, wait, request.scope)
            answer = await self.call(
                lambda: printing(lambda: op.call(handle, req)), loop_safe=op.loop_safe, wait=wait
            )
            assert isinstance(answer, bytes)  # noqa: S101  # the table says so
            return Response(answer, media_type=_JSON)

        async def endpoint(request: Request) -> Response:
            return await self.guarded(lambda: work(request), request=request)

        return endpoint

    def backend_endpoint(
        self, name: str, call: BackendCall
    ) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of backend call ``name``: MessagePack in and out, errors as JSON."""

        async def work(request: Request, body: bytes | None = None) -> Response:
            wait = lock_wait_of(request)
            if body is None:
                body = await read_body(request, BACKEND_BODY_BYTES)
            try:
                req = decode_call(name, body)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise ApiError("bad_request", f"bad request body: {exc}") from None
            survey = CALLS[name].survey  # namespaces, removed: kept by owner
            self.membership.check(list_of(request), keyspace_of(req), survey=survey)
            if call.stream:
                items = await self.call(
                    lambda: framed(call.run(self.store, req), root=self.root), wait=wait
                )
                batches = self._batches(items, wait)
                return BoundedStream(batches, _MSGPACK, self.timeout, request.scope)
            reply = await self.call(
                lambda: call.run(self.store, req), loop_safe=call.loop_safe, wait=wait
            )
            return Response(msgspec.msgpack.encode(reply), media_type=_MSGPACK)

        async def endpoint(request: Request) -> Response:
            if not CALLS[name].maintenance:
                return await self.guarded(lambda: work(request), exception=True, request=request)
            # A maintenance call may run as long as it needs, but its body arrives within
            # the request timeout as every other one does (a slow sender holds nothing).
            body: list[bytes] = []

            async def read() -> Response:
                body.append(await read_body(request, BACKEND_BODY_BYTES))
                return _BODY_READ

            read_answer = await self.guarded(read, exception=True, request=request)
            if read_answer is not _BODY_READ:
                return read_answer
            return await self.guarded(lambda: work(request, body[0]), math.inf, exception=True)

        return endpoint

    async def _batches(self, batches: Iterator[bytes], wait: float | None) -> AsyncIterator[bytes]:
        """The batches of a stream, each read in a worker thread."""
        while batch := await self.call(lambda: next(batches, b""), wait=wait):
            yield batch

    async def _stream(
        self, op: Operation, handle: Store, req: Any, wait: float | None, scope: Scope
    ) -> Response:
        """A streamed answer (JSON lines): the first line read before the status is sent.

        An error after the status (damage found midway) ends the answer without its
        end, so the client sees it incomplete; the server logs the error, and the
        access log names the request's code (``cut``: :data:`CUT`).
        """

        def start() -> tuple[bytes, Iterator[bytes]]:
            lines = op.call(handle, req)
            assert not isinstance(lines, bytes)  # noqa: S101  # a streaming operation
            return next(lines, b""), lines

        first, rest = await self.call(start, wait=wait)

        async def body() -> AsyncIterator[bytes]:
            yield first
            try:
                while batch := await self.call(lambda: _take(rest), wait=wait):
                    yield batch
            except Exception as exc:  # noqa: BLE001  # logged, then the answer is cut
                err = api_error(exc, root=self.root)
                scope[CUT] = err.code
                internal = err.code == "internal"
                _log.error("a streamed answer was cut: %s", err, exc_info=exc if internal else None)
                raise StreamCut from None  # no traceback: the answer ends without its end

        return BoundedStream(body(), "application/x-ndjson", self.timeout, scope)

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: 200 when the store answers a read, else an error (503).

        A clustered member answers its list's digest in a header (what the other members
        ask: their looks get it at once, without the store's read) and, in the body,
        whether it serves its keyspaces now (:mod:`castore.server.peers`).
        """
        cluster = self.membership.cluster
        if cluster is not None and PEER_HEADER in request.headers:
            return Response(b'{"status":"ok"}', media_type=_JSON, headers=_digest(cluster))

        async def probe() -> Response:
            await self.call(lambda: self.store.backend.exists(self.health_ref))
            return Response(self.membership.health(), media_type=_JSON)

        response = await self.guarded(probe, min(self.timeout, _HEALTH_TIMEOUT_SECONDS))
        if cluster is not None:
            response.headers.update(_digest(cluster))
        return response


def _digest(cluster: Cluster) -> dict[str, str]:
    return {CLUSTER_HEADER: cluster.digest}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors as JSON: no such path (404), a method it does not take (405)."""
    assert isinstance(exc, HTTPException)  # noqa: S101  # registered for HTTPException
    if exc.status_code == 404:
        return error_response(ApiError("not_found_route", f"no such path: {request.url.path}"))
    if exc.status_code == 405:
        err = ApiError("method_not_allowed", f"{request.method} not allowed here")
        return error_response(err, dict(exc.headers or {}))
    return error_response(ApiError("bad_request", str(exc.detail)))


async def _internal(request: Request, exc: Exception) -> Response:
    return error_response(ApiError("internal", "internal server error (see the server's log)"))


def create_app(
    store: Store,
    token: str | None = None,
    *,
    request_timeout: float | None = None,
    access_log: TextIO | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    membership: Membership | None = None,
    metrics_dir: str | None = None,
    started: Callable[[], None] | None = None,
) -> Starlette:
    """The API over ``store``; it closes the store when it shuts down.

    Args:
        store: the store every request uses (per request, through ``for_caller``).
        token: the bearer token every path but ``/healthz`` needs; None: no auth.
        request_timeout: seconds a request may take before it answers 503 ``timeout``;
            None: the store's lock timeout + :data:`LOCK_MARGIN_SECONDS` (a write waiting
            for a lock ends with its own error, not a timeout that leaves one unsure).
        access_log: where the JSON-lines access log goes (default: stderr).
        max_body_bytes: the largest request body read (413 ``body_too_large`` above).
        membership: the cluster this server is a member of (None: a lone server).
        metrics_dir: where a server's processes count metrics (summed); None: alone.
        started: called once the server runs the app (its lifespan started).
    """
    api = _Api(store, request_timeout, max_body_bytes, membership or Membership())
    metrics = Metrics(metrics_dir)
    log = AccessLog(access_log or sys.stderr)

    async def serve_metrics(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if started is not None:
            started()
        yield
        await api.calls.drain(DRAIN_TIMEOUT_SECONDS)
        log.flush()
        store.close()

    routes = [
        *(Route(f"/v1/{n}", api.endpoint(n, op), methods=["POST"]) for n, op in OPERATIONS.items()),
        *(
            Route(f"/v1/backend/{name}", api.backend_endpoint(name, call), methods=["POST"])
            for name, call in BACKEND_CALLS.items()
        ),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", serve_metrics, methods=["GET"]),
    ]
    middleware = [Middleware(Observe, log=log, metrics=metrics)]
    if token is not None:
        middleware.append(Middleware(Guard, token=token))
    handlers = {HTTPException: _http_error, Exception: _internal}
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan
    )
    app.router.redirect_slashes = False  # "/v1/get/" is no route: no redirect naming the Host
    return app
