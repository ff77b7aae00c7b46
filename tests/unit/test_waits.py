"""A thread that refuses to wait for a lock (castore.waits), as the file store's locks honour it."""

from __future__ import annotations

import fcntl
import os
import pathlib
import threading
from collections.abc import Iterator

import pytest

from castore.errors import LockTimeoutError
from castore.file import fileio
from castore.file.blobindex import BlobIndex
from castore.file.layout import Layout
from castore.file.tree import Tree
from castore.keys import Ref, log_name
from castore.records import BlobLoc
from castore.waits import (
    WouldWait,
    at_most,
    lock_wait,
    no_waiting,
    waiting_at_most,
    waiting_refused,
    would_wait,
)


@pytest.fixture
def locked_file(tmp_path: pathlib.Path) -> Iterator[tuple[str, int, int]]:
    """A file's path, a descriptor holding its lock (as another process), and one of ours."""
    path = str(tmp_path / "f")
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    mine = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        yield path, holder, mine
    finally:
        os.close(holder)
        os.close(mine)


def test_a_taken_lock_raises_would_wait_at_once_and_a_free_one_is_taken(locked_file):
    path, holder, mine = locked_file
    with no_waiting(), pytest.raises(WouldWait):
        fileio.lock(mine, path, shared=True, timeout=30)  # would wait 30 s
    with pytest.raises(LockTimeoutError):  # outside the block, waiting is fine
        fileio.lock(mine, path, shared=True, timeout=0.05)
    fcntl.flock(holder, fcntl.LOCK_UN)
    with no_waiting():
        fileio.lock(mine, path, shared=True, timeout=30)  # free: taken
    assert not fileio.try_lock(holder, shared=False)  # mine holds it shared


def test_would_wait_is_no_error_an_error_handler_could_swallow():
    assert not issubclass(WouldWait, Exception)


def test_the_refusal_is_per_thread_and_nests():
    seen: list[bool] = []
    assert not waiting_refused()
    with no_waiting():
        other = threading.Thread(target=lambda: seen.append(waiting_refused()))
        other.start()
        other.join()
        with no_waiting():
            assert waiting_refused()
        assert waiting_refused()  # the inner block ended, the outer one still holds
    assert not waiting_refused()
    assert seen == [False]


def test_would_wait_raises_only_inside_no_waiting():
    would_wait("nothing refused")  # outside: returns
    with no_waiting(), pytest.raises(WouldWait, match="a scan"):
        would_wait("a scan")


def test_the_blob_index_refuses_a_shard_read_and_a_busy_lock_but_answers_from_its_cache(tmp_path):
    root = str(tmp_path)
    index = BlobIndex(root, Tree(root))
    digest = bytes(range(32))
    loc = BlobLoc(log_name(Ref("dag", "ns", "k")), 10, 20)
    index.add_many([(digest, loc)], durable=False)
    with no_waiting(), pytest.raises(WouldWait):
        index.lookup(digest)  # a shard this handle has not read: a read of the file
    assert index.lookup(digest) == [loc]  # outside: read
    with no_waiting():
        assert index.lookup(digest) == [loc]  # unchanged since: from the cache
    other = BlobIndex(root, Tree(root))
    newer = BlobLoc(log_name(Ref("dag", "ns", "j")), 30, 20)
    other.add_many([(digest, newer)], durable=False)
    with no_waiting(), pytest.raises(WouldWait):
        index.lookup(digest)  # grown since: a read
    taken = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with index._lock:  # another thread in the middle of a lookup
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(10)
    try:
        with no_waiting(), pytest.raises(WouldWait):
            index.lookup(digest)
    finally:
        release.set()
        holder.join()
    assert index.lookup(digest) == [newer, loc]


def test_a_thread_s_lock_waits_are_bounded_within_the_block_only(locked_file, tmp_path):
    path, _, mine = locked_file
    layout = Layout(str(tmp_path / "store"), durable=False, lock_timeout=30)
    with waiting_at_most(0.05):
        assert (lock_wait(30.0), lock_wait(0.01)) == (0.05, 0.01)  # the smaller
        with waiting_at_most(1.0):
            assert lock_wait(30.0) == 0.05  # a nested block never waits longer
        with pytest.raises(LockTimeoutError, match=r"not locked within 0\.05 s"):
            fileio.lock(mine, path, timeout=layout.lock_timeout)  # the handle's 30 s
        other: list[float] = []
        thread = threading.Thread(target=lambda: other.append(lock_wait(30.0)))
        thread.start()
        thread.join()
        assert other == [30.0]  # another thread's waits are its own
    assert (lock_wait(30.0), layout.lock_timeout) == (30.0, 30.0)
    assert at_most(None, lambda: lock_wait(30.0))() == 30.0
    assert at_most(0.2, lambda: lock_wait(30.0))() == 0.2
    with waiting_at_most(0.1):
        assert at_most(5.0, lambda: lock_wait(30.0))() == 0.1  # never longer than the block
    assert lock_wait(30.0) == 30.0
