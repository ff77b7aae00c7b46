"""Log descriptors kept between writes (castore/file/kept.py) never weaken the log's lock."""

from __future__ import annotations

import errno
import gc
import os
import threading
from pathlib import Path

import pytest

from castore import Store
from castore.backend import NewVersion
from castore.errors import LockTimeoutError
from castore.records import Entry
from tests.helpers import file_backend, ref_log_path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_repeated_writes_reuse_one_descriptor_and_close_releases_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", dag="d", durable=False)
    store.set("k", 0)
    gc.collect()  # handles earlier tests left to the collector close their descriptors now
    before = open_fds()
    for n in range(50):
        store.set("k", n)
    assert open_fds() == before  # one kept descriptor, reused
    store.close()
    assert open_fds() < before


def test_a_forked_child_never_shares_its_parents_lock(tmp_path: Path) -> None:
    """A kept descriptor is one open file: a child using its inherited copy would take the
    lock the parent holds as its own. The child must open its own and wait, as any writer does."""
    store = Store(tmp_path / "s", dag="d", durable=False, lock_timeout=0.3)
    store.set("k", 1)  # the log's descriptor is now kept, and the child inherits it
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: once the parent holds the lock, its write must time out
        os.close(go_write)
        os.read(go_read, 1)
        try:
            store.set("k", 2)
            code = 1
        except LockTimeoutError:
            code = 0
        except BaseException:  # noqa: BLE001  (a forked child always reaches _exit)
            code = 2
        os._exit(code)
    os.close(go_read)
    inside, release = threading.Event(), threading.Event()

    def decide(previous: Entry | None, view: object) -> NewVersion | None:
        inside.set()
        release.wait(10)
        return None

    writer = threading.Thread(target=file_backend(store).write, args=(store.ref("k"), decide))
    writer.start()
    assert inside.wait(10)  # the parent holds the lock, on the kept descriptor
    os.write(go_write, b"x")
    _, status = os.waitpid(pid, 0)
    release.set()
    writer.join()
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0, "the child wrote while the parent held the lock"
    assert store.get("k").value == 1


def test_a_write_after_a_rewrite_lands_in_the_new_log(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", dag="d", durable=False)
    for n in range(5):
        store.set("k", n)
    old_inode = os.stat(ref_log_path(store, "k")).st_ino
    store.compact(keep_last=1)  # renames a new log over the one whose descriptor is kept
    assert os.stat(ref_log_path(store, "k")).st_ino != old_inode
    store.set("k", 99)
    fresh = Store(tmp_path / "s", dag="d")
    assert fresh.get("k").value == 99
    assert [e.version for e in fresh.history("k").entries] == [6, 5]


def test_no_descriptor_left_to_keep_is_no_failed_write_and_no_lock_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: a write that opened its log afresh and could not duplicate the
    descriptor to keep it (EMFILE) raised after its commit and left the log locked until the
    exception was collected: every process's next write of the key timed out."""
    root = tmp_path / "s"
    Store(root, dag="d", durable=False).set("k", 1)
    fresh = Store(root, dag="d", durable=False, lock_timeout=0.5)

    def no_descriptor(fd: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "dup", no_descriptor)  # only castore/file/kept.py calls it
    assert fresh.set("k", 2).version == 2  # committed, and said so
    monkeypatch.undo()
    other = Store(root, dag="d", durable=False, lock_timeout=0.5)
    assert other.set("k", 3).version == 3  # the lock was released
    assert fresh.set("k", 4).version == 4
