"""check beside other processes' locks, and files removed while it walks.

A reader that extends a large version index holds the index's lock for a
while (1.35 s on a 137 MB log). check read a log and its index under the
log's shared lock and then waited for the index's: writers of that key
waited behind check, and timed out. A process stopped while it holds a
log's lock (a debugger, SIGSTOP, a frozen VM) made the whole check raise
LockTimeoutError, so nothing else was checked. And a log or blob index shard
that compaction or gc removed between check listing a directory and reading
the file made check raise FileNotFoundError. The oracles: the writer's set
succeeds (and is read back), the report names the locked log as not
checked and still checks every other log, and the removed files are not
reported while everything else checks as before.
"""

from __future__ import annotations

import fcntl
import glob
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from castore import Store
from castore.errors import CorruptionError, LockTimeoutError
from castore.file import tree as tree_module
from castore.reports import Finding

pytestmark = pytest.mark.integration


def _log_of(root: str, key_count: int = 1) -> list[str]:
    logs = sorted(glob.glob(os.path.join(root, "refs", "*", "*", "*.log")))
    assert len(logs) == key_count
    return logs


def test_a_writer_never_waits_for_check_while_a_reader_holds_the_index(tmp_path):
    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        for n in range(3):
            store.set("k", n)
        assert store.get("k", version=1).value == 0  # makes the version index
    (log,) = _log_of(root)
    vix = log[:-4] + ".vix"
    assert os.path.exists(vix)
    reader = os.open(vix, os.O_RDONLY)  # a reader extending the index holds it
    fcntl.flock(reader, fcntl.LOCK_EX)
    reports = []
    checker = threading.Thread(target=lambda: reports.append(Store(root, dag="d").check()))
    checker.start()
    try:
        time.sleep(0.3)  # check has read the log and found the index locked
        with Store(root, dag="d", lock_timeout=1.0) as writer:
            assert writer.set("k", 99).version == 4  # old code: LockTimeoutError
    finally:
        fcntl.flock(reader, fcntl.LOCK_UN)
        os.close(reader)
        checker.join()
    (report,) = reports
    assert report.ok
    assert report.findings == []
    with Store(root, dag="d") as store:
        assert store.get("k").value == 99
        assert [e.version for e in store.history("k").entries] == [4, 3, 2, 1]


def test_a_log_locked_by_a_stopped_process_is_reported_and_the_rest_checked(tmp_path):
    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        for key in ("a", "b", "c"):
            store.set(key, key)
    logs = _log_of(root, 3)
    with open(logs[0], "r+b") as damaged:  # another log with a flipped byte: still found
        damaged.seek(-3, os.SEEK_END)
        byte = damaged.read(1)
        damaged.seek(-3, os.SEEK_END)
        damaged.write(bytes([byte[0] ^ 0x40]))
    holder = os.open(logs[1], os.O_RDONLY)  # a writer stopped while holding the lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with Store(root, dag="d", lock_timeout=0.3) as store:
            report = store.check()  # old code: LockTimeoutError, nothing reported
    finally:
        os.close(holder)
    assert not report.ok
    assert report.logs == 3
    by_path = {f.path: f for f in report.findings}
    locked = by_path[os.path.relpath(logs[1], root)]
    assert locked.problem == "locked by another process for 0.3 s: not checked"
    assert not locked.repaired
    assert locked.severity == "error"
    assert os.path.relpath(logs[0], root) in by_path  # the damage, found as on its own
    assert os.path.relpath(logs[2], root) not in by_path
    with Store(root, dag="d") as store:  # once free, only the damage remains
        again = {f.path for f in store.check().findings}
        assert again == {os.path.relpath(logs[0], root)}


def test_files_removed_after_check_listed_them_are_skipped(tmp_path, monkeypatch):
    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        store.set("a", 1)
        store.set("b", {"x": 2})
        expected = store.check()
    assert expected.ok
    assert expected.findings == []
    listdir = tree_module.Tree.listdir

    def listing_with_ghosts(self, path):
        names = listdir(self, path)
        if any(n.endswith(".log") for n in names):
            names = [*names, "0" * 20 + ".log"]  # removed by compaction since
        if os.path.basename(path) == "index":
            names = [*names, "ff.idx"]  # replaced by gc since
        return names

    monkeypatch.setattr(tree_module.Tree, "listdir", listing_with_ghosts)
    with Store(root, dag="d") as store:
        report = store.check()  # old code: FileNotFoundError
    assert report.ok
    assert report.findings == []
    assert (report.logs, report.entries, report.blobs) == (
        expected.logs,  # a log removed before it was read is not counted
        expected.entries,
        expected.blobs,
    )


