"""A fork server for the CLI tests: ``castore`` commands without an interpreter start each.

A command of the CLI suites is a fresh ``python -m castore`` process; most of its
time is the interpreter's start and the imports (a third of a second with
psycopg, for each of thousands of commands). This server imports castore once,
then forks a process per command, which sets up what a fresh process would
have (argv, environment, working directory, umask, standard input, output and
error) and runs the command line's entry point (:func:`castore.cli.run`).
:class:`tests.helpers.Cli` uses it where nothing of the start-up is under test
(the default entry, no failpoints, the same interpreter settings), and a real
subprocess otherwise, or everywhere with ``CASTORE_TEST_REAL_CLI=1``.

Protocol, one Unix-socket connection per command: the client sends one JSON
line (``argv``, ``env``, ``cwd``, ``umask`` and ``stdin``, bytes as hex; the
paths ``out`` and ``err``); the server answers the command's process id,
then its exit code as :func:`os.waitstatus_to_exitcode` gives it (a signal's
negative number), one line each. Each connection is served by a child of the
server, which forks the command and waits for it, so commands run
concurrently while the server itself stays single-threaded. The server ends
when its standard input (the test process's pipe) closes.

Run as ``python -m tests.cliserver NAME``: it listens on the abstract Unix socket
``NAME`` (Linux: no file, so no path length limit and nothing left behind).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any


def _preload() -> None:
    """Import what commands import, so that a forked command starts with it loaded."""
    for module in ("castore.cli", "castore.store"):
        __import__(module)
    for optional in ("castore.postgres.backend", "castore.remote.backend"):
        with contextlib.suppress(ImportError):  # an install without the extra
            __import__(optional)


def _command(request: dict[str, Any], stdin: int) -> None:
    """In the command's process: become the fresh process the request describes; run it."""
    code = 1
    try:
        os.dup2(stdin, 0)
        os.close(stdin)  # only 0, 1 and 2 are open, as in a subprocess (but the server's own)
        for fd, path in ((1, request["out"]), (2, request["err"])):
            opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(
            {
                os.fsdecode(bytes.fromhex(k)): os.fsdecode(bytes.fromhex(v))
                for k, v in request["env"]
            }
        )
        import castore.cli

        main = os.path.join(os.path.dirname(castore.cli.__file__), os.pardir, "__main__.py")
        sys.argv = [os.path.normpath(main)] + [
            os.fsdecode(bytes.fromhex(a)) for a in request["argv"]
        ]
        try:
            castore.cli.run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        atexit._run_exitfuncs()  # what the interpreter's exit runs (handles' finalizers)
    except BaseException:  # noqa: BLE001 - as an interpreter would: a traceback, exit 1
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the output is gone: the code still counts
            stream.flush()
    os._exit(code & 0xFF)


def _serve(conn: socket.socket) -> None:
    """In a child of the server: run one command and report its process id and exit code."""
    reader = conn.makefile("rb")
    request = json.loads(reader.readline())
    data = request["stdin"]
    if data is None:
        stdin = os.open(os.devnull, os.O_RDONLY)
        feed = -1
    else:
        stdin, feed = os.pipe()
    pid = os.fork()
    if pid == 0:
        conn.close()
        if feed >= 0:
            os.close(feed)
        _command(request, stdin)
    os.close(stdin)
    conn.sendall(f"{pid}\n".encode())
    if feed >= 0:
        try:
            with open(feed, "wb") as pipe:
                pipe.write(bytes.fromhex(data))
        except BrokenPipeError:  # the command did not read it all: as with a subprocess
            pass
    _, status = os.waitpid(pid, 0)
    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)


def main(name: str) -> None:
    """Listen on the abstract socket ``name``; fork a child per connection until stdin closes."""
    _preload()
    control, hello = os.dup(0), os.dup(1)  # the test process's pipes: control closes with it
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(128)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    os.write(hello, b"ready\n")
    os.close(hello)
    _accept(server, control)


def _accept(server: socket.socket, control: int) -> None:
    """Fork a child per connection to ``server`` until ``control`` (a pipe) closes."""
    while True:
        ready, _, _ = select.select([server.fileno(), control], [], [])
        if control in ready and not os.read(control, 1):
            return
        if server.fileno() in ready:
            conn, _ = server.accept()
            if os.fork() == 0:
                server.close()
                os.close(control)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                try:
                    _serve(conn)
                finally:
                    os._exit(1)
            conn.close()


if __name__ == "__main__":
    main(sys.argv[1])
