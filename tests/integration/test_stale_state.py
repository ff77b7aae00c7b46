"""An older copy of a namespace's ``STATE`` written back over it.

``STATE`` answers ``list`` without reading logs (docs/FORMAT.md §5): every
change to a log appends ``P`` for its key before it changes the log, so a
key whose last record is an ``S`` or a snapshot row names its log's newest
entry. A copy taken before later writes (a file restored from a backup, a
sync tool) lacks their ``P`` frames and answers ``list`` with older
versions and deleted keys as live. ``list`` cannot tell without reading
every log; ``check`` does (a settled record below its log's newest entry)
and ``--repair`` replaces the file, so that ``list`` reads the logs again.
Oracle: the same commands on an undamaged copy of the store.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from pathlib import Path
from typing import Final

import pytest

from castore import CorruptionError, Store
from castore.file import check as check_module
from castore.file import checklost
from castore.file.statefile import StateIndex
from castore.file.staterecords import Known
from castore.file.tree import Tree
from tests.helpers import file_backend, frames_of, log_path

pytestmark = pytest.mark.integration

DAG: Final = "stale"


def _listing(root: Path) -> list[tuple[str, int, str]]:
    store = Store(root, dag=DAG)
    try:
        return [(e.key, e.version, e.hash) for e in store.list().entries]
    finally:
        store.close()


def _stale_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A store whose ``STATE`` is a copy from before later writes, and its undamaged twin."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    for key in ("a", "b", "c"):
        store.set(key, 1)
    store.list()  # every key settled in STATE
    state = Path(log_path(root, "dag", DAG, "a")).parent / "STATE"
    old = state.read_bytes()
    store.set("a", 2)
    store.delete("b")
    store.set("d", 1)
    store.close()
    twin = tmp_path / "twin"
    shutil.copytree(root, twin)
    state.write_bytes(old)
    return root, twin


def test_check_finds_and_repairs_an_older_copy_of_state(tmp_path: Path) -> None:
    root, twin = _stale_copy(tmp_path)
    expected = _listing(twin)
    assert [k for k, _, _ in expected] == ["a", "c", "d"]
    store = Store(root, dag=DAG)
    report = store.check()
    assert not report.ok
    stale = [f for f in report.findings if "STATE" in f.path]
    assert len(stale) == 1, report.findings  # one finding for the file, naming the keys
    assert "older" in stale[0].problem
    assert "a" in stale[0].problem
    assert stale[0].severity == "error"
    assert not stale[0].repaired
    repaired = store.check(repair=True)
    assert repaired.ok
    assert any(f.repaired for f in repaired.findings if "STATE" in f.path)
    assert store.check().findings == []
    store.close()
    assert _listing(root) == expected
    assert _listing(root) == expected  # and again, from the rebuilt file
    twin_store, store = Store(twin, dag=DAG), Store(root, dag=DAG)
    for key in ("a", "b", "c", "d"):  # the logs were never touched
        assert [h.version for h in store.history(key).entries] == [
            h.version for h in twin_store.history(key).entries
        ]
    assert store.set("a", 3).version == twin_store.set("a", 3).version == 3
    store.close()
    twin_store.close()


def test_logs_changed_by_a_castore_from_before_state_are_found_and_repaired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A castore from before ``STATE`` (2026-12-01) appends no ``P`` (FORMAT.md §10).

    Its changes leave ``STATE`` as it was, which ``list`` answers with the older
    versions; ``check`` names that cause besides an older copy, and ``--repair``
    makes ``list`` read the logs again. Oracle: the logs, through ``get``.
    """
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    store.set("a", 1)
    store.set("b", 1)
    store.list()  # both keys settled in STATE
    store.close()
    with monkeypatch.context() as m:  # a writer that knows no STATE
        m.setattr(StateIndex, "pending", lambda self, key: False)
        old = Store(root, dag=DAG)
        assert old.set("a", 2).version == 2
        old.delete("b")
        old.close()
    assert [(k, v) for k, v, _ in _listing(root)] == [("a", 1), ("b", 1)]  # what STATE says
    store = Store(root, dag=DAG)
    report = store.check()
    stale = [f for f in report.findings if "STATE" in f.path]
    assert len(stale) == 1, report.findings
    assert "a castore from before STATE" in stale[0].problem
    assert "a, b" in stale[0].problem
    assert store.check(repair=True).ok
    store.close()
    assert [(k, v) for k, v, _ in _listing(root)] == [("a", 2)]


