"""Reads on a full disk answer as they would with room: the version index is only derived data.

A reader that needs a version its log's version index (``.vix``, FORMAT.md §5)
lacks extends the index; on a full disk (ENOSPC, or EDQUOT past a quota) that
write fails. The oracle is the same reads on an exact copy of the store, on a
disk with room: the answers must be equal, and the index is built once there
is room again. (A review filled a 2 MiB tmpfs under a server: `get` of the
newest version answered, `history` and `get --version` answered 500 ENOSPC.)
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
from typing import Any

import pytest

from castore import Store

pytestmark = pytest.mark.integration


def _reads(store: Store) -> list[Any]:
    history = store.history("k", scope="dag", namespace="d", limit=100)
    old = store.get("k", scope="dag", namespace="d", version=3)
    return [[(e.version, e.hash) for e in history.entries], old.version, old.value]


@pytest.mark.parametrize("call", ["open", "pwrite"])
@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_reads_on_a_full_disk_answer_as_with_room(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, call: str, number: int
) -> None:
    root = tmp_path / "store"
    with Store(str(root)) as store:
        for i in range(20):
            store.set("k", {"i": i}, scope="dag", namespace="d")
    shutil.copytree(root, tmp_path / "twin")
    with Store(str(tmp_path / "twin")) as twin:
        expected = _reads(twin)
    real = getattr(os, call)

    def full(*args: Any, **kw: Any) -> Any:
        is_index = call == "pwrite" or str(args[0]).endswith(".vix")
        if is_index and (call == "pwrite" or args[1] & os.O_CREAT):
            raise OSError(number, os.strerror(number))
        return real(*args, **kw)

    with Store(str(root)) as store:
        monkeypatch.setattr(os, call, full)
        assert _reads(store) == expected
        monkeypatch.setattr(os, call, real)
        assert _reads(store) == expected
    assert list(root.rglob("*.vix"))  # built once there was room
