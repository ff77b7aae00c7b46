"""What ``check --repair`` leaves after an older copy of a removed key's log, or of GRAVES.

Found by mutation testing of castore/file/checkremoved.py: each test kills a
change to the repair that every other test let pass. The oracle: the same
calls on an undamaged copy of the store (the twin), or, for versions the
copy hid, the contract that a lost version is never answered as absent.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from castore import CorruptionError, NotFoundError, Store
from tests.helpers import keys_path, log_path, ns_dir
from tests.integration.test_restored_removed_log import _answers, _removed_store, _second_life

pytestmark = pytest.mark.integration


def test_every_version_of_the_hidden_life_is_lost_never_absent(tmp_path: Path) -> None:
    """A repair that recorded the hidden life as lost from version 5 answered 4 as absent."""
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _second_life(root, backup, "keys")  # the twin holds 7 at version 4, 8 at version 5
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    store.check(repair=True)
    for version in (4, 5):
        with pytest.raises(CorruptionError, match="lost"):
            store.get("a", version=version)
    with pytest.raises(NotFoundError, match="compacted"):
        store.get("a", version=3)  # the grave's tombstone: removed, as on the twin
    store.close()


def test_a_tombstone_state_recorded_is_no_later_life(tmp_path: Path) -> None:
    """STATE recording the tombstone itself (a list before the compaction) made the repair
    record a later life as lost: the removed key answered "lost" and its next write jumped
    a million versions; the twin answers not found, then version 4."""
    root, twin, backup = tmp_path / "store", tmp_path / "twin", tmp_path / "a.log"
    _removed_store(root, backup, collected=True, listed=True)  # STATE records a at 3
    shutil.copytree(root, twin)
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    (finding,) = [f for f in store.check(repair=True).findings if f.severity == "error"]
    assert "lived again" not in finding.problem
    assert store.check().ok, store.check().findings
    assert _answers(store) == _answers(Store(twin, dag="d"))
    store.close()


def test_a_repair_lists_the_key_whose_later_life_it_records_as_lost(tmp_path: Path) -> None:
    """KEYS put back without the key (its later life known from STATE): a repair that did
    not list the key again left check reporting the key after the repair."""
    root, backup, keys = tmp_path / "store", tmp_path / "a.log", tmp_path / "KEYS"
    _removed_store(root, backup, collected=True)
    shutil.copy(keys_path(root, "dag", "d"), keys)  # KEYS after the removal: no a
    store = Store(root, dag="d")
    assert (store.set("a", 7).version, store.set("a", 8).version) == (4, 5)
    store.list()  # STATE settles a at 5
    store.close()
    shutil.copy(keys, keys_path(root, "dag", "d"))
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    (finding,) = [f for f in store.check(repair=True).findings if f.severity == "error"]
    assert "lived again" in finding.problem
    assert finding.repaired
    assert store.check().ok, store.check().findings
    with pytest.raises(CorruptionError, match="lost"):
        store.get("a", version=5)
    assert store.set("a", 9).version > 5
    store.close()


def test_graves_put_back_from_before_a_removal_is_written_again(tmp_path: Path) -> None:
    """GRAVES from before ``a``'s removal: the repair records a's tombstone (3), not less."""
    root, twin = tmp_path / "store", tmp_path / "twin"
    store = Store(root, dag="d")
    store.set("c", 1)
    store.delete("c")
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="c").keys_removed == 1
    graves = Path(ns_dir(root, "dag", "d")) / "GRAVES"
    older = graves.read_bytes()  # c's grave only
    store.set("a", 1)
    store.set("a", 2)
    store.set("b", 10)
    store.delete("a")
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="a").keys_removed == 1
    store.close()
    shutil.copytree(root, twin)
    graves.write_bytes(older)
    store = Store(root, dag="d")
    (finding,) = store.check(repair=True).findings
    assert "GRAVES lacks the last version (3)" in finding.problem
    assert finding.repaired
    assert store.check().ok, store.check().findings
    expected = Store(twin, dag="d")
    for handle in (store, expected):
        handle.gc(grace_seconds=0)
    assert _answers(store) == _answers(expected)  # a continues at 4 on both
    store.close()
    expected.close()