def test_an_undamaged_state_is_no_finding_while_writers_write(tmp_path: Path) -> None:
    """A change appends ``P`` before it changes its log: check racing writers finds nothing."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    keys = [f"k{n}" for n in range(8)]
    for key in keys:
        store.set(key, 0)
    store.list()
    stop = threading.Event()

    def write() -> None:
        writer, n = Store(root, dag=DAG), 0
        while not stop.is_set():
            n += 1
            writer.set(keys[n % len(keys)], n)
            if n % 5 == 0:
                writer.list()  # settles keys again: S frames and snapshots
        writer.close()

    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            report = store.check()
            assert report.findings == [], report.findings
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    store.close()


def test_a_key_compaction_removed_that_an_older_state_names_is_no_harm(tmp_path: Path) -> None:
    """``list`` asks ``STATE`` only for the keys ``KEYS`` lists: no finding, no stale answer."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    store.set("a", 1)
    store.set("gone", 1)
    store.list()
    state = Path(log_path(root, "dag", DAG, "a")).parent / "STATE"
    old = state.read_bytes()
    store.delete("gone")
    assert store.compact(keep_within_seconds=0).keys_removed == 1
    store.close()
    twin = tmp_path / "twin"
    shutil.copytree(root, twin)
    state.write_bytes(old)
    assert _listing(root) == _listing(twin)
    assert [k for k, _, _ in _listing(root)] == ["a"]
    store = Store(root, dag=DAG)
    assert store.check().findings == []
    store.close()


def test_a_state_rewritten_while_check_reads_it_again_is_no_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: the first version read ``STATE`` twice to confirm, and a write
    plus a ``list`` snapshot in between (the key dropped as pending) read as an alarm."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    store.set("k", 1)
    store.set("other", 1)
    store.list()
    other = Store(root, dag=DAG)  # another process's handle
    state_path = str(Path(log_path(root, "dag", DAG, "k")).parent / "STATE")
    walked = checklost.recorded_logs
    armed: list[bool] = []

    def recorded_logs(fs: Tree, nsdir: str, scope: str) -> dict[str, checklost.Recorded]:
        found = walked(fs, nsdir, scope)  # the walk read STATE: k settled at 1
        other.set("k", 2)
        other.list()  # then a write and a list: k settled at 2, its log's newest
        armed.append(True)
        return found

    class Racing(StateIndex):
        def known(self) -> Known | None:
            answer = super().known()
            if armed and armed.pop():  # once, right after check's confirming read
                other.set("k", 3)  # a write's P, then a snapshot that drops the key
                StateIndex(state_path, file_backend(other).fs, "dag", DAG).snapshot()
            return answer

    monkeypatch.setattr(check_module, "recorded_logs", recorded_logs)
    monkeypatch.setattr(checklost, "StateIndex", Racing)
    assert store.check().findings == []
    monkeypatch.undo()
    assert [(k, v) for k, v, _ in _listing(root)] == [("k", 3), ("other", 1)]
    other.close()
    store.close()


