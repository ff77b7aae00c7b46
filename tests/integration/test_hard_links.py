"""A store file that is a hard link to a file outside the store is never written.

Found by a review: with a key's log, ``KEYS``, ``STATE`` or an index shard
hard-linked to a file outside the root, ``set`` (and even ``list``) appended to
the outside file. A hard link names the same inode, so no path check can see
it; a file castore opens for writing must have one name
(``castore.file.modes.regular``). Each case compares the outside tree before
and after (:class:`tests.integration.test_confinement.Scene`), then checks that
``check`` names the file, ``check --repair`` gives it a copy of its own, and
the store then reads and writes as an undamaged copy of it does.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

from castore import CorruptionError, Store
from tests.helpers import keys_path
from tests.integration.test_confinement import BIG, BIG2, DAG, Scene

pytestmark = pytest.mark.integration


def _log(scene: Scene) -> Path:
    return scene.log("k")


def _keys(scene: Scene) -> Path:
    return Path(keys_path(scene.root, "dag", DAG))


def _state(scene: Scene) -> Path:
    scene.store.list()  # STATE exists once a list has read the namespace
    return scene.ns / "STATE"


def _shard(scene: Scene) -> Path:
    return scene.shard(BIG2)


PLACES: Final[dict[str, Callable[[Scene], Path]]] = {
    "log": _log,
    "KEYS": _keys,
    "STATE": _state,
    "shard": _shard,
}


def _link_out(scene: Scene, path: Path) -> Path:
    """Move ``path``'s bytes to a file outside and hard-link that file in its place."""
    outside = scene.outside / f"linked-{path.name}"
    shutil.copyfile(path, outside)
    path.unlink()
    os.link(outside, path)
    return outside


def _answers(store: Store) -> tuple[object, ...]:
    k = store.get("k")
    return (k.version, k.value, store.get("new").found, [e.key for e in store.list().entries])


@pytest.mark.parametrize("place", list(PLACES))
def test_a_hard_linked_store_file_is_never_written(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, place: str
) -> None:
    scene = Scene(tmp_path)
    scene.store.set("k", BIG)
    scene.store.set("k", BIG2)
    path = PLACES[place](scene)
    twin = Store(tmp_path_factory.mktemp("twin"), dag=DAG)  # the oracle: the same, undamaged
    for value in (1, BIG, BIG2):
        twin.set("other" if value == 1 else "k", value)
    _link_out(scene, path)
    before = scene.freeze()
    store = scene.reopen()
    writes: list[Callable[[Store], object]] = [
        lambda s: s.set("k", {"n": 3}),
        lambda s: s.set("new", BIG),
        lambda s: s.compact(keep_last=2),  # carries the blob frames: indexes their new places
    ]
    for write in writes:
        refusal = ""
        try:
            write(store)
            write(twin)  # acknowledged: the oracle makes it too
        except CorruptionError as exc:
            refusal = str(exc)
        assert not refusal or ("hard links" in refusal and str(path) in refusal), refusal
        scene.assert_untouched(before)
    store.list()
    scene.assert_untouched(before)
    found = [f for f in store.check().findings if "hard links" in f.problem]
    assert [f.path for f in found] == [os.path.relpath(path, scene.root)]
    assert store.check(repair=True).ok
    scene.assert_untouched(before)
    assert not path.exists() or os.stat(path).st_nlink == 1  # STATE is derived: maybe removed
    fresh = scene.reopen()
    for s in (fresh, twin):
        s.set("k", {"n": 4})
        s.set("new", BIG2)
    assert _answers(fresh) == _answers(twin)
    scene.assert_untouched(before)


@pytest.mark.parametrize("place", ["KEYS", "log"])
def test_a_hard_linked_store_file_keeps_its_mode_when_a_durable_write_settles_it(
    tmp_path: Path, place: str
) -> None:
    """Found by a review: a durable write settles what it depends on, and took the marks
    (execute bits, FORMAT.md §6, "Names") off ``KEYS`` or off the log a value is found in,
    opened for reading: through a hard link, off a file outside the root."""
    scene = Scene(tmp_path)
    scene.store.set("k", BIG)
    path = _keys(scene) if place == "KEYS" else scene.log("k")
    outside = _link_out(scene, path)
    outside.chmod(0o750)  # both marks: the name's (owner) and the data's (group)
    if place == "KEYS":
        scene.log("k").chmod(0o700)  # the writer's own log marked: it settles KEYS
    before = scene.freeze()
    store = scene.reopen()
    if place == "KEYS":
        assert store.set("k", {"n": 2}).version == 2  # KEYS is only read and synced
    else:  # the same value in another key: found in k's log, which is settled first
        assert store.set("k2", BIG).version == 1
    scene.assert_untouched(before)


def test_a_log_hard_linked_while_a_handle_keeps_it_open_is_not_written(tmp_path: Path) -> None:
    """A handle keeps a key's log open between writes (castore/file/kept.py): a name made
    for it outside meanwhile must stop its writes as it stops a new handle's."""
    scene = Scene(tmp_path)
    store = scene.reopen()
    store.set("k", 1)  # the log is kept open now
    outside = scene.outside / "second-name.log"
    os.link(scene.log("k"), outside)
    before = scene.freeze()
    for _ in range(2):
        with pytest.raises(CorruptionError, match="hard links"):
            store.set("k", 2)
        scene.assert_untouched(before)
    outside.unlink()  # its one name again: writes go on
    assert store.set("k", 3).version == 2


@pytest.mark.parametrize("name", ["STATE", "FORMAT"])
def test_a_second_name_left_by_a_killed_create_is_not_a_hard_link_refusal(
    tmp_path: Path, name: str
) -> None:
    """A process killed inside ``Tree.create_once`` (after its link, before it removed its
    temporary name) left ``STATE`` with two names; every write of the namespace then failed."""
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    store.set("k", 1)
    store.list()  # STATE exists
    folder = Path(keys_path(root, "dag", DAG)).parent if name == "STATE" else root
    path = scene_path = folder / name
    os.link(path, path.parent / f".{name}.4242.1.99.tmp")  # what the killed process left
    found = [f for f in Store(root, dag=DAG).check().findings if "left by a process" in f.problem]
    assert [(f.path, f.severity) for f in found] == [(os.path.relpath(scene_path, root), "info")]
    fresh = Store(root, dag=DAG)
    assert fresh.set("k2", 2).version == 1  # STATE is appended to: its second name goes
    assert [e.key for e in fresh.list().entries] == ["k", "k2"]
    assert Store(root, dag=DAG).check(repair=True).ok
    assert os.stat(path).st_nlink == 1
    assert not list(path.parent.glob(f".{name}.*.tmp"))
