"""Several server processes on one port: ``castore serve --processes N`` (docs/SERVER.md).

One Python process serves HTTP on one core, so a server on a multi-core host
forks more. Each server process is a child with a listening socket of its
own, all bound to the same port with ``SO_REUSEPORT`` (the kernel spreads new
connections over them evenly; one shared socket would hand most of them to
whichever process wakes first), its own event loop and its own use of the
store (the file store is safe for concurrent processes; a PostgreSQL store
opens its own pool of connections per process). The parent only supervises:

- it forks the children and keeps every socket, so connections that arrive
  while a child is being replaced wait in that socket's queue;
- SIGTERM or SIGINT to the parent closes its copies of the sockets (a new
  connection is refused once every child stopped listening, not left
  waiting) and sends SIGTERM to each child (each finishes its requests in
  flight, as a lone server does); a second signal sends it again (each
  stops at once, as a lone server does on a second SIGINT). A child still
  running ``stop_timeout`` seconds after the first is killed; the parent
  exits 0 when every child exited 0;
- a child that exits on its own (killed, crashed) is replaced, unless
  children keep failing within a second of their start: each such one is
  replaced a second later, and after :data:`FAST_FAILURES` in a row the
  parent stops the others and exits 1;
- each child runs in a process group of its own (a terminal's Ctrl-C
  reaches only the parent, which forwards it) and begins its graceful stop
  when the parent is gone (it checks its parent process every half second).

Every change is one JSON line on stderr (``process-started``,
``process-exited``, ``stopping``), like the server's start line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Final

import msgspec

from castore.results import rfc3339

__all__ = ["FAST_FAILURES", "Supervisor"]

FAST_FAILURES: Final = 5  # children in a row that die within FAST_SECONDS: give up
FAST_SECONDS: Final = 1.0
_POLL_SECONDS: Final = 0.05
_ORPHAN_CHECK_SECONDS: Final = 0.5
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def _event(name: str, **fields: object) -> None:
    line = {"time": rfc3339(time.time_ns()), "event": name, **fields}
    try:
        sys.stderr.write(msgspec.json.encode(line).decode("utf-8") + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed stderr never stops the supervisor
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        return f"signal {signum}"


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {_signal_name(os.WTERMSIG(status))}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def _stop_child(signum: int, frame: FrameType | None) -> None:
    """A child's stop signal when its server is not serving (it unblocked them early)."""
    raise SystemExit(0)


def _watch_parent(parent: int) -> None:
    """In a child: SIGTERM to itself once its parent is gone (killed with SIGKILL, say)."""
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Forks one child per socket, replaces the ones that die, stops them on a signal.

    Args:
        sockets: listening sockets, one per child (``SO_REUSEPORT`` on one port).
        serve: what a child runs with its socket; its return is the child's exit code.
            It is called with SIGTERM and SIGINT blocked (a stop that comes meanwhile
            waits): it unblocks them once its server handles them.
        stop_timeout: seconds a child may take to stop after SIGTERM before it is killed.
    """

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        serve: Callable[[socket.socket], int],
        stop_timeout: float,
    ) -> None:
        self._sockets = list(sockets)
        self._serve = serve
        self._stop_timeout = stop_timeout
        self._children: dict[int, tuple[int, float]] = {}  # pid -> (socket index, start time)
        self._stopping = False
        self._failed = False
        self._deadline = 0.0
        self.stopped_by: signal.Signals | None = None  # the signal that stopped the server

    def run(self) -> int:
        """Serve until a signal or too many failures: 0 if every child stopped cleanly, else 1."""
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _STOP_SIGNALS}
        try:
            for index in range(len(self._sockets)):
                self._spawn(index)
            clean = self._supervise()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for sock in self._sockets:
                sock.close()
        return 0 if clean and not self._failed else 1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:  # a second signal: the children stop at once
            _event("stopping", reason=f"{_signal_name(signum)} again: at once")
            for pid in self._children:
                self._signal(pid, signal.SIGTERM)
            return
        self.stopped_by = signal.Signals(signum)
        _event("stopping", reason=self.stopped_by.name)
        self._stop_all()

    def _stop_all(self) -> None:
        self._stopping = True
        self._deadline = time.monotonic() + self._stop_timeout
        for sock in self._sockets:  # refused once the children stop listening
            sock.close()
        for pid in self._children:
            self._signal(pid, signal.SIGTERM)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
            os.kill(pid, signum)

    def _supervise(self) -> bool:
        """Reap and replace children until none is left; True if each exited 0 after the stop."""
        clean, fast = True, 0
        restarts: dict[int, float] = {}  # socket index -> when its next child starts
        while self._children or (restarts and not self._stopping):
            pid, status = os.waitpid(-1, os.WNOHANG) if self._children else (0, 0)
            now = time.monotonic()
            if pid == 0:
                self._tick(restarts, now)
                continue
            if pid not in self._children:
                continue
            index, started = self._children.pop(pid)
            _event("process-exited", pid=pid, status=_status_text(status))
            if self._stopping:
                clean = clean and os.waitstatus_to_exitcode(status) == 0
                continue
            fast = fast + 1 if now - started < FAST_SECONDS else 0
            if fast >= FAST_FAILURES:
                _event("stopping", reason=f"{fast} processes in a row exited within a second")
                self._failed = True
                self._stop_all()
            restarts[index] = now + (FAST_SECONDS if fast else 0.0)
        return clean

    def _tick(self, restarts: dict[int, float], now: float) -> None:
        """Between reaps: kill children past the stop deadline, start the replacements due."""
        if self._stopping and now > self._deadline:
            for child in self._children:
                self._signal(child, signal.SIGKILL)
        for index, due in list(restarts.items()):
            if due <= now and not self._stopping:
                del restarts[index]
                self._spawn(index)
        time.sleep(_POLL_SECONDS)

    def _spawn(self, index: int) -> None:
        """Fork the child of socket ``index``, signals blocked until it has its own handlers."""
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            if self._stopping:  # a stop came in after the caller looked
                return
            pid = os.fork()
            if pid == 0:  # the child: never returns
                code = 1
                try:
                    code = self._child(index, parent)
                except BaseException:  # noqa: BLE001  # anything: say it, then exit 1
                    traceback.print_exc()
                finally:
                    os._exit(code)
            with contextlib.suppress(OSError):  # the child may have done it already
                os.setpgid(pid, pid)
            self._children[pid] = (index, time.monotonic())  # before a stop is delivered
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        _event("process-started", pid=pid)

    def _child(self, index: int, parent: int) -> int:
        os.setpgid(0, 0)  # before any signal: a terminal's Ctrl-C is the parent's alone
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _stop_child)  # still blocked: ``serve`` unblocks them
        for other, sock in enumerate(self._sockets):
            if other != index:
                sock.close()
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
        try:
            code = self._serve(self._sockets[index])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        return code
