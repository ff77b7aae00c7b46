"""The HTTP/JSON API over one store: a Starlette app made by :func:`create_app`.

``POST /v1/<operation>`` for each of :data:`~castore.server.operations.OPERATIONS`,
``GET /healthz`` and ``GET /metrics`` (docs/SERVER.md). One :class:`~castore.store.Store`
handle serves every request: each store call runs in a worker thread (the
handle is thread-safe), on a per-request handle that writes as the caller.

Around the routes: :class:`_Observe` (request id, the JSON-lines access log,
the Prometheus metrics) and :class:`_Guard` (the bearer token, compared in
constant time). A request body is bounded before it is read whole, and each
request has a time limit; a call abandoned by the limit runs to its end, and
shutdown waits for it before closing the store.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final, TextIO, TypeVar

import anyio
import anyio.to_thread
import msgspec
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from castore.jsonrules import MAX_VALUE_BYTES
from castore.results import rfc3339
from castore.server.errors import ApiError, api_error, error_body
from castore.server.operations import OPERATIONS, Operation, decode_request, handle_for
from castore.store import Store

__all__ = ["ENVELOPE_BYTES", "MAX_BODY_BYTES", "REQUEST_TIMEOUT_SECONDS", "create_app"]

ENVELOPE_BYTES: Final = 64 * 1024  # the request's other members, around a value
MAX_BODY_BYTES: Final = MAX_VALUE_BYTES + ENVELOPE_BYTES
REQUEST_TIMEOUT_SECONDS: Final = 30.0
DRAIN_TIMEOUT_SECONDS: Final = 120.0  # shutdown waits this long for abandoned store calls
_HEALTH_TIMEOUT_SECONDS: Final = 5.0
_STREAM_BATCH: Final = 100  # audit lines read per worker-thread hop
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_PUBLIC: Final = frozenset({"/healthz"})  # the paths that need no token
_JSON: Final = "application/json"

_log = logging.getLogger("castore.server")
_T = TypeVar("_T")


class _Calls:
    """The store calls running in worker threads, so that shutdown can wait for them."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._running = 0

    def run(self, fn: Callable[[], _T]) -> _T:
        """Call ``fn`` (in a worker thread), counted while it runs."""
        with self._idle:
            self._running += 1
        try:
            return fn()
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call runs (at most ``timeout`` seconds); True if none does."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)


class _Metrics:
    """Request counts and latencies per operation, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "castore_requests",
            "HTTP requests answered, by operation and status",
            ("operation", "status"),
            registry=self.registry,
        )
        self.seconds = Histogram(
            "castore_request_seconds",
            "Time to answer an HTTP request, by operation",
            ("operation",),
            registry=self.registry,
        )

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request of ``path``."""
        operation = operation_of(path)
        self.requests.labels(operation, str(status)).inc()
        self.seconds.labels(operation).observe(seconds)


def operation_of(path: str) -> str:
    """The metrics label of a path: the operation, ``healthz``, ``metrics`` or ``other``."""
    name = path.removeprefix("/v1/")
    if name != path and name in OPERATIONS:
        return name
    return {"/healthz": "healthz", "/metrics": "metrics"}.get(path, "other")


class _Observe:
    """ASGI middleware: the request id, one access-log line and the metrics of each request.

    The line holds the time, method, path, status, duration and request id:
    never a header (the token), a query string or a body (a value).
    """

    def __init__(self, app: ASGIApp, log: TextIO, metrics: _Metrics) -> None:
        self.app, self.log, self.metrics = app, log, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            path = str(scope["path"])[:256]
            self.metrics.observe(path, status, seconds)
            self._write(str(scope["method"])[:16], path, status, seconds, request_id)

    def _write(self, method: str, path: str, status: int, seconds: float, rid: str) -> None:
        line = {
            "time": rfc3339(time.time_ns()),
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": rid,
        }
        try:
            self.log.write(msgspec.json.encode(line).decode("utf-8") + "\n")
            self.log.flush()
        except (OSError, ValueError):  # a closed or full log never fails a request
            pass


