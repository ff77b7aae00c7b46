"""A store directory that vanishes under a handle: never "not found", never a new store.

A long-lived handle (a server, a worker) that opened a store and then finds
its ``FORMAT`` gone (the directory deleted, moved, or the volume under it
unmounted, leaving an empty mount point) must not answer "not found" for
keys it held, and must not create a fresh, empty store in its place with
the next write (a volume mounted again would hide it, or be hidden by it).
Every call fails with ``StoreUnavailableError`` (503 over ``castore serve``,
``/healthz`` too) and leaves the location as it found it. A handle opened on
a location that never held a store is unchanged: it reads nothing and its
first write creates the store.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest

from castore import Store, StoreUnavailableError
from castore.transfer import export_lines

pytestmark = pytest.mark.integration

DAG: Final = "gone"


def _calls(store: Store) -> dict[str, Callable[[], Any]]:
    return {
        "get": lambda: store.get("k"),
        "get missing": lambda: store.get("never"),
        "get v1": lambda: store.get("k", version=1),
        "history": lambda: store.history("k"),
        "list": store.list,
        "export": lambda: list(export_lines(store)),
        "delete": lambda: store.delete("k"),
        "set": lambda: store.set("k", 2),
        "set new": lambda: store.set("new", 1),
        "set elsewhere": lambda: store.set("x", 1, namespace="another"),
        "check": store.check,
        "gc": store.gc,
        "stats": store.stats,
    }


@pytest.mark.parametrize("how", ["deleted", "emptied", "replaced"])
def test_every_call_fails_and_nothing_is_created(tmp_path: Path, how: str) -> None:
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    store.set("k", 1)
    store.set("x", 1, namespace="another")
    assert store.get("k").value == 1
    shutil.rmtree(root)
    if how == "emptied":
        root.mkdir()  # the mount point an unmounted volume leaves
    if how == "replaced":  # another store moved in (a backup restored)
        with Store(tmp_path / "other", dag=DAG) as other:
            other.set("k", 101)
        os.rename(tmp_path / "other", root)
    before = _tree(root)
    for name, call in _calls(store).items():
        with pytest.raises(StoreUnavailableError, match="is gone") as caught:
            call()
        assert str(root) in str(caught.value), name
    assert _tree(root) == before  # nothing created or changed
    store.close()
    if how == "replaced":
        with Store(root, dag=DAG) as again:  # a handle opened again reads what is there
            assert again.get("k").value == 101


def _tree(root: Path) -> dict[str, bytes] | None:
    """Every file below ``root`` and its bytes (None: no directory)."""
    if not root.is_dir():
        return None
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_handle_that_saw_the_store_on_a_read_is_guarded_too(tmp_path: Path) -> None:
    """A reader opened before another process made the store sees it on its first read."""
    root = tmp_path / "store"
    reader = Store(root, dag=DAG)
    assert not reader.get("k").found  # no store yet
    with Store(root, dag=DAG) as writer:
        writer.set("k", 1)
    assert reader.get("k").value == 1  # a hit: the store is seen now
    shutil.rmtree(root)
    for call in (lambda: reader.get("k"), lambda: reader.set("k", 2)):
        with pytest.raises(StoreUnavailableError, match="is gone"):
            call()
    assert not root.exists()
    reader.close()


def test_a_store_mounted_over_an_empty_directory_is_used_not_hidden(tmp_path: Path) -> None:
    """A handle opened on an empty mount point, then a volume holding a store mounted there.

    Simulated: the directory the handle opened is moved aside (as a mount
    covers it) and a store takes its path. The handle must read and write that
    store, never make a new one in the covered directory.
    """
    root, covered = tmp_path / "mnt", tmp_path / "covered"
    root.mkdir()
    store = Store(root, dag=DAG)
    assert not store.get("k").found  # the empty mount point: no store
    os.rename(root, covered)
    with Store(tmp_path / "volume", dag=DAG) as volume:
        volume.set("k", 42)
    os.rename(tmp_path / "volume", root)
    with pytest.raises(StoreUnavailableError, match="appeared"):
        store.get("k")  # the answer read from the covered directory is not given
    assert store.get("k").value == 42  # seen now
    assert store.set("k", 43).version == 2
    assert list(covered.iterdir()) == []  # nothing made where the handle had looked
    store.close()


def test_a_handle_on_an_empty_location_still_creates_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    assert not store.get("k").found
    assert store.list().entries == []
    assert store.set("k", 1).version == 1  # the first write creates the store
    assert store.get("k").value == 1
    store.close()
