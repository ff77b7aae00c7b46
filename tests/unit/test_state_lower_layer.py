"""A ``STATE`` rewrite never writes over a newer ``STATE`` from a file replaced since it opened it.

On overlayfs, a descriptor of a file still in a lower layer (a store baked
into a container image, ``STATE`` not yet written in the container) keeps
reporting ``st_nlink`` 1 after the path is replaced or removed: the lower file
is not unlinked, the overlay only hides it. A review found that a rewrite of
``STATE`` (a snapshot, or a reset) took "no link left" as its only sign that
another rewrite had replaced the file between its open and its lock: on an
overlay it then rewrote the new ``STATE`` from the old file's records, and
the records written since (a ``set``'s) were lost; ``list`` answered the
version before an acknowledged ``set`` (``get`` answered the new one). On
ext4 the same calls answer alike. The rewrite now checks that the path
still names the file it holds (device and inode).

The overlay is simulated here: every ``fstat`` of a file that lost its last
name reports one link, as overlayfs reports for a lower-layer file (the
review reproduced the stale list on a real overlay, lower on ext4, upper on
tmpfs, Linux 6.18).
"""

from __future__ import annotations

import fcntl
import os
import pathlib
from typing import Any, cast

import pytest

from castore import Store
from castore.file.backend import FileBackend


def _as_on_an_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fstat

    def fstat(fd: int) -> os.stat_result:
        st = real(fd)
        if st.st_nlink:
            return st
        fields: list[Any] = list(st)
        fields[3] = 1  # st_nlink: the lower file keeps its name under the overlay
        return os.stat_result(
            fields, {"st_mtime_ns": st.st_mtime_ns, "st_ctime_ns": st.st_ctime_ns}
        )

    monkeypatch.setattr(os, "fstat", fstat)


def test_a_state_rewrite_from_a_file_replaced_meanwhile_loses_no_record(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "store")
    with Store(root, dag="d") as first:
        first.set("k", 1)
        for i in range(3):
            first.set(f"o{i}", i)
        first.list()
    _as_on_an_overlay(monkeypatch)
    slow = Store(root, dag="d")
    state = cast(FileBackend, slow.backend).names.state("dag", "d")
    state.known()
    real_flock = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX | fcntl.LOCK_NB and not replaced:  # it holds STATE open
            replaced.append(True)
            with Store(root, dag="d") as other:
                cast(FileBackend, other.backend).names.state(
                    "dag", "d"
                ).snapshot()  # renames a new STATE over
                other.set("k", 2)  # acknowledged: recorded in the new STATE
                other.list()
        real_flock(fd, op)

    replaced: list[bool] = []
    monkeypatch.setattr(fcntl, "flock", flock)
    state.snapshot()  # the rewrite of the file it opened before the other's
    monkeypatch.undo()
    slow.close()
    assert replaced
    with Store(root, dag="d") as store:
        assert store.get("k").version == 2
        assert [(e.key, e.version) for e in store.list().entries if e.key == "k"] == [("k", 2)]


def test_a_list_records_no_version_of_a_log_replaced_by_a_file_of_the_same_inode_number(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's ``S`` is for the log the path names: device and inode, not the inode alone.

    On overlayfs with layers on two file systems, a file of the lower layer and
    one made in the upper layer may have the same inode number, on two devices.
    A ``list`` recording a key's version opened its log, and compaction renamed a
    new log over it (in the upper layer) and a ``set`` wrote the next version
    there; the ``list`` compared inode numbers alone, took the old file for the
    path's, and recorded its version: the next ``list`` answered the version
    before the ``set``. Simulated: the old descriptor reports the new log's
    inode number on another device.
    """
    root = str(tmp_path / "store")
    with Store(root, dag="d") as first:
        for i in range(3):
            first.set("k", i)
        first.list()
        first.set("k", 3)  # STATE: the key's write seen, its version not yet recorded
    lister = Store(root, dag="d")
    log = cast(FileBackend, lister.backend).log_path(lister.ref("k"))
    real_flock, real_fstat = fcntl.flock, os.fstat
    old: list[int] = []

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_SH | fcntl.LOCK_NB and not old:  # the list holds the log open
            old.append(fd)
            with Store(root, dag="d") as other:
                other.compact(keep_last=1)  # a new log renamed over the one held
                other.set("k", 4)
        real_flock(fd, op)

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if fd not in old:
            return st
        now = os.stat(log)  # the new log's number, on the other layer's device
        fields: list[Any] = list(st)
        fields[1], fields[2] = now.st_ino, now.st_dev + 1
        return os.stat_result(
            fields, {"st_mtime_ns": st.st_mtime_ns, "st_ctime_ns": st.st_ctime_ns}
        )

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(os, "fstat", fstat)
    cast(FileBackend, lister.backend).remember("dag", "d", ["k"])
    monkeypatch.undo()
    lister.close()
    assert old
    with Store(root, dag="d") as store:
        assert store.get("k").version == 5
        assert [(e.key, e.version) for e in store.list().entries] == [("k", 5)]
