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
    }


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_every_call_fails_and_nothing_is_created(tmp_path: Path, how: str) -> None:
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    store.set("k", 1)
    store.set("x", 1, namespace="another")
    assert store.get("k").value == 1
    shutil.rmtree(root)
    if how == "emptied":
        root.mkdir()  # the mount point an unmounted volume leaves
    for name, call in _calls(store).items():
        with pytest.raises(StoreUnavailableError, match="is gone") as caught:
            call()
        assert str(root) in str(caught.value), name
    assert os.path.isdir(root) == (how == "emptied")
    assert not os.path.exists(root) or os.listdir(root) == []  # nothing created
    store.close()


def test_a_handle_on_an_empty_location_still_creates_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    assert not store.get("k").found
    assert store.list().entries == []
    assert store.set("k", 1).version == 1  # the first write creates the store
    assert store.get("k").value == 1
    store.close()
