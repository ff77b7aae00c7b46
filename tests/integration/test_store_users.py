"""A directory store used by more than one Unix user (docs/FORMAT.md §1, "Permissions").

CI runs as root, which no permission stops, so these tests act as real other users: a
forked child drops to an unprivileged uid (one the password database need not know) and
runs castore's library there. They need root to do that, and fail, never skip, without it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from castore import Store

pytestmark = pytest.mark.integration

OWNER = 48_611  # uids and gids that no account uses: the store's owner,
OTHER = 48_612  # another member of its group,
TEAM = 48_613  # and that group
VICTIM = 48_614  # a third user, whose directory the owner may move
BIG = {"text": "shared " * 64}  # a value the blob index deduplicates across keys


def _reachable(path: str) -> None:
    """Fail unless any user may reach ``path`` (its parents searchable by all)."""
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & stat.S_IXOTH:
            pytest.fail(f"{path} is not searchable by other users: set TMPDIR to one that is")


@pytest.fixture
def owned_dir() -> Iterator[str]:
    """A new directory below the temporary directory, which :data:`OWNER` owns (0700)."""
    if os.geteuid() != 0:
        pytest.fail("these tests act as other users: run them as root (CI does)")
    path = tempfile.mkdtemp(prefix="castore-users-")
    _reachable(path)
    os.chown(path, OWNER, OWNER)
    try:
        yield path
    finally:
        shutil.rmtree(path)


_WARM: list[bool] = []


def _warm() -> None:
    """Load every module the store's calls load lazily, while root may still read them.

    (The interpreter's own may lie below /root, which the user cannot enter.) Once.
    """
    if _WARM:
        return
    _WARM.append(True)
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


def as_user(uid: int, work: Callable[[], object], groups: tuple[int, ...] = ()) -> Any:
    """``work()`` in a forked child as ``uid`` (its gid too) with ``groups``; raise if it failed.

    Returns what ``work`` returned (JSON).
    """
    _warm()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            os.close(read)
            os.setgroups(list(groups))
            os.setgid(uid)
            os.setuid(uid)
            report = json.dumps({"result": work()})
        except BaseException:  # noqa: BLE001 - reported to the test
            report, code = traceback.format_exc(), 1
        with open(write, "w") as pipe:
            pipe.write(report)
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"as uid {uid}:\n{report}"
    return json.loads(report)["result"]


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

    as_user(OWNER, first)
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

    as_user(OWNER, after)


def test_root_writing_a_user_s_store_gives_its_files_the_root_s_group(owned_dir: str) -> None:
    """Mutation testing: the test above gives the owner a group of its uid's number, so a
    store's files given the owner's uid for their group passed. Here the root's group is
    another: everything root creates below it gets the root's owner and group."""
    store = os.path.join(owned_dir, "s")
    os.mkdir(store, 0o700)
    os.chown(store, OWNER, TEAM)
    with Store(store, dag="d") as admin:
        admin.set("a", BIG)
        admin.set("b", {"n": 1}, namespace="other")
        admin.compact(keep_last=1)
    for top, dirs, files in os.walk(store):
        for name in [*dirs, *files]:
            info = os.lstat(os.path.join(top, name))
            assert (info.st_uid, info.st_gid) == (OWNER, TEAM), os.path.join(top, name)


def test_root_never_gives_the_owner_a_directory_put_in_place_of_its_own(
    owned_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: root made a directory in a user's store, then opened the name and fchown-ed
    (and fchmod-ed) what it opened: the store's owner, who may rename entries there, could
    put a third user's directory in place of the new one in between, and root gave that
    directory to them (mode 0700). Oracle: castore changes only what it made; the third
    user's directory keeps its owner and mode."""
    store, victim = os.path.join(owned_dir, "s"), os.path.join(owned_dir, "victim")
    as_user(OWNER, lambda: Store(store, dag="d").set("a", 1).version)
    os.mkdir(victim)
    os.chown(victim, VICTIM, VICTIM)
    os.chmod(victim, 0o755)  # noqa: S103 - a mode castore must leave alone
    inode, made = os.stat(victim).st_ino, os.mkdir

    def mkdir(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        made(path, mode, dir_fd=dir_fd)
        if os.path.exists(victim):  # the owner, between root's mkdir and its open
            os.rename(path, os.path.join(owned_dir, "moved"), src_dir_fd=dir_fd)
            os.rename(victim, path, dst_dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with Store(store, dag="other") as admin:  # a namespace root makes
        admin.set("k", 1)
    monkeypatch.undo()
    (moved,) = [  # the third user's directory, where the owner put it
        os.path.join(top, name)
        for top, dirs, _ in os.walk(store)
        for name in dirs
        if os.stat(os.path.join(top, name)).st_ino == inode
    ]
    info = os.stat(moved)
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (VICTIM, VICTIM, 0o755)


# What each member does in turn, and whether durably: dedup across users' logs, marks on
# another user's file (a durable write after a durable=False one), maintenance of both.
STEPS: tuple[tuple[bool, Callable[[Store], object]], ...] = (
    (True, lambda s: s.set("a", BIG).version),
    (False, lambda s: s.set("b", BIG).version),
    (False, lambda s: s.set("a", {"n": 1}).version),
    (True, lambda s: s.set("a", {"n": 2}).version),
    (False, lambda s: s.incr("n").number),
    (True, lambda s: s.set("b", {"n": 3}).version),
    (True, lambda s: s.patch("a", {"m": 2}, merge=True).value),
    (False, lambda s: s.set("c", BIG).version),
    (True, lambda s: s.incr("n").number),
    (True, lambda s: s.rollback("b", to_version=1).version),
    (False, lambda s: s.delete("c").deleted),
    (True, lambda s: s.compact(keep_last=2).versions_dropped),
    (True, lambda s: s.gc(grace_seconds=0).blobs_freed),
    (True, lambda s: s.set("d", BIG).version),
    (True, lambda s: s.check(repair=True).ok),
    (True, lambda s: [(e.key, e.version, e.hash) for e in s.list().entries]),
    (True, lambda s: [(e.version, e.hash) for e in s.history("a").entries]),
    (True, lambda s: [s.get(k).value for k in "abcdn"]),
)


def test_group_members_take_turns_as_one_user_would(owned_dir: str) -> None:
    """Two members of a group store, writing and maintaining each other's files.

    Each step, run by the owner and the other member in turn, answers as the same step
    run by the owner alone on a twin; every file stays writable by the group.
    """
    os.chmod(owned_dir, 0o711)  # noqa: S103 - others may pass through to the stores
    shared, twin = os.path.join(owned_dir, "shared"), os.path.join(owned_dir, "twin")
    for path in (shared, twin):
        os.mkdir(path)
        os.chown(path, OWNER, TEAM)
        os.chmod(path, 0o2770)  # noqa: S103 - as an administrator prepares one (FORMAT.md §1)
    for n, (durable, step) in enumerate(STEPS):

        def run(path: str, step: Callable[[Store], object] = step, durable: bool = durable) -> Any:
            with Store(path, dag="d", durable=durable) as store:
                return step(store)

        member = (OWNER, OTHER)[n % 2]
        got = as_user(member, lambda: run(shared), (TEAM,))
        assert got == as_user(OWNER, lambda: run(twin), (TEAM,)), f"step {n} by {member}"
    for top, dirs, files in os.walk(shared):
        for name in [*dirs, *files]:
            info = os.lstat(os.path.join(top, name))
            assert info.st_gid == TEAM, (top, name)
            assert info.st_mode & 0o060 == 0o060, (top, name)
