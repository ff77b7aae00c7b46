"""Run the server: the token, the listening socket and its checks, uvicorn.

:func:`run_server` is what ``castore serve`` runs. Before anything is served:
the token comes from ``--token-file`` or ``$CASTORE_TOKEN`` (refused when
empty, short or not printable ASCII, or when the file is writable by others),
and an address that is not loopback is refused without a token. The socket
is bound here, so the start line on stderr names the real port (``:0`` picks
a free one). uvicorn serves the app; on SIGTERM it stops accepting, finishes
the requests in flight, and the app closes the store; then the process exits 0
(docs/SERVER.md, "Shutdown").
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType
from typing import Final, TextIO
from urllib.parse import urlsplit

import msgspec
import uvicorn

from castore.cluster import Cluster, parse_members
from castore.results import rfc3339
from castore.server.app import DRAIN_TIMEOUT_SECONDS, create_app
from castore.server.membership import Membership
from castore.server.onesend import OneSendProtocol, every_descriptor
from castore.server.prefork import Supervisor
from castore.store import Store
from castore.urls import redacted

__all__ = [
    "DEFAULT_LISTEN",
    "MAX_PROCESSES",
    "MIN_TOKEN_CHARS",
    "ServeError",
    "bind",
    "bind_all",
    "load_token",
    "parse_listen",
    "run_server",
]

DEFAULT_LISTEN: Final = "127.0.0.1:7070"
MIN_TOKEN_CHARS: Final = 16
SHUTDOWN_TIMEOUT_SECONDS: Final = 60.0
MAX_PROCESSES: Final = 64  # each holds its own caches (about 35 MB): more is a typo
_KILL_MARGIN_SECONDS: Final = 10.0  # past a child's longest graceful stop, before SIGKILL
_TOKEN_FILE_MAX: Final = 4096


class ServeError(Exception):
    """A server setting that cannot be used (``castore serve`` exits 2 with its message)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:7070`` for IPv6) as a host and a port.

    Raises:
        ServeError: not HOST:PORT, or the port is not 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ServeError(f"--listen {text!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def _check_token(token: str, source: str) -> str:
    if not token:
        raise ServeError(f"{source}: the token is empty")
    if len(token) < MIN_TOKEN_CHARS:
        raise ServeError(
            f"{source}: the token has {len(token)} characters; use at least "
            f"{MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)"
        )
    if not all("!" <= char <= "~" for char in token):
        raise ServeError(f"{source}: the token must be printable ASCII without spaces")
    return token


def _read_token_file(path: str) -> str:
    source = f"--token-file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would block the open
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):  # checked before any read: a FIFO blocks it
                raise ServeError(f"{source}: not a regular file")
            with open(fd, "rb", closefd=False) as fh:
                data = fh.read(_TOKEN_FILE_MAX + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ServeError(f"{source}: {exc.strerror or exc}") from None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ServeError(f"{source}: writable by group or others; chmod 600 it")
    if len(data) > _TOKEN_FILE_MAX:
        raise ServeError(f"{source}: larger than {_TOKEN_FILE_MAX} bytes: not a token")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ServeError(f"{source}: the token must be printable ASCII without spaces") from None
    return _check_token(text, source)


def load_token(token_file: str | None) -> str | None:
    """The bearer token: the file's content (trailing newline stripped), else ``$CASTORE_TOKEN``.

    Returns None when neither is given (no authentication).

    Raises:
        ServeError: the file cannot be read or is writable by others; the token is
            empty, shorter than :data:`MIN_TOKEN_CHARS` or not printable ASCII.
    """
    if token_file is not None:
        return _read_token_file(token_file)
    value = os.environ.get("CASTORE_TOKEN")
    return None if value is None else _check_token(value, "$CASTORE_TOKEN")


def bind(host: str, port: int, token: str | None, *, reuse_port: bool = False) -> socket.socket:
    """A socket listening on ``host:port``; a non-loopback address needs a token.

    With ``reuse_port``, other sockets of this user may listen on the same port
    (``SO_REUSEPORT``: the kernel spreads connections over them), as server processes do.

    Raises:
        ServeError: the host does not resolve, or is not loopback and ``token`` is None.
        OSError: the address cannot be bound (in use, not local).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"--listen {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    if token is None and not ip.is_loopback:
        raise ServeError(
            f"refusing to listen on {ip} (not a loopback address) without a token: "
            "give --token-file FILE or set $CASTORE_TOKEN"
        )
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, exc.strerror, f"{host}:{port}") from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _membership(cluster: str | None, self_url: str | None) -> Membership:
    """The cluster of ``--cluster`` and ``--self`` (both or neither).

    Raises:
        ServeError: only one of them, a bad URL, or ``--self`` not in the list.
    """
    if cluster is None and self_url is None:
        return Membership()
    if cluster is None or self_url is None:
        raise ServeError("--cluster and --self go together")
    try:
        return Membership(Cluster(parse_members(cluster)), self_url)
    except ValueError as exc:
        raise ServeError(str(exc)) from None


def bind_all(host: str, port: int, token: str | None, count: int) -> list[socket.socket]:
    """``count`` sockets listening on one port (a free one, if ``port`` is 0).

    One plain socket for one process; else each has ``SO_REUSEPORT``
    (:mod:`castore.server.prefork`), after a plain socket was bound to the port
    and closed: a port another server holds is refused, as for one process,
    never shared with it. Raises as :func:`bind`.
    """
    probe = bind(host, port, token)
    if count == 1:
        return [probe]
    port = probe.getsockname()[1]
    probe.close()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sockets.append(bind(host, port, token, reuse_port=True))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown (it raises the signal again): exit 0."""
    raise SystemExit(0)


def _unblock_stop_signals() -> None:
    """Once uvicorn handles SIGTERM and SIGINT: let them in (one may be waiting)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))


def _share_metrics(directory: str) -> None:
    """In a child: count metrics in files below ``directory``; /metrics sums every process's.

    prometheus_client's multi-process mode: its value class is chosen when the
    package is imported, from ``PROMETHEUS_MULTIPROC_DIR``; a child already
    imported it, so the class is swapped here, before the app makes its metrics.
    """
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def _runner(
    store: Store,
    token: str | None,
    membership: Membership,
    log: TextIO,
    request_timeout: float | None,
    shutdown_timeout: float,
) -> Callable[[socket.socket, str | None, Callable[[], None] | None], int]:
    """What one server process runs: the app on uvicorn, on a socket, until SIGTERM (exit 0).

    Its arguments: the socket, where processes count metrics, what to call once serving.
    """

    def serve(
        sock: socket.socket, metrics_dir: str | None, started: Callable[[], None] | None
    ) -> int:
        membership.watch()  # in this process, before it serves (castore.server.peers)
        app = create_app(
            store,
            token,
            request_timeout=request_timeout,
            access_log=log,
            membership=membership,
            metrics_dir=metrics_dir,
            started=started,
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            http=OneSendProtocol,
            timeout_graceful_shutdown=max(1, round(shutdown_timeout)),
        )
        signal.signal(signal.SIGTERM, _stop)
        uvicorn.Server(config).run(sockets=[sock])
        return 0

    return serve


def _check_servable(store: Store) -> None:
    """ServeError for another server's store: its own request ids would hide resends."""
    if store.root.partition("://")[0].lower() in ("http", "https"):  # docs/SERVER.md
        what = "serves a directory or a PostgreSQL URL, not another castore server"
        raise ServeError(f"{store.root}: castore serve {what} (point workers at that server)")


def run_server(
    store: Store,
    *,
    listen: str = DEFAULT_LISTEN,
    token_file: str | None = None,
    request_timeout: float | None = None,
    access_log: str | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_SECONDS,
    cluster: str | None = None,
    self_url: str | None = None,
    processes: int = 1,
) -> None:
    """Serve ``store`` until SIGTERM or SIGINT (what ``castore serve`` runs).

    With ``cluster`` (comma-separated URLs) and ``self_url`` (this server's
    URL in it), the server serves only the keyspaces it owns under that list,
    to clients with the same list (:mod:`castore.server.membership`). With
    ``processes`` above 1, that many forked processes serve the port
    (:mod:`castore.server.prefork`); ``store`` must not have been used yet.

    Writes one JSON line to stderr when listening (``{"event":"listening","url":…}``),
    then the access log (to ``access_log``, a file appended to, else stderr).

    Raises:
        ServeError: a setting or ``store`` that cannot be used (:func:`load_token`, :func:`bind`).
        OSError: the address cannot be bound, or the access log cannot be opened.
        SystemExit: 1 when the processes kept failing, or one did not stop cleanly.
        KeyboardInterrupt: processes stopped by SIGINT (``castore serve`` exits 130).
    """
    _check_servable(store)
    if request_timeout is not None and not request_timeout > 0:  # nan too; inf: no limit
        raise ServeError(f"--request-timeout {request_timeout}: give seconds above 0 (or inf)")
    if not 0 < shutdown_timeout < math.inf:
        raise ServeError(f"--shutdown-timeout {shutdown_timeout}: give seconds above 0")
    if not 1 <= processes <= MAX_PROCESSES:
        raise ServeError(f"--processes {processes}: give 1 to {MAX_PROCESSES}")
    membership = _membership(cluster, self_url)
    token = load_token(token_file)
    sockets = bind_all(*parse_listen(listen), token, processes)
    every_descriptor()
    signal.signal(signal.SIGTERM, _stop)  # from here on, SIGTERM is a clean stop
    # and SIGINT an interruption (exit 130), even where it was ignored (`castore serve &`
    # in a script): uvicorn stops on it, then raises it again under the handler it found
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        log: TextIO = open(access_log, "a", encoding="utf-8") if access_log else sys.stderr  # noqa: SIM115
    except OSError as exc:
        raise ServeError(f"--access-log {access_log}: {exc.strerror or exc}") from None

    serve = _runner(store, token, membership, log, request_timeout, shutdown_timeout)
    _announce(sockets[0], store, token, membership, processes)
    if processes == 1:  # a stop before uvicorn handles signals waits for it (clean exit)
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
        serve(sockets[0], None, _unblock_stop_signals)
        return
    _supervise(sockets, serve, shutdown_timeout)


def _supervise(
    sockets: list[socket.socket],
    serve: Callable[[socket.socket, str | None, Callable[[], None] | None], int],
    shutdown_timeout: float,
) -> None:
    """Serve with one forked process per socket, counting metrics in a shared directory.

    Raises:
        SystemExit: 1 when the processes kept failing, or one did not stop cleanly.
        KeyboardInterrupt: the processes were stopped by SIGINT.
    """
    supervisor_pid = os.getpid()
    with tempfile.TemporaryDirectory(prefix="castore-metrics-") as shared:

        def child(sock: socket.socket) -> int:
            _share_metrics(shared)
            try:
                return serve(sock, shared, _unblock_stop_signals)
            finally:
                if os.getppid() != supervisor_pid:  # it was killed: nobody else removes it
                    shutil.rmtree(shared, ignore_errors=True)

        # a child may wait for abandoned store calls after its requests: then it is killed
        stop_timeout = shutdown_timeout + DRAIN_TIMEOUT_SECONDS + _KILL_MARGIN_SECONDS
        supervisor = Supervisor(sockets, child, stop_timeout)
        code = supervisor.run()
    if code:
        raise SystemExit(code)
    if supervisor.stopped_by == signal.SIGINT:
        raise KeyboardInterrupt  # exit 130, as a single process stopped by SIGINT


def _announce(
    sock: socket.socket, store: Store, token: str | None, membership: Membership, processes: int
) -> None:
    """The start line on stderr: where, which store, whether a token is needed, the cluster."""
    start: dict[str, object] = {
        "time": rfc3339(time.time_ns()),
        "event": "listening",
        "url": _url(sock),
        "store": redacted(store.root),
        "auth": token is not None,
    }
    if processes > 1:
        start["processes"] = processes
    if membership.cluster is not None:
        start["cluster"] = membership.cluster.members
        start["digest"] = membership.cluster.digest
        start["self"] = membership.self_url
        mine, listening = urlsplit(membership.self_url).port, sock.getsockname()[1]
        if mine != listening:  # clients routed to --self reach another process, or none
            start["warning"] = (
                f"--self names port {mine}, this server listens on {listening}: right only "
                "behind a proxy or port forward that clients reach at --self"
            )
    sys.stderr.write(msgspec.json.encode(start).decode("utf-8") + "\n")
    sys.stderr.flush()
