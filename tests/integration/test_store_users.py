"""A directory store used by more than one Unix user (docs/FORMAT.md §1, "Permissions").

CI runs as root, which no permission stops, so these tests act as real other users: a
forked child drops to an unprivileged uid (one the password database need not know) and
runs castore's library there. They need root to do that, and fail, never skip, without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator

import pytest

from castore import Store

OWNER = 48_611  # a uid and gid that no account uses: the store's owner
BIG = {"text": "shared " * 64}  # a value the blob index deduplicates across keys


@pytest.fixture
def owned_dir() -> Iterator[str]:
    """A new directory below /tmp, which :data:`OWNER` owns (0700)."""
    if os.geteuid() != 0:
        pytest.fail("these tests act as other users: run them as root (CI does)")
    path = tempfile.mkdtemp(prefix="castore-users-")  # /tmp: reachable by any user
    os.chown(path, OWNER, OWNER)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _warm() -> None:
    """Load every module the store's calls load lazily, while root may still read them.

    (The interpreter's own may lie below /root, which the user cannot enter.)
    """
    scratch = tempfile.mkdtemp(prefix="castore-warm-")
    try:
        with Store(scratch, dag="d") as store:
            store.set("k", BIG)
            store.patch("k", {"n": 1}, merge=True)
            store.incr("i")
            store.history("k")
            store.rollback("k", to_version=1)
            store.delete("i")
            store.list()
            store.stats()
            store.compact(keep_last=1)
            store.gc(grace_seconds=0)
            store.check(repair=True)
    finally:
        shutil.rmtree(scratch)


def as_user(uid: int, gid: int, work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child as ``uid``/``gid`` (no other groups); raise if it failed."""
    _warm()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            work()
        except BaseException:  # noqa: BLE001 - reported to the test
            os.write(write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"as uid {uid}:\n{report}"


def test_root_maintenance_leaves_the_store_its_owners(owned_dir: str) -> None:
    """Root writing, repairing or collecting a user's store made files only root could write.

    Before: a new key's log, its ``.vix``, ``STATE``, the index shards, ``gc.lock`` and every
    log a compaction or gc rewrote were root's, 0600, and the owner's next write, gc or even
    ``list`` failed with "Permission denied". Now they belong to the store root's owner.
    """
    store = os.path.join(owned_dir, "s")

    def first() -> None:
        with Store(store, dag="d") as own:
            own.set("a", BIG)
            own.set("a", {"n": 1})

    as_user(OWNER, OWNER, first)
    with Store(store, dag="d") as admin:  # an administrator, as root
        admin.set("b", BIG)
        admin.set("a", {"n": 2})
        assert [e.key for e in admin.list().entries] == ["a", "b"]
        admin.compact(keep_last=1)
        admin.gc(grace_seconds=0)
        assert admin.check(repair=True).ok
    for top, dirs, files in os.walk(store):
        for name in [*dirs, *files]:
            info = os.lstat(os.path.join(top, name))
            assert (info.st_uid, info.st_gid) == (OWNER, OWNER), os.path.join(top, name)

    def after() -> None:
        with Store(store, dag="d") as own:
            assert own.get("b").value == BIG
            own.set("b", {"n": 3})
            own.set("c", BIG)
            own.set("a", {"n": 4})
            assert [(e.key, e.version) for e in own.list().entries] == [
                ("a", 4),
                ("b", 2),
                ("c", 1),
            ]
            own.compact(keep_last=1)
            own.gc(grace_seconds=0)
            assert own.check(repair=True).ok

    as_user(OWNER, OWNER, after)
