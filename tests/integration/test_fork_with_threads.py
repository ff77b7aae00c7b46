"""A child forked while other threads of the parent use a handle can use it (castore/forks.py).

``multiprocessing``'s default start method on Linux forks a process whose
other threads may be inside a call on a shared handle: the child inherits the
thread locks they held, held for good. The child's calls on the inherited
handle must neither deadlock nor leave a key's log locked for other processes.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import castore.file.stateappend as stateappend
import castore.file.statefile as statefile
from castore import Store
from castore.file.stateappend import append_frame
from tests.helpers import Cli, json_line

pytestmark = pytest.mark.integration

CHILD_SECONDS = 20.0  # a child that has not finished by then is deadlocked
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def _wait_for(pid: int, seconds: float = CHILD_SECONDS) -> int | None:
    """The child's exit code, or None (killed) if it did not end within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _in_child(work: Callable[[], bool]) -> int:
    """Fork; the child runs ``work`` and exits 0 if it returned True (1: False, 2: raised)."""
    pid = os.fork()
    if pid:
        return pid
    code = 2
    try:
        faulthandler.dump_traceback_later(CHILD_SECONDS - 2, exit=True)  # where it hangs
        code = 0 if work() else 1
    except BaseException as exc:  # noqa: BLE001 - any failure is the child's exit code
        os.write(2, f"child: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)


def test_a_child_forked_while_a_thread_appends_to_state_writes_and_wedges_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread holds ``STATE``'s handle lock (inside its append) when the main thread forks.

    The child's write of another key must finish with its version (it deadlocked on
    that lock, holding its key's log locked), and another process's write of that key
    must not time out.
    """
    root = str(tmp_path / "s")
    store = Store(root, dag="d", lock_timeout=3)
    store.set("a", 1)
    store.set("b", 1)
    store.list()  # makes STATE: every write now appends its P under the handle's lock
    inside, release = threading.Event(), threading.Event()
    real = append_frame

    def slow(*args: Any, **kwargs: Any) -> bool:
        if threading.current_thread().name == "writer":
            inside.set()
            release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(statefile, "append_frame", slow)
    writer = threading.Thread(target=store.set, args=("a", 2), name="writer")
    writer.start()
    assert inside.wait(10)
    child = _in_child(lambda: store.set("b", 2).version == 2)
    release.set()
    writer.join()
    monkeypatch.undo()
    code = _wait_for(child)
    other = Cli(tmp_path, root).run("--lock-timeout", "3", "set", "b", "3")
    assert code == 0, "the child's set of b did not finish with version 2 (deadlocked)"
    assert other.returncode == 0, other.stderr
    assert json_line(other)["version"] == 3
    assert store.get("a").version == 2


def _locks_below(root: object) -> Iterator[Any]:
    """Every thread lock reachable from ``root`` and castore's modules, through castore
    objects, classes and plain containers (what a handle's calls may take)."""
    modules = [m for name, m in sys.modules.items() if name.split(".")[0] == "castore"]
    stack: list[object] = [root, *modules]
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, _LOCK_TYPES):
            yield obj
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, types.ModuleType):
            if obj in modules:
                stack.extend(vars(obj).values())
        elif getattr(obj if isinstance(obj, type) else type(obj), "__module__", "").startswith(
            "castore"
        ):
            stack.extend(vars(obj).values() if hasattr(obj, "__dict__") else ())
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    stack.append(getattr(obj, slot, None))


def test_a_child_forked_while_another_thread_holds_every_lock_of_the_handle_can_use_it(
    store_location: str,
) -> None:
    """Every thread lock of the handle (and of castore's modules) is held by another thread
    at the fork: the child's calls on the inherited handle must all finish, right."""
    store = Store(store_location, dag="d", lock_timeout=3)
    big = {"pad": "x" * 600}  # a value a second key's write points at (>= 256 bytes)
    store.set("a", 1)
    store.set("big", big)
    store.list()
    assert store.get("a", version=1).value == 1
    locks = list(_locks_below(store))
    taken: list[Any] = []
    held, forked = threading.Event(), threading.Event()

    def hold() -> None:  # this thread holds them all at the fork
        taken.extend(lock for lock in locks if lock.acquire(blocking=False))
        held.set()
        forked.wait(30)
        for lock in taken:
            lock.release()

    def work() -> bool:
        results = [
            store.set("a", 2).version == 2,
            store.set("new", 1).version == 1,
            store.set("copy", big).version == 1,
            store.get("a").value == 2,
            store.get("a", version=1).value == 1,
            [e.key for e in store.list().entries] == ["a", "big", "copy", "new"],
            store.delete("new").deleted,
            len(store.history("a").entries) == 2,
        ]
        store.close()  # the handle's close lock was held at the fork too
        results.append(store.get("a").value == 2)
        os.write(2, f"child: {results}\n".encode())
        return all(results)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    assert len(taken) >= (1 if "://" in store_location else 10), len(taken)  # found some
    child = _in_child(work)
    forked.set()
    holder.join()
    assert _wait_for(child) == 0, "the child's calls deadlocked or answered wrong"
    assert store.get("a").version == 2  # the parent goes on, with the child's writes
    assert store.set("a", 3).version == 3


def test_a_child_forked_while_a_thread_holds_states_file_lock_appends_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread is writing inside ``STATE``'s ``flock`` when the main thread forks.

    The child's copy of the parent's append descriptor shares that lock (one open file):
    a child appending through it takes the lock at once and writes over the parent's
    frame, and a fresh handle's list then served key ``b``'s older version. The child
    must append through a descriptor of its own, waiting for the parent's lock. Oracle:
    every key's ``get`` (its log), and ``check``.
    """
    root = str(tmp_path / "s")
    store = Store(root, dag="d", lock_timeout=5)
    store.set("a", 1)
    store.set("b", 1)
    store.list()  # makes STATE: every write now appends its P under the file's flock
    inside, release = threading.Event(), threading.Event()
    real = stateappend._pwrite_all

    def slow(*args: Any) -> None:
        if threading.current_thread().name == "writer":
            inside.set()
            release.wait(10)
        real(*args)

    monkeypatch.setattr(stateappend, "_pwrite_all", slow)
    writer = threading.Thread(target=store.set, args=("a", 2), name="writer")
    writer.start()
    assert inside.wait(10)
    done_r, done_w = os.pipe()
    child = _in_child(lambda: store.set("b", 2).version == 2 and os.write(done_w, b"x") == 1)
    # A child sharing the parent's lock finishes now; one of its own waits for release.
    poller = select.poll()  # not select.select: a worker's descriptors may pass FD_SETSIZE
    poller.register(done_r, select.POLLIN)
    poller.poll(2000)
    release.set()
    writer.join()
    monkeypatch.undo()
    assert _wait_for(child) == 0
    os.close(done_r)
    os.close(done_w)
    fresh = Store(root, dag="d")
    listed = {e.key: e.version for e in fresh.list().entries}
    assert listed == {k: fresh.get(k).version for k in ("a", "b")} == {"a": 2, "b": 2}
    assert fresh.check().ok