class _Guard:
    """ASGI middleware: every path but ``/healthz`` needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PUBLIC or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        err = ApiError("unauthorized", "missing or wrong bearer token")
        response = _error(err, {"WWW-Authenticate": 'Bearer realm="castore"'})
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(given.strip(), self.token)


def _error(err: ApiError, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(err), err.status, headers, media_type=_JSON)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before it is read whole."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError("body_too_large", f"request body of {length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError("body_too_large", f"request body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError("bad_request", "the client went away before the body ended") from None
    return b"".join(chunks)


def _decode(name: str, body: bytes) -> Any:
    try:
        return decode_request(name, body)
    except msgspec.DecodeError as exc:  # a ValidationError too: not this operation's request
        raise ApiError("bad_request", f"bad request body: {exc}") from None


def _take(lines: Iterator[bytes]) -> bytes:
    return b"".join(line for _, line in zip(range(_STREAM_BATCH), lines, strict=False))


class _Api:
    """What the endpoints share: the store, the limits and the running calls."""

    def __init__(self, store: Store, timeout: float, max_body: int) -> None:
        self.store, self.timeout, self.max_body = store, timeout, max_body
        self.calls = _Calls()
        self.health_ref = store.ref("castore-healthz", scope="global")

    async def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in a worker thread; abandoned (it runs on, counted) if the request times out."""
        return await anyio.to_thread.run_sync(self.calls.run, fn, abandon_on_cancel=True)

    async def guarded(
        self, work: Callable[[], Awaitable[Response]], timeout: float | None = None
    ) -> Response:
        """The response of ``work``, or the error response of what it raised, or of the timeout."""
        timeout = self.timeout if timeout is None else timeout
        try:
            with anyio.move_on_after(timeout):
                return await work()
        except Exception as exc:  # noqa: BLE001  # every failure is an error response
            err = api_error(exc)
            if err.code == "internal":
                _log.error("internal error", exc_info=exc)
            return _error(err)
        message = f"no answer within {timeout:g} s (a write may still be applied)"
        return _error(ApiError("timeout", message))

    def endpoint(self, name: str, op: Operation) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of operation ``name``."""

        async def work(request: Request) -> Response:
            req = _decode(name, await _read_body(request, self.max_body))
            handle = handle_for(self.store, req)
            if op.stream:
                return await self._stream(op, handle, req)
            body = await self.call(lambda: op.call(handle, req))
            assert isinstance(body, bytes)  # noqa: S101  # the table says so
            return Response(body, media_type=_JSON)

        async def endpoint(request: Request) -> Response:
            return await self.guarded(lambda: work(request))

        return endpoint

    async def _stream(self, op: Operation, handle: Store, req: Any) -> Response:
        """A streamed answer (JSON lines): the first line read before the status is sent."""

        def start() -> tuple[bytes, Iterator[bytes]]:
            lines = op.call(handle, req)
            assert not isinstance(lines, bytes)  # noqa: S101  # a streaming operation
            return next(lines, b""), lines

        first, rest = await self.call(start)

        async def body() -> AsyncIterator[bytes]:
            yield first
            while batch := await anyio.to_thread.run_sync(_take, rest):
                yield batch

        return StreamingResponse(body(), media_type="application/x-ndjson")

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: 200 when the store answers a read, else an error (503)."""

        async def probe() -> Response:
            await self.call(lambda: self.store.backend.exists(self.health_ref))
            return Response(b'{"status":"ok"}', media_type=_JSON)

        return await self.guarded(probe, min(self.timeout, _HEALTH_TIMEOUT_SECONDS))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors as JSON: no such path (404), a method it does not take (405)."""
    assert isinstance(exc, HTTPException)  # noqa: S101  # registered for HTTPException
    if exc.status_code == 404:
        return _error(ApiError("not_found_route", f"no such path: {request.url.path}"))
    if exc.status_code == 405:
        err = ApiError("method_not_allowed", f"{request.method} not allowed here")
        return _error(err, dict(exc.headers or {}))
    return _error(ApiError("bad_request", str(exc.detail)))


async def _internal(request: Request, exc: Exception) -> Response:
    return _error(ApiError("internal", "internal server error (see the server's log)"))


def create_app(
    store: Store,
    token: str | None = None,
    *,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    access_log: TextIO | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """The API over ``store``; it closes the store when it shuts down.

    Args:
        store: the store every request uses (per request, through ``for_caller``).
        token: the bearer token every path but ``/healthz`` needs; None: no auth.
        request_timeout: seconds a request may take before it answers 503 ``timeout``.
        access_log: where the JSON-lines access log goes (default: stderr).
        max_body_bytes: the largest request body read (413 ``body_too_large`` above).
    """
    api = _Api(store, request_timeout, max_body_bytes)
    metrics = _Metrics()

    async def serve_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await anyio.to_thread.run_sync(api.calls.wait_idle, DRAIN_TIMEOUT_SECONDS)
        store.close()

    routes = [
        *(Route(f"/v1/{n}", api.endpoint(n, op), methods=["POST"]) for n, op in OPERATIONS.items()),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", serve_metrics, methods=["GET"]),
    ]
    middleware = [Middleware(_Observe, log=access_log or sys.stderr, metrics=metrics)]
    if token is not None:
        middleware.append(Middleware(_Guard, token=token))
    handlers = {HTTPException: _http_error, Exception: _internal}
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan
    )
