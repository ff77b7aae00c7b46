"""A forked child never keeps one of its parent's ``flock``s (castore/forks.py, fileio.py).

An ``flock`` belongs to the open file, which a forked child's copy of the
descriptor shares: a lock released only by closing the descriptor stays
held while a child forked meanwhile lives, and so does a lock its dead
parent held on a descriptor the child still has a copy of. The children
here never call castore (a ``multiprocessing`` worker, say): they sleep.
"""

from __future__ import annotations

import fcntl
import glob
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from castore import Store
from castore.file import statefile
from castore.file import tree as tree_mod
from castore.file import writer as writer_mod
from tests.helpers import CASTORE_PATH, Cli, json_line

pytestmark = pytest.mark.integration


@contextmanager
def sleeping_child() -> Iterator[int]:
    """A child forked now that sleeps (no castore call) until the block ends."""
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@contextmanager
def paused_in(thread_name: str, owner: Any, attr: str) -> Iterator[threading.Event]:
    """``owner.attr`` made to wait, in the named thread, until the block ends.

    Yields the event set once that thread is inside it.
    """
    real: Callable[..., Any] = getattr(owner, attr)
    inside, release = threading.Event(), threading.Event()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == thread_name:
            inside.set()
            release.wait(10)
        return real(*args, **kwargs)

    setattr(owner, attr, wrapper)
    try:
        yield inside
    finally:
        release.set()
        setattr(owner, attr, real)


@contextmanager
def forked_while(call: Callable[[], object], owner: Any, attr: str) -> Iterator[int]:
    """Run ``call`` in a thread and fork a child (sleeping until the block ends) while the
    thread is inside ``owner.attr``; the call has gone on and ended when the block begins."""
    with ExitStack() as stack:
        with paused_in("caller", owner, attr) as inside:
            thread = threading.Thread(target=call, name="caller")
            thread.start()
            assert inside.wait(10), f"the call never reached {attr}"
            child = stack.enter_context(sleeping_child())
        thread.join()
        yield child


def state_path(root: str) -> str:
    (path,) = glob.glob(os.path.join(root, "refs", "*", "*", "STATE"))
    return path


_VICTIM = textwrap.dedent(
    """
    import sys, time
    from castore import Store
    s = Store(sys.argv[1], dag="d")
    s.set("v", 0)  # keeps an append descriptor on STATE
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(2):  # a failure kept the descriptor: the second write failed the same way
        t = time.monotonic()
        try:
            s.set("v", 1)
            print(f"ok {time.monotonic() - t:.2f}s", flush=True)
        except Exception as e:
            print(f"{type(e).__name__} after {time.monotonic() - t:.2f}s", flush=True)
    """
)


