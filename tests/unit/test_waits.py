"""A thread that refuses to wait for a lock (castore.waits), as the file store's locks honour it."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from castore.errors import LockTimeoutError
from castore.file import fileio
from castore.waits import WouldWait, no_waiting, waiting_refused


def test_a_taken_lock_raises_would_wait_at_once_and_a_free_one_is_taken(tmp_path):
    path = str(tmp_path / "f")
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    mine = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with no_waiting(), pytest.raises(WouldWait):
            fileio.lock(mine, path, shared=True, timeout=30)  # would wait 30 s
        with pytest.raises(LockTimeoutError):  # outside the block, waiting is fine
            fileio.lock(mine, path, shared=True, timeout=0.05)
        fcntl.flock(holder, fcntl.LOCK_UN)
        with no_waiting():
            fileio.lock(mine, path, shared=True, timeout=30)  # free: taken
        assert not fileio.try_lock(holder, shared=False)  # mine holds it shared
    finally:
        os.close(holder)
        os.close(mine)


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