def test_a_missing_file_excuses_only_itself(tmp_path, monkeypatch):
    """A log removed meanwhile must not hide damage found while checking another file."""
    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        store.set("a", 1)
        store.set("b", 2)
    (keys,) = glob.glob(os.path.join(root, "refs", "*", "*", "KEYS"))
    with open(keys, "r+b") as f:  # KEYS no longer names its namespace
        f.write(b"X")
    with Store(root, dag="d") as store:
        alone = [(f.path, f.problem) for f in store.check().findings]
    assert alone == [(os.path.relpath(keys, root), "KEYS does not name its namespace")]
    listdir = tree_module.Tree.listdir

    def listing_with_a_ghost(self, path):
        names = listdir(self, path)
        if any(n.endswith(".log") for n in names):
            names = ["0" * 20 + ".log", *names]  # removed by compaction since
        return names

    monkeypatch.setattr(tree_module.Tree, "listdir", listing_with_a_ghost)
    with Store(root, dag="d") as store:
        report = store.check()  # the ghost also fails KEYS' look for a log header
    assert [(f.path, f.problem) for f in report.findings] == alone
    assert not report.ok


def test_a_repair_stopped_by_a_lock_is_not_reported_as_done(tmp_path):
    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        store.set("a", 1)
        store.set("a", 2)
    (log,) = _log_of(root)
    with open(log, "r+b") as f:  # damage the newest entry's last byte
        f.seek(-2, os.SEEK_END)
        byte = f.read(1)
        f.seek(-2, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))
    holder = os.open(log, os.O_RDONLY)  # a reader stopped while holding it shared
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        with Store(root, dag="d", lock_timeout=0.3) as store:
            report = store.check(repair=True)
    finally:
        os.close(holder)
    rel = os.path.relpath(log, root)
    assert not report.ok
    assert [f.repaired for f in report.findings] == [False] * len(report.findings)
    problems = [f.problem for f in report.findings if f.path == rel]
    assert problems[-1] == "locked by another process for 0.3 s: not repaired"
    assert len(problems) >= 2  # the damage, found before the repair waited
    with Store(root, dag="d") as store:  # still damaged: the repair never ran
        again = store.check()
    assert not again.ok
    assert {f.path for f in again.findings} == {rel}


def test_a_log_replaced_after_check_read_it_is_not_missing_from_keys(tmp_path, monkeypatch):
    """check reads a key's log, then compaction removes the deleted key from KEYS
    and rewrites its log: the old read is no longer the key's state, so no error."""
    from castore.file import checkkeys, checkread

    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        store.set("kept", 0)
    other = Store(root, dag="d")
    header = checkkeys.check_keys_header
    read = checkread.log_and_index

    def key_made_after_keys_was_read(*args):
        header(*args)
        other.set("late", 1)  # listed by the directory walk, not in check's KEYS copy

    def compacted_after_the_read(fs, path, timeout):
        state = read(fs, path, timeout)
        if b"late" in state[0]:
            other.delete("late")
            other.compact(keep_last=1, keep_within_seconds=0)
        return state

    monkeypatch.setattr("castore.file.check.check_keys_header", key_made_after_keys_was_read)
    monkeypatch.setattr(checkread, "log_and_index", compacted_after_the_read)
    with Store(root, dag="d") as store:
        report = store.check()
    other.close()
    assert [f for f in report.findings if f.severity != "info"] == []
    assert report.ok
    with Store(root, dag="d") as store:
        assert store.check().findings == []
        assert not store.get("late").found