def test_a_child_forked_while_list_rewrites_state_keeps_no_other_handle_from_writing(
    tmp_path: Path,
) -> None:
    """``list`` rewrote ``STATE`` and released its lock by closing: a child forked meanwhile
    kept the old file locked, and another process's handle, which kept a descriptor on it,
    failed every write in the namespace (5 s each) while the child lived."""
    root = str(tmp_path / "s")
    store = Store(root, dag="d")
    store.set("a", 0)
    store.list()  # STATE exists now
    env = {**os.environ, "PYTHONPATH": CASTORE_PATH}
    with subprocess.Popen(
        [sys.executable, "-c", _VICTIM, root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as victim:
        assert victim.stdin is not None
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "ready"
        for i in range(300):  # enough P frames that the next list snapshots STATE
            store.set("a", i)
        with forked_while(store.list, tree_mod.Tree, "atomic_write"):
            victim.stdin.write("go\n")
            victim.stdin.flush()
            answers = [victim.stdout.readline().strip() for _ in range(2)]
        victim.wait(30)
    assert all(a.startswith("ok") for a in answers), answers


def test_a_kept_state_descriptor_of_a_replaced_file_waits_for_no_lock_on_it(
    tmp_path: Path,
) -> None:
    """A handle's kept ``STATE`` descriptor names a file a rewrite replaced, which something
    holds locked (a child of an older castore's rewrite): the write waited the full 5 s
    for that lock, then failed, and kept the descriptor to fail the same way again."""
    root = str(tmp_path / "s")
    victim = Store(root, dag="d")
    other = Store(root, dag="d")
    victim.set("v", 0)
    other.list()  # STATE exists now
    victim.set("v", 1)  # the victim keeps a descriptor on it
    old = os.open(state_path(root), os.O_RDONLY)
    try:
        for i in range(300):
            other.set("a", i)
        other.list()  # a snapshot replaces STATE
        assert os.fstat(old).st_nlink == 0
        fcntl.flock(old, fcntl.LOCK_EX)  # the replaced file, held
        took = []
        for version in (3, 4):
            start = time.monotonic()
            assert victim.set("v", version).version == version
            took.append(time.monotonic() - start)
    finally:
        os.close(old)
    assert max(took) < 1.0, took
    assert {e.key: e.version for e in other.list().entries} == {"a": 300, "v": 4}


def test_a_child_forked_while_a_write_points_at_another_keys_value_lets_gc_run(
    tmp_path: Path,
) -> None:
    """A write that points at another log's blob holds ``gc.lock`` shared and released it by
    closing: a child forked meanwhile kept it shared, and ``gc`` timed out while it lived."""
    root = str(tmp_path / "s")
    store = Store(root, dag="d")
    big = {"pad": "x" * 600}  # stored once, pointed at by the second key (>= 256 bytes)
    store.set("a", big)
    with forked_while(lambda: store.set("b", big), writer_mod, "settle_other"):
        gc = Cli(tmp_path, root, dag=None).run("--lock-timeout", "3", "gc")
        assert gc.returncode == 0, gc.stderr
    assert store.get("b").value == big


def test_a_child_forked_while_list_records_a_key_keeps_no_writer_of_it_waiting(
    tmp_path: Path,
) -> None:
    """``list`` records a key's newest entry under its log's shared lock, released by
    closing: a child forked meanwhile kept it, and every write of that key timed out."""
    root = str(tmp_path / "s")
    store = Store(root, dag="d")
    store.set("k", 1)
    store.list()
    store.set("k", 2)  # STATE's last record for k is P: the next list reads k's log
    with forked_while(store.list, statefile.StateIndex, "settled"):
        done = Cli(tmp_path, root).run("--lock-timeout", "3", "set", "k", "3")
        assert done.returncode == 0, done.stderr
        assert json_line(done)["version"] == 3


_DIES_HOLDING = textwrap.dedent(
    """
    import os, sys, threading, time
    from castore import Store
    from castore.file import fileio, reflog
    s = Store(sys.argv[1], dag="d")
    s.set("k", 1)  # the handle keeps k's log descriptor
    if sys.argv[2] == "in-flight":  # fork while another thread's write has it in use
        inside, release = threading.Event(), threading.Event()
        real = reflog.RefLog.commit
        def paused(*args, **kwargs):
            inside.set()
            release.wait(10)
            return real(*args, **kwargs)
        reflog.RefLog.commit = paused
        writer = threading.Thread(target=s.set, args=("k", 2))
        writer.start()
        inside.wait(10)
    started, tell = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(tell, b"!")  # the fork's hooks have run (a child scheduled late may not yet)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the test reads the parent's output to its end
            os.dup2(devnull, fd)
        time.sleep(60)  # a worker that never calls castore
        os._exit(0)
    os.read(started, 1)
    print(pid, flush=True)
    if sys.argv[2] == "in-flight":
        release.set()
        writer.join()
        reflog.RefLog.commit = real
    fileio._FAILPOINTS["before-append"] = "kill"
    s.set("k", 9)  # dies holding k's lock, on the descriptor the handle keeps
    """
)


@pytest.mark.parametrize("when", ["kept", "in-flight"])
def test_a_child_never_keeps_a_lock_its_dead_parent_held_on_a_kept_descriptor(
    tmp_path: Path, when: str
) -> None:
    """The parent dies in a write, holding its key's lock on a log descriptor its handle
    keeps. A child forked earlier that still had a copy of that descriptor (one kept in
    the pool at the fork, or one another thread was writing with) kept the lock held
    for its life: every write of the key timed out."""
    root = str(tmp_path / "s")
    env = {**os.environ, "PYTHONPATH": CASTORE_PATH}
    parent = subprocess.run(
        [sys.executable, "-c", _DIES_HOLDING, root, when],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    child = int(parent.stdout.split()[0])
    try:
        done = Cli(tmp_path, root).run("--lock-timeout", "3", "set", "k", "3")
    finally:
        os.kill(child, signal.SIGKILL)
    assert done.returncode == 0, (done.stderr, parent.stderr)
    assert json_line(done)["version"] == (3 if when == "in-flight" else 2)
