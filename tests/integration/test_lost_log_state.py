"""STATE as the evidence of a lost log: the cases beyond test_lost_files.py's.

``list`` leaves each key's newest version in ``STATE`` (docs/FORMAT.md §5);
a version recorded there above the key's grave, for a log that is missing or
holds no entry, is a lost log (§7). Here: a log cut to nothing, a deleted
key's version kept through a snapshot of ``STATE``, no false alarm for a key
compaction removed, and no evidence left once ``STATE`` is gone too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from castore import CorruptionError, Store
from castore.file.frames import frame_at
from castore.file.statefile import SNAPSHOT_AFTER
from tests.helpers import key_answers, log_path

pytestmark = pytest.mark.integration

DAG: Final = "lost"
_FAILING: Final = dict.fromkeys(["get", "get v1", "history", "export"], "CorruptionError")


def _listed(root: Path, key: str, versions: int) -> Path:
    """A store whose ``key`` has ``versions`` versions and was listed; its log's path."""
    store = Store(root, dag=DAG)
    for n in range(versions):
        store.set(key, {"n": n})
    store.list()
    store.close()
    log = Path(log_path(root, "dag", DAG, key))
    assert not log.with_suffix(".vix").exists()  # no reader built one: STATE is the evidence
    return log


def test_a_log_cut_to_nothing_is_lost_too(tmp_path: Path) -> None:
    """An empty log is a first write killed before its frames, unless STATE records versions."""
    root = tmp_path / "s"
    _listed(root, "k", 3).write_bytes(b"")
    assert key_answers(root, "k", DAG) == _FAILING
    store = Store(root, dag=DAG)
    with pytest.raises(CorruptionError, match="holds no version, but the namespace's STATE"):
        store.set("k", 1)
    assert not store.check().ok
    assert store.check(repair=True).ok
    assert store.set("k", 1).version == 4
    store.close()


def test_a_deleted_key_keeps_its_version_through_a_snapshot(tmp_path: Path) -> None:
    """A delete's version survives STATE's rewrite as a snapshot, so its loss is seen too."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    store.set("gone", 1)
    store.set("gone", 2)
    store.delete("gone")
    for n in range(SNAPSHOT_AFTER + 10):
        store.set(f"f{n:04d}", n)
    store.list()  # records every key: enough appended records to call for a snapshot
    store.list()  # rewrites STATE as one snapshot
    store.close()
    log = Path(log_path(root, "dag", DAG, "gone"))
    state = (log.parent / "STATE").read_bytes()
    kinds, at = [], 8  # past the recorded length
    while (frame := frame_at(state, at, 0)) is not None:
        kinds.append(chr(frame.kind))
        at = frame.end
    assert (kinds, at) == (["T", "L"], len(state))  # one snapshot: the S frames are gone
    log.unlink()
    assert key_answers(root, "gone", DAG) == _FAILING
    store = Store(root, dag=DAG)
    with pytest.raises(CorruptionError, match="STATE records version 3"):
        store.set("gone", 1)
    store.close()


def test_keys_compaction_removed_are_new_not_lost(tmp_path: Path) -> None:
    """GRAVES covers a removed key's recorded versions: no false alarm, its versions go on."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    store.set("gone", 1)
    store.delete("gone")
    store.set("kept", "another value")  # (gc keeps a blob whose digest another log uses)
    store.list()  # STATE records gone at version 2 (a delete)
    assert store.compact(keep_within_seconds=0, prefix="gone").keys_removed == 1
    store.gc(grace_seconds=0)  # removes the log
    assert not Path(log_path(root, "dag", DAG, "gone")).exists()
    assert not store.get("gone").found
    assert store.history("gone").entries == []
    assert store.check().ok, store.check()
    assert store.set("gone", 3).version == 3  # after the grave
    assert store.get("gone").value == 3
    assert store.check().ok
    store.close()


def test_without_state_a_missing_log_is_a_new_key(tmp_path: Path) -> None:
    """With STATE removed too, no evidence is left: the documented limit (RELIABILITY.md)."""
    root = tmp_path / "s"
    log = _listed(root, "k", 1)
    log.unlink()
    (log.parent / "STATE").unlink()
    store = Store(root, dag=DAG)
    assert not store.get("k").found
    assert store.set("k", 2).version == 1
    store.close()
