"""The test process's side of :mod:`tests.cliserver`: ``castore`` commands through the fork server.

One server per test process (pytest-xdist worker), started on first use with the
environment every :class:`tests.helpers.Cli` gives (``PYTHONPATH``, ``LC_ALL``), and
ended with that process. :func:`run` answers as :func:`subprocess.run` would, with
``capture_output=True``: the same ``CompletedProcess``, or ``TimeoutExpired`` after
the command was killed.
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any

# What is fixed when the server starts: a command whose environment gives these
# another value (or arms a failpoint, read at import) runs as a real subprocess.
_START_UP = ("PYTHON", "LC_", "LANG", "CASTORE_FAILPOINTS")
_REAL = os.environ.get("CASTORE_TEST_REAL_CLI") == "1"


class _Server:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.address = ""  # the server's socket: a Linux abstract name (a NUL, then the name)
        self.pid = 0  # the process that started the server (a forked child starts its own)

    def started(self, env: dict[str, str]) -> str:
        """The server's socket address (started with ``env``'s start-up variables first).

        An abstract socket name, not a path: a path below a long ``TMPDIR`` would pass
        the 108 bytes of an ``AF_UNIX`` address, and nothing is left on disk.
        """
        with self.lock:
            if self.proc is None or self.proc.poll() is not None or os.getpid() != self.pid:
                name = f"castore-cli-{os.getpid()}-{secrets.token_hex(8)}"
                self.env = {k: v for k, v in env.items() if k.startswith(_START_UP) or k == "PATH"}
                root = str(pathlib.Path(__file__).resolve().parents[1])
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.cliserver", name],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    env={**self.env, "PYTHONPATH": f"{root}{os.pathsep}{env['PYTHONPATH']}"},
                    cwd=root,
                )
                self.address = "\0" + name
                self.pid = os.getpid()
                assert self.proc.stdout is not None
                assert self.proc.stdout.readline() == b"ready\n", (
                    "the CLI fork server did not start"
                )
            return self.address

    def stop(self) -> None:
        if self.proc is not None and os.getpid() == self.pid:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the server ends when its standard input does
            self.proc.wait(30)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


_SERVER = _Server()
atexit.register(_SERVER.stop)


def serves(env: dict[str, str], stdin: Any) -> bool:
    """Whether a command with ``env`` and ``stdin`` (None: bytes given) can run forked."""
    if _REAL or stdin not in (None, subprocess.DEVNULL):
        return False
    if not _SERVER.env:
        return "CASTORE_FAILPOINTS" not in env
    fixed = {k: v for k, v in env.items() if k.startswith(_START_UP) or k == "PATH"}
    return fixed == _SERVER.env


def _umask() -> int:
    """This process's umask, read without setting it (other threads may be creating files)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc/self/status")


def _hex(value: str | bytes | os.PathLike[str]) -> str:
    return os.fsencode(value).hex()


def run(
    argv: list[Any], env: dict[str, str], cwd: Any, feed: bytes | None, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (``python -m castore ARGS``) forked by the server, as subprocess.run would."""
    address = _SERVER.started(env)
    with tempfile.TemporaryDirectory(prefix="castore-cmd-") as work:
        out, err = os.path.join(work, "out"), os.path.join(work, "err")
        request = {
            "argv": [_hex(a) for a in argv[3:]],
            "env": [[_hex(k), _hex(v)] for k, v in env.items()],
            "cwd": os.fspath(cwd),
            "umask": _umask(),
            "stdin": None if feed is None else feed.hex(),
            "out": out,
            "err": err,
        }
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(address)
            conn.sendall(json.dumps(request).encode() + b"\n")
            answers = conn.makefile("rb")
            pid = int(answers.readline())
            try:
                code = int(answers.readline())
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(argv, timeout) from None
        with open(out, "rb") as stdout, open(err, "rb") as stderr:
            return subprocess.CompletedProcess(argv, code, stdout.read(), stderr.read())
