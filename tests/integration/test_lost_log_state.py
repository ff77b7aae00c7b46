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
from castore.file.graves import Graveyard
from castore.file.statefile import SNAPSHOT_AFTER, StateIndex
from tests.helpers import file_backend, frames_of, key_answers, log_path

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
    for repair in (False, True):
        report = store.check(repair=repair)
        assert (report.ok, report.findings) == (True, []), report  # not even information
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


def test_a_reader_racing_compaction_and_gc_is_not_alarmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grave is read after the log's stat: compaction records it before the log goes.

    A reader finds ``k`` without a log; before it reads ``STATE``, another
    handle creates, deletes and lists ``k``; between its reads of the grave
    and of the log, compaction and gc remove ``k`` again. Found by a review:
    a reader that read the grave first took the recorded delete for a lost log.
    """
    root = tmp_path / "s"
    other, reader = Store(root, dag=DAG), Store(root, dag=DAG)
    other.set("o", "another value")  # (gc keeps a blob whose digest another log uses)
    other.list()
    recorded, version_of = StateIndex.recorded, Graveyard.version_of
    step = ["reading"]

    def racing_recorded(state: StateIndex) -> dict[str, int]:
        if step == ["reading"]:
            step[0] = "creating"
            other.set("k", 1)
            other.delete("k")
            other.list()
            step[0] = "created"
        return recorded(state)

    def racing_version_of(graves: Graveyard, key: str) -> int:
        found = version_of(graves, key)
        if step == ["created"] and key == "k":
            step[0] = "removed"
            assert other.compact(keep_within_seconds=0, prefix="k").keys_removed == 1
            assert other.gc(grace_seconds=0).logs_removed == 1
        return found

    monkeypatch.setattr(StateIndex, "recorded", racing_recorded)
    monkeypatch.setattr(Graveyard, "version_of", racing_version_of)
    assert not reader.get("k").found
    monkeypatch.undo()
    assert not reader.get("k").found
    assert other.check().findings == []
    other.close()
    reader.close()


def test_a_log_replaced_since_it_was_read_is_not_judged(tmp_path: Path) -> None:
    """Evidence is weighed only against the log as read: its inode and size.

    A gc rewrite is a new file that can have the size of the one a reader
    found without entries; found by a review (an alarm on a healthy key).
    """
    root = tmp_path / "s"
    log = _listed(root, "k", 2)
    store = Store(root, dag=DAG)
    names = file_backend(store).names
    ref = store.ref("k")
    log.write_bytes(b"")  # as read: no entry
    seen = (log.stat().st_ino, 0)
    with pytest.raises(CorruptionError, match="holds no version"):
        names.not_lost(ref, str(log), seen)
    names.not_lost(ref, str(log), (seen[0] + 1, 0))  # another file now: not judged
    names.not_lost(ref, str(log), (seen[0], 1))  # written since: not judged
    store.close()


def test_check_finds_a_log_cut_at_a_frame_boundary_that_state_recorded(tmp_path: Path) -> None:
    """STATE's last record for a key is its newest version: a log ending lower was cut.

    No reader indexed the log (no ``.vix``): readers refuse it all the same,
    as ``STATE`` records more (until the twenty-fifth session they took the
    cut for the earlier state); ``check`` reports the cut and ``--repair``
    records the cut version as lost, so it is never given again. A key
    changed since it was listed (its last record a ``P``) is not judged.
    """
    root = tmp_path / "s"
    log = _listed(root, "k", 3)
    frames, _ = frames_of(log)
    ends = [f.end for f in frames if f.kind == ord("E")]
    with open(log, "r+b") as f:
        f.truncate(ends[1])  # exactly after version 2's entry
    store = Store(root, dag=DAG)
    with pytest.raises(CorruptionError, match="STATE records version 3"):
        store.get("k")  # never version 2 as current
    report = store.check()
    [finding] = report.findings
    assert "STATE records version 3" in finding.problem, finding
    assert not report.ok
    assert store.check(repair=True).ok
    assert store.check().ok
    with pytest.raises(CorruptionError, match="lost"):
        store.get("k")
    assert store.set("k", 9).version == 4
    store.set("moved", 1)
    store.set("moved", 2)
    store.list()
    store.set("moved", 3)  # a P after the S: changed since it was listed
    moved = Path(log_path(root, "dag", DAG, "moved"))
    with open(moved, "r+b") as f:
        f.truncate(frames_of(moved)[0][-3].end)  # back to version 2, as STATE records it
    report = store.check()  # a cut here only an index could tell: not judged
    assert report.ok
    assert not [f for f in report.findings if moved.name in f.path], report
    store.close()


def test_a_repair_of_a_log_without_a_header_keeps_the_evidence_of_the_others(
    tmp_path: Path,
) -> None:
    """The key of a log whose header is gone is the one STATE records under its file name.

    A repair used to remove the namespace's whole ``STATE`` for such a log (its
    key unknown), and with it the evidence of every other key's versions.
    """
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    store.set("a", 1)
    store.set("a", 2)
    for n in range(3):
        store.set("b", n)
    store.list()
    log_a = Path(log_path(root, "dag", DAG, "a"))
    log_a.write_bytes(b"not a frame at all, " * 4)  # every frame gone, the header too
    assert store.check(repair=True).ok
    assert (log_a.parent / "STATE").exists()
    with pytest.raises(CorruptionError, match="versions 1-2 lost"):
        store.get("a")  # what STATE recorded of it is recorded as lost
    Path(log_path(root, "dag", DAG, "b")).unlink()
    with pytest.raises(CorruptionError, match="STATE records version 3"):
        store.get("b")  # and b's evidence is still there
    store.close()
