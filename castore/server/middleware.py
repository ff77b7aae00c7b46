"""Around the routes: the request id, the access log, the metrics and the bearer token.

:class:`Observe` gives each request an id (``X-Request-Id``, the client's if it
is sane), writes one JSON line to the access log and counts it in
:class:`Metrics`; :class:`Guard` checks the bearer token, compared in
constant time. Neither ever logs a header (the token), a query or a body.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import re
import secrets
import time
from typing import Final, TextIO

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from castore.results import rfc3339
from castore.server.errors import ApiError, error_response
from castore.server.operations import OPERATIONS
from castore.server.streaming import CUT
from castore.wire import CALLS, PEER_HEADER

__all__ = ["AccessLog", "Guard", "Metrics", "Observe", "operation_of"]

_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_PIPE_BUF: Final = 4096  # POSIX: a pipe write of at most this many bytes is atomic
_CHILDREN_KEPT: Final = 1024  # (path, status) pairs whose metric children are kept
_PUBLIC: Final = frozenset({"/healthz"})  # the paths that need no token
_PEER: Final = PEER_HEADER.encode("ascii")  # ASGI header names are lowercase bytes


class Metrics:
    """Request counts and latencies per operation, in a registry of their own.

    With ``shared_dir`` (the processes of one server, each counting in files
    there), :meth:`exposition` sums every process's counts.
    """

    def __init__(self, shared_dir: str | None = None) -> None:
        self.shared_dir = shared_dir
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
        # (path, status) -> the two metrics' children: labels() takes a lock and a lookup
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request of ``path``."""
        children = self._children.get((path, status))
        if children is None:
            if len(self._children) >= _CHILDREN_KEPT:  # paths are the client's: bounded
                self._children.clear()
            operation = operation_of(path)
            children = self._children[path, status] = (
                self.requests.labels(operation, str(status)),
                self.seconds.labels(operation),
            )
        children[0].inc()
        children[1].observe(seconds)


def operation_of(path: str) -> str:
    """The metrics label of a path: an operation, ``backend.<call>``, ``healthz``, ``metrics``."""
    name = path.removeprefix("/v1/")
    if name != path and name in OPERATIONS:
        return name
    call = path.removeprefix("/v1/backend/")
    if call != path and call in CALLS:
        return f"backend.{call}"
    return {"/healthz": "healthz", "/metrics": "metrics"}.get(path, "other")


class AccessLog:
    """The access log's lines, written and flushed once per turn of the event loop.

    One ``write`` (of at most ``PIPE_BUF`` bytes, whole lines) for the requests
    answered in a turn, not one per request;
    :meth:`flush` also runs when the app shuts down. A failing log (closed,
    full) never fails a request.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lines: list[str] = []

    def add(self, line: str) -> None:
        """Queue ``line`` (with its newline); the first of a turn schedules the flush."""
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.append(line)

    def flush(self) -> None:
        """Write and flush the queued lines, in writes of at most ``PIPE_BUF`` bytes.

        Whole lines only: the processes of one server may share a pipe (their
        stderr), and only a write of at most ``PIPE_BUF`` bytes to a pipe is
        never interleaved with another's.
        """
        lines, self._lines = self._lines, []
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                length = len(line.encode("utf-8"))
                if chunk and size + length > _PIPE_BUF:
                    self._write("".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += length
            if chunk:
                self._write("".join(chunk))
        except (OSError, ValueError):
            pass

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class Observe:
    """ASGI middleware: the request id, one access-log line and the metrics of each request.

    The line holds the time, method, path, status, duration, request id and the
    answering process's id (one of several, with ``--processes``): never a header (the
    token), a query string or a body (a value); lines go out once per turn of the
    event loop (:class:`AccessLog`). A generated request id is this process's
    random prefix and a counter.
    """

    def __init__(self, app: ASGIApp, log: AccessLog, metrics: Metrics) -> None:
        self.app, self.log, self.metrics = app, log, metrics
        self.pid = os.getpid()
        self._prefix = secrets.token_hex(6)
        self._count = itertools.count(1)

    def _request_id(self) -> str:
        if self.pid != os.getpid():  # a forked process: ids of its own
            self.pid, self._prefix = os.getpid(), secrets.token_hex(6)
        return f"{self._prefix}{next(self._count):x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (ASGI), then log and count it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, ended = time.perf_counter(), 500, False
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else self._request_id()

        async def send_with_id(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                ended = True

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            path = str(scope["path"])[:256]
            self.metrics.observe(path, status, seconds)
            if path != "/healthz" or _PEER not in dict(scope["headers"]):  # a member's look
                cut = None if ended else str(scope.get(CUT, "disconnected"))
                self._write(str(scope["method"])[:16], path, status, seconds, request_id, cut)

    def _write(
        self, method: str, path: str, status: int, seconds: float, rid: str, cut: str | None
    ) -> None:
        line: dict[str, object] = {
            "time": rfc3339(time.time_ns()),
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": rid,
            "pid": self.pid,
        }
        if cut is not None:  # the answer ended without its end: why
            line["cut"] = cut
        self.log.add(msgspec.json.encode(line).decode("utf-8") + "\n")


class Guard:
    """ASGI middleware: every path but ``/healthz`` needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (ASGI) if it needs no token or has the right one, else 401."""
        if scope["type"] != "http" or scope["path"] in _PUBLIC or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        err = ApiError("unauthorized", "missing or wrong bearer token")
        response = error_response(err, {"WWW-Authenticate": 'Bearer realm="castore"'})
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(given.strip(), self.token)