def test_the_lock_timeout_still_bounds_a_repair(tmp_path):
    """Repair waits for a locked log only as long as the lock timeout, then goes on."""
    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        store.set("a", 1)
    (log,) = _log_of(root)
    holder = os.open(log, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with Store(root, dag="d", lock_timeout=0.2) as store:
            started = time.monotonic()
            report = store.check(repair=True)
            assert time.monotonic() - started < 5
            with pytest.raises(LockTimeoutError):  # the same lock still stops a writer
                store.set("a", 2)
    finally:
        os.close(holder)
    assert [f.problem for f in report.findings] == [
        "locked by another process for 0.2 s: not checked"
    ]
    assert not report.ok
    with Store(root, dag="d") as store:
        assert store.check().findings == []
        assert [e.version for e in store.history("a").entries] == [1]


def test_a_compaction_killed_after_taking_a_deleted_key_out_of_keys_is_no_error(tmp_path):
    """Compaction takes a deleted key out of KEYS before it replaces the key's log
    (FORMAT.md §6): killed in between, the log keeps its tombstone. That is a state
    the design allows, not damage: information, which repair leaves to the next
    compaction, whatever its policy, to end (thirty-eighth session; it listed the key
    again before, and a compaction keeping versions then kept the removed ones)."""
    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        store.set("gone", 1)
        store.delete("gone")
        store.set("kept", 2)
    store_at = f"castore.Store({root!r}, dag='d')"
    compact = f"import castore; {store_at}.compact(keep_last=1, keep_within_seconds=0)"
    env = {**os.environ, "CASTORE_FAILPOINTS": "rewrite-before-rename"}
    child = subprocess.run([sys.executable, "-c", compact], env=env, check=False)
    assert child.returncode == -signal.SIGKILL
    with Store(root, dag="d") as store:
        report = store.check()
        assert report.ok  # old code: an error, "key missing from KEYS"
        stopped = [f for f in report.findings if f.path.endswith(".log")]
        assert [(f.problem, f.severity, f.repaired) for f in stopped] == [
            ("a deleted key that a compaction stopped after taking out of KEYS", "info", False)
        ]
        assert not store.get("gone").found
        assert store.get("kept").value == 2
        repaired = store.check(repair=True)
        assert [f.repaired for f in repaired.findings if f.path.endswith(".log")] == [False]
        assert store.compact(keep_last=1, keep_within_seconds=0).keys_removed == 1  # ends it
        assert [f for f in store.check().findings if f.path.endswith(".log")] == []
        assert [e.key for e in store.list("").entries] == ["kept"]


def test_a_repair_waits_for_gc_before_it_moves_blobs(tmp_path):
    """A repair's log rewrite moves blob frames and its index rebuild replaces the shards,
    so both hold gc.lock (shared, exclusive; FORMAT.md §8) as compaction and gc do: held
    by a stopped gc, neither runs, the report says why, and nothing is changed."""
    root = str(tmp_path / "store")
    with Store(root, dag="d") as store:
        store.set("a", 1)
        store.set("a", 2)
        store.set("big", {"pad": "x" * 300})  # >= DEDUP_MIN_BYTES: an index shard
    log = next(p for p in _log_of(root, 2) if Path(p).read_bytes().count(b'"version"') == 2)
    with open(log, "r+b") as f:  # damage the newest entry's last byte
        f.seek(-2, os.SEEK_END)
        byte = f.read(1)
        f.seek(-2, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))
    (shard,) = glob.glob(os.path.join(root, "index", "*.idx"))
    with open(shard, "ab") as fh:
        fh.write(b"junk")
    before = {p: Path(p).read_bytes() for p in [log, shard]}
    holder = os.open(os.path.join(root, "gc.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a gc stopped between its mark and its sweep
    try:
        with Store(root, dag="d", lock_timeout=0.3) as store:
            report = store.check(repair=True)
    finally:
        os.close(holder)
    assert not report.ok
    by_path: dict[str, list[Finding]] = {}
    for finding in report.findings:
        by_path.setdefault(finding.path, []).append(finding)
    rel = os.path.relpath(log, root)
    assert by_path[rel][-1].problem == "gc.lock locked by another process for 0.3 s: not repaired"
    assert not any(f.repaired for f in by_path[rel])
    assert [(f.problem, f.repaired) for f in by_path["gc.lock"]] == [
        ("locked by another process for 0.3 s: the blob index was not rebuilt", False)
    ]
    assert not any(f.repaired for f in by_path[os.path.relpath(os.path.dirname(shard), root)])
    assert {p: Path(p).read_bytes() for p in [log, shard]} == before
    with Store(root, dag="d") as store:  # once gc is gone, the repair runs
        assert store.check(repair=True).ok
        assert [f.problem for f in store.check().findings if f.severity != "info"] == []
        with pytest.raises(CorruptionError, match="versions 2-6 lost"):  # never served older
            store.get("a")
        assert store.get("big").value == {"pad": "x" * 300}
