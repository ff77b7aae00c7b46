"""A TLS-terminating forwarder on loopback: ``https://`` in front, plain TCP to a server behind.

What docs/SERVER.md prescribes off one machine (a TLS-terminating proxy in front
of ``castore serve``), with nothing but the standard library: each connection's
handshake is made with the certificate of ``tests/data/tls`` (``server.pem``, for
``localhost`` and ``127.0.0.1``, signed by ``ca.pem``; both valid 2000-2100, the
CA's private key discarded), then its bytes are copied both ways to
``127.0.0.1:upstream``. A client that does not trust ``ca.pem`` fails the
handshake, and the connection is closed. While the server is down (its port
refuses), a request is answered 502, as nginx answers it.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import ssl
import threading

__all__ = ["CA", "TlsProxy"]

_DIR = pathlib.Path(__file__).parent.parent / "data" / "tls"
CA = str(_DIR / "ca.pem")


class TlsProxy:
    """A forwarder on a free loopback port (``url``) to ``127.0.0.1:upstream``."""

    def __init__(self, upstream: int, port: int = 0) -> None:
        self.upstream = upstream
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(_DIR / "server.pem", _DIR / "server.key")
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"https://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):  # the client refused the certificate, or went away
            conn.close()
            return
        try:
            behind = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:  # the server is down: a 502 to the request, as nginx answers
            _bad_gateway(tls)
            return
        threading.Thread(target=_pump, args=(behind, tls), daemon=True).start()
        _pump(tls, behind)


def _bad_gateway(tls: ssl.SSLSocket) -> None:
    """Answer the request's head with nginx's 502 (no castore header), then close."""
    head = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in head and len(head) < 65536:
            if not (data := tls.recv(4096)):
                break
            head += data
        body = b"<html><head><title>502 Bad Gateway</title></head></html>\r\n"
        tls.sendall(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
    with contextlib.suppress(OSError):
        tls.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either ends; then close both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.close()