def test_the_repair_keeps_the_records_of_logs_it_could_not_check(tmp_path: Path) -> None:
    """Found by a review: the first repair removed ``STATE``, the only evidence of a log
    it could not check (locked past the timeout): that key then read as never written."""
    roots = {}
    for stale in (False, True):
        root = roots[stale] = tmp_path / f"stale-{stale}"
        store = Store(root, dag=DAG)
        for n in (1, 2, 3):
            store.set("b", {"n": n})
        store.set("c", 1)
        store.list()  # STATE settles b at 3 and c at 1
        state = Path(log_path(root, "dag", DAG, "c")).parent / "STATE"
        old = state.read_bytes()
        store.set("c", 2)
        store.close()
        if stale:
            state.write_bytes(old)  # c is behind
        b_log = Path(log_path(root, "dag", DAG, "b"))
        header = frames_of(b_log)[0][0]
        os.truncate(b_log, header.end)  # b's log lost every entry, and has no index
        assert not b_log.with_suffix(".vix").exists()
        fd = os.open(b_log, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a stopped process holds b's log
            report = Store(root, dag=DAG, lock_timeout=0.2).check(repair=True)
        finally:
            os.close(fd)
        assert not report.ok  # b: not checked
    for stale in (False, True):
        store = Store(roots[stale], dag=DAG)
        with pytest.raises(CorruptionError, match="STATE records version 3"):
            store.get("b")
        assert any("STATE records version 3" in f.problem for f in store.check().findings)
        with pytest.raises(CorruptionError):
            store.set("b", "again")
        store.close()
    assert _listing(roots[True]) == _listing(roots[False])  # c read from its log


def test_damaged_state_is_reported_and_started_again(tmp_path: Path) -> None:
    # Noticed in earlier sessions: check said nothing of a damaged STATE (list, which
    # never trusts it, rewrites it at its next run).
    root, twin = tmp_path / "s", tmp_path / "twin"
    store = Store(root, dag=DAG)
    for n in range(3):
        store.set(f"k{n}", n)
    store.list()
    store.close()
    shutil.copytree(root, twin)  # the undamaged twin
    state = next(root.glob("refs/dag/*/STATE"))
    data = bytearray(state.read_bytes())
    data[-5] ^= 0x01
    state.write_bytes(bytes(data))
    report = Store(root).check()
    assert report.ok  # derived data: information
    assert [(f.problem, f.severity, f.repaired) for f in report.findings] == [
        ("damaged bytes (derived data, never trusted: the next list rewrites it)", "info", False)
    ]
    repaired = Store(root).check(repair=True)
    assert [f.repaired for f in repaired.findings] == [True]
    assert [p.read_bytes() for p in root.glob("quarantine/*/refs/dag/*/STATE")] == [bytes(data)]
    assert Store(root).check().findings == []
    listed = [e.to_dict() for e in Store(root, dag=DAG).list().entries]
    assert listed == [e.to_dict() for e in Store(twin, dag=DAG).list().entries]


def test_a_state_moved_away_under_a_handle_gets_none_of_its_records(tmp_path: Path) -> None:
    """Found by a review: a handle keeps ``STATE`` open for its ``P`` records, and went on
    appending to the file after it was renamed away (out of the store) and a copy put in
    its place: the copy missed them, and every later ``list`` served the older version."""
    root, outside = tmp_path / "s", tmp_path / "outside"
    outside.mkdir()
    store = Store(root, dag=DAG)
    for key in ("a", "b"):
        store.set(key, 1)
    store.list()  # STATE made, every key settled
    store.set("a", 2)  # the handle's STATE descriptor is kept now
    state = Path(log_path(root, "dag", DAG, "a")).parent / "STATE"
    moved = outside / "STATE"
    os.rename(state, moved)
    shutil.copyfile(moved, state)
    before = moved.read_bytes()
    assert store.set("b", 2).version == 2
    assert moved.read_bytes() == before  # nothing outside the store is written
    twin = tmp_path / "twin"  # the oracle: the store as it is, STATE gone (every log read)
    shutil.copytree(root, twin)
    (Path(log_path(twin, "dag", DAG, "a")).parent / "STATE").unlink()
    assert _listing(root) == _listing(twin)
    assert [version for _, version, _ in _listing(root)] == [2, 2]
    store.close()
