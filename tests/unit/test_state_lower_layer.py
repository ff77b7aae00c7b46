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
