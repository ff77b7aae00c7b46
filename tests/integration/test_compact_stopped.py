"""Compaction ends a removal a kill stopped, and only that (FORMAT.md §5).

A kill between a removal's ``KEYS`` update and its rewrite leaves the key in
``GRAVES``, out of ``KEYS``, its log ending with the grave's tombstone; the next
compaction ends the removal. Mutation testing (thirty-eighth session) found that
no test checked what it visits besides that: keys outside ``--prefix``, a key
``check --repair`` listed again, a copy that does not end with the tombstone,
a key re-created between the (unlocked) look at its log and its lock.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from castore import Store
from castore.file import compact
from castore.file.backend import FileBackend
from castore.keys import Ref
from tests.helpers import log_path

pytestmark = pytest.mark.integration


def _stopped_store(root: Path, *, copied_after: int = 3) -> bytes:
    """Key ``a`` at 1, 2, deleted (3), ``b`` at 1; ``a``'s removal stopped after ``KEYS``.

    The log put back is ``a``'s as it was after ``copied_after`` versions (3: the
    tombstone, as a kill leaves it; 1: an older copy; 5: re-created and deleted
    again, where ``KEYS`` lost it), written by a twin store (as in
    test_restored_removed_log: no evidence of a copy). Returns its bytes.
    """
    twin = root.parent / f"{root.name}.twin"
    for where in (root, twin):
        with Store(where, dag="d") as store:
            store.set("a", 1)
            if where == root or copied_after > 1:
                store.set("a", 2)
                store.set("b", 10)
                store.delete("a")
            if where == twin and copied_after == 5:
                store.set("a", 4)
                store.delete("a")
            if where == root:
                time.sleep(0.02)
                assert store.compact(keep_within_seconds=0.01, prefix="a").keys_removed == 1
                assert store.gc(grace_seconds=0).logs_removed == 1
    shutil.copy(log_path(twin, "dag", "d", "a"), log_path(root, "dag", "d", "a"))
    return Path(log_path(root, "dag", "d", "a")).read_bytes()


def test_a_compaction_of_another_prefix_leaves_the_stopped_removal(tmp_path: Path) -> None:
    root = tmp_path / "s"
    stopped = _stopped_store(root)
    with Store(root, dag="d") as store:
        report = store.compact(keep_within_seconds=0, prefix="b")
        assert (report.refs_examined, report.keys_removed) == (1, 0)
        assert Path(log_path(root, "dag", "d", "a")).read_bytes() == stopped
        report = store.compact(keep_within_seconds=0, prefix="a")
        assert (report.refs_examined, report.keys_removed) == (1, 1)
        assert store.set("a", 4).version == 4


def test_a_stopped_removal_listed_again_is_visited_once(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _stopped_store(root)
    with Store(root, dag="d") as store:
        backend = store.backend
        assert isinstance(backend, FileBackend)
        backend.names.list_key(Ref("dag", "d", "a"), durable=True)  # as a killed re-creation
        report = store.compact(keep_within_seconds=0)
        assert (report.refs_examined, report.keys_removed) == (2, 1)
        assert store.set("a", 4).version == 4


@pytest.mark.parametrize("copied_after", [1, 5], ids=["older-live", "newer-tombstone"])
def test_a_log_not_ending_with_the_grave_s_tombstone_is_not_visited(
    tmp_path: Path, copied_after: int
) -> None:
    """Oracle: the twin without that log examines the same refs; the log is left as it is."""
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    _stopped_store(clean)
    copy = _stopped_store(damaged, copied_after=copied_after)
    Path(log_path(clean, "dag", "d", "a")).unlink()  # as if the removal had ended
    reports = []
    for root in (clean, damaged):
        with Store(root, dag="d") as store:
            report = store.compact(keep_within_seconds=0)
            reports.append((report.refs_examined, report.keys_removed))
    assert reports[0] == reports[1] == (1, 0)
    assert Path(log_path(damaged, "dag", "d", "a")).read_bytes() == copy


def test_a_key_recreated_after_compaction_looked_at_its_log_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look at the log is unlocked: under the lock, a newer version keeps the key."""
    root = tmp_path / "s"
    _stopped_store(root)
    looked = compact._ends_in_tombstone

    def then_recreated(*args: object) -> bool:
        ends = looked(*args)  # type: ignore[arg-type]
        with Store(root, dag="d") as writer:  # another writer, before compaction's lock
            assert writer.set("a", {"again": True}).version == 4
        return ends

    monkeypatch.setattr(compact, "_ends_in_tombstone", then_recreated)
    with Store(root, dag="d") as store:
        assert store.compact(keep_within_seconds=0).keys_removed == 0
    monkeypatch.undo()
    with Store(root, dag="d") as store:
        got = store.get("a")
        assert (got.version, got.value) == (4, {"again": True})
        assert [e.version for e in store.history("a").entries] == [4, 3, 2, 1]  # none lost


def test_check_leaves_a_stopped_removal_to_the_next_compaction_whatever_its_policy(
    tmp_path: Path,
) -> None:
    """Was: ``check --repair`` listed the key again, so a compaction that keeps the last
    five versions kept versions 1-3 (history ``[3, 2, 1]``), which ``GRAVES`` says were
    removed, while the report said "the next compact ends the removal" (mutation
    testing, thirty-eighth session). Now the repair leaves it, and compaction ends it."""
    root = tmp_path / "s"
    _stopped_store(root)
    keys = Path(log_path(root, "dag", "d", "a")).parent / "KEYS"
    before = keys.read_bytes()
    with Store(root, dag="d") as store:
        report = store.check(repair=True)
        assert report.ok
        (finding,) = report.findings
        assert (finding.severity, finding.repaired) == ("info", False)
        assert finding.repair == "none: the next compact ends the removal"
        assert keys.read_bytes() == before
        assert store.compact(keep_last=5).keys_removed == 1
        assert store.check().findings == []
        assert store.set("a", 4).version == 4
