"""Compaction removes the keys of a namespace in batches: one ``KEYS`` rewrite per batch.

Before, each removed key rewrote the whole ``KEYS`` file (and fdatasynced
``GRAVES`` once), so compacting a namespace with many deleted keys cost the
square of their number: 1,000 keys 3.3 s, 4,000 keys 25 s, 20,000 keys
400 s. Then the logs of up to 32 keys of a namespace were locked and decided
together, their graves recorded in one append and their lines taken out of
``KEYS`` in one rewrite, before any new log is renamed into place
(docs/FORMAT.md §8, "Compaction"): still one rewrite per 32 keys when the
removed keys are spread among others (442 s for 10,000 of 100,000). Now the
keys that go away are removed after the namespace's other logs, up to 128
per batch, and a log left as it is is unlocked at once. The oracles: how
often ``KEYS`` is rewritten, and every answer of the compacted store against
what compaction must leave (removed keys not found and continuing above
their last version, live keys untouched), also after a kill between the
batch's graves and its renames.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from castore import Store
from castore.file import compact as compact_module
from castore.file.keyindex import KeyIndex
from tests.helpers import CASTORE_PATH

pytestmark = pytest.mark.integration

REMOVED = [f"gone{i:03d}" for i in range(70)]
LIVE = [f"live{i}" for i in range(5)]


def _fill(root: str) -> None:
    with Store(root, dag="a", durable=False) as a, Store(root, dag="b", durable=False) as b:
        for key in REMOVED:
            a.set(key, {"k": key})
            a.set(key, 2)
            a.delete(key)  # version 3
        for key in LIVE:
            a.set(key, 1)
            a.set(key, {"v": key})
        for key in ("x", "y", "z"):
            b.set(key, 1)
            b.delete(key)


def _answers(root: str) -> dict[str, Any]:
    """Every answer this test compares: each key's get, history and list of both namespaces."""
    out: dict[str, Any] = {}
    for dag, keys in (("a", REMOVED + LIVE), ("b", ["x", "y", "z"])):
        with Store(root, dag=dag) as store:
            out[f"{dag}:list"] = [(e.key, e.version) for e in store.list().entries]
            for key in keys:
                got = store.get(key)
                history = [(e.version, e.operation) for e in store.history(key).entries]
                out[f"{dag}:{key}"] = (got.found, got.version, got.value, history)
    return out


def _expected_after(root: str) -> None:
    """What a finished compaction leaves, read through the library."""
    answers = _answers(root)
    assert answers["a:list"] == [(k, 2) for k in LIVE]
    assert answers["b:list"] == []
    for key in REMOVED:
        assert answers[f"a:{key}"] == (False, 0, None, [])
    for key in LIVE:
        assert answers[f"a:{key}"] == (True, 2, {"v": key}, [(2, "set")])
    with Store(root, dag="a") as a:
        assert a.set(REMOVED[40], 9).version == 4  # continues above its last version
        assert a.set("new", 1).version == 1
        assert a.check().ok


def _killed_compaction(root: str, point: str) -> None:
    """``castore compact --keep-within 0`` of the store, SIGKILLed at failpoint ``point``."""
    env = dict(os.environ, CASTORE_FAILPOINTS=point, PYTHONPATH=CASTORE_PATH)
    done = subprocess.run(
        [sys.executable, "-m", "castore", "--dir", root, "compact", "--keep-within", "0"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def _count_keys_rewrites(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The namespace directory of every ``KEYS`` rewrite from now on (until ``undo``)."""
    rewrites: list[str] = []
    real = KeyIndex._rewrite

    def counted(self: KeyIndex, *args: Any, **kw: Any) -> None:
        rewrites.append(os.path.basename(os.path.dirname(self.path)))
        real(self, *args, **kw)

    monkeypatch.setattr(KeyIndex, "_rewrite", counted)
    return rewrites


def test_removing_many_keys_rewrites_keys_once_per_batch(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "s")
    _fill(root)
    rewrites = _count_keys_rewrites(monkeypatch)
    report = Store(root, dag="a").compact(keep_within_seconds=0)
    assert report.keys_removed == 73
    assert report.versions_dropped == 70 * 3 + 3 * 2 + 5  # every live key keeps its newest
    monkeypatch.undo()
    # One batch of removals per namespace (before: dag a's 75 keys in 3 batches of 32).
    assert len(rewrites) == 2, rewrites
    _expected_after(root)


def test_keys_removed_among_keys_that_lose_versions_rewrite_keys_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a scheduled compaction meets: every key has versions to drop, a few were deleted.
    # Before, each batch of 32 logs held a removed key and rewrote KEYS (7 here; 3,125
    # rewrites of a 100,000-key file: 442 s).
    root = str(tmp_path / "s")
    gone = {f"k{i:03d}" for i in range(3, 200, 10)}
    with Store(root, dag="s", durable=False) as store:
        for i in range(200):
            store.set(f"k{i:03d}", 1)
            store.set(f"k{i:03d}", {"v": i})
            if f"k{i:03d}" in gone:
                store.delete(f"k{i:03d}")
    rewrites = _count_keys_rewrites(monkeypatch)
    report = Store(root, dag="s").compact(keep_within_seconds=0)
    monkeypatch.undo()
    assert len(rewrites) == 1, rewrites
    assert (report.refs_examined, report.refs_compacted) == (200, 200)
    assert (report.keys_removed, report.versions_dropped) == (20, 180 + 20 * 3)
    with Store(root, dag="s") as store:
        live = [f"k{i:03d}" for i in range(200) if f"k{i:03d}" not in gone]
        assert [(e.key, e.version) for e in store.list().entries] == [(k, 2) for k in live]
        for i in range(200):
            key = f"k{i:03d}"
            history = [(e.version, e.operation) for e in store.history(key).entries]
            got = store.get(key)
            if key in gone:
                assert (got.found, history) == (False, []), key
            else:
                assert (got.value, history) == ({"v": i}, [(2, "set")]), key
        assert store.set("k013", 1).version == 4  # continues above its last version
        assert store.check().ok


def test_a_batch_of_removals_ends_at_its_count_or_its_bytes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "s")
    _fill(root)
    shutil.copytree(root, tmp_path / "bytes")
    monkeypatch.setattr(compact_module, "_REMOVALS", 8)
    rewrites = _count_keys_rewrites(monkeypatch)
    assert Store(root, dag="a").compact(keep_within_seconds=0).keys_removed == 73
    monkeypatch.undo()
    assert len(rewrites) == 9 + 1, rewrites  # dag a's 70 removals 8 at a time, dag b's 3
    _expected_after(root)
    root = str(tmp_path / "bytes")
    monkeypatch.setattr(compact_module, "_HELD_BYTES", 1)  # each log it holds ends a batch
    rewrites = _count_keys_rewrites(monkeypatch)
    assert Store(root, dag="a").compact(keep_within_seconds=0).keys_removed == 73
    monkeypatch.undo()
    assert len(rewrites) == 73, rewrites
    _expected_after(root)


def test_a_compaction_killed_after_recording_its_removals_loses_nothing(
    tmp_path: pathlib.Path,
) -> None:
    root = str(tmp_path / "s")
    _fill(root)
    oracle = str(tmp_path / "oracle")
    shutil.copytree(root, oracle)
    before = _answers(root)
    Store(oracle, dag="a").compact(keep_within_seconds=0)
    after = _answers(oracle)
    _killed_compaction(root, "compact-after-bury")
    # dag a's live keys were compacted; its removals recorded in GRAVES, nothing else yet
    removing = {f"a:{key}" for key in REMOVED} | {f"b:{key}" for key in ("x", "y", "z")}
    want = {name: before[name] if name in removing else after[name] for name in before}
    assert _answers(root) == want
    Store(root, dag="a").compact(keep_within_seconds=0)  # the next one ends the removals
    assert _answers(root) == after
    with Store(root, dag="a") as a:
        assert a.set(REMOVED[3], 9).version == 4
        assert a.check().ok


def test_a_compaction_killed_before_its_first_rename_loses_nothing(tmp_path: pathlib.Path) -> None:
    root = str(tmp_path / "s")
    _fill(root)
    untouched = str(tmp_path / "copy")
    shutil.copytree(root, untouched)
    before = _answers(root)
    _killed_compaction(root, "rewrite-before-rename")
    # Killed at the first rename: a live key's, in the first pass (removals come after).
    assert _answers(root) == before == _answers(untouched)
    with Store(root, dag="a") as a:
        assert a.set(REMOVED[3], 9).version == 4  # written while its log keeps its tombstone
        assert a.delete(REMOVED[3]).deleted
        assert [e.version for e in a.history(REMOVED[3]).entries] == [5, 4, 3, 2, 1]
    Store(root, dag="a").check(repair=True)  # lists again the keys whose removal stopped
    Store(root, dag="a").compact(keep_within_seconds=0)
    answers = _answers(root)
    assert answers["a:list"] == [(k, 2) for k in LIVE]
    for key in REMOVED:
        assert answers[f"a:{key}"] == (False, 0, None, [])
    with Store(root, dag="a") as a:
        assert a.set(REMOVED[3], 1).version == 6
        assert a.set(REMOVED[4], 1).version == 4
        assert a.check().ok


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()[0] in ("T", "t")


def _stalled_writer(root: str, key: str) -> subprocess.Popen[bytes]:
    """A ``set`` of ``key`` stopped holding its log's lock (a paused process, a slow disk)."""
    env = dict(os.environ, CASTORE_FAILPOINTS="before-append:stop", PYTHONPATH=CASTORE_PATH)
    slow = subprocess.Popen(
        [sys.executable, "-m", "castore", "--dir", root, "--dag", "d", "set", key, "3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not _stopped(slow.pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return slow


def _compacting(root: str, **policy: Any) -> tuple[threading.Thread, list[Any]]:
    """A compaction of dag d in a thread (lock timeout 20 s), and where its report goes."""
    reports: list[Any] = []

    def compaction() -> None:
        with Store(root, dag="d", lock_timeout=20) as store:
            reports.append(store.compact(**policy))

    thread = threading.Thread(target=compaction)
    thread.start()
    return thread, reports


def _until_compacted(root: str, key: str) -> None:
    """Wait until ``key`` of dag d holds version 2 alone (no timed wait: a loaded machine)."""
    deadline = time.monotonic() + 60
    with Store(root, dag="d") as reader:
        while [e.version for e in reader.history(key).entries] != [2]:
            assert time.monotonic() < deadline, f"{key} was never compacted"
            time.sleep(0.01)


def test_a_writer_stalled_on_one_key_holds_up_no_write_to_the_other_keys(
    tmp_path: pathlib.Path,
) -> None:
    # Found by a review: the batch's first version waited for each log's lock while it
    # held the logs before it, so a writer stalled on k20 made a write to k00 time out.
    root = str(tmp_path / "s")
    with Store(root, dag="d", durable=False) as store:
        for i in range(32):
            store.set(f"k{i:02d}", 1)
            store.set(f"k{i:02d}", 2)  # a version for keep-last 1 to drop
    slow = _stalled_writer(root, "k20")
    try:
        thread, reports = _compacting(root, keep_last=1)
        # It compacts k00, then waits for k20; the old code held k00 meanwhile, and
        # never got this far.
        _until_compacted(root, "k00")
        with Store(root, dag="d", lock_timeout=3) as writer:
            written = writer.set("k00", {"new": True}).version
        assert reports == []  # still waiting for k20
    finally:
        os.kill(slow.pid, signal.SIGCONT)
        slow.wait(timeout=20)
    thread.join(timeout=60)
    assert written == 3
    assert slow.returncode == 0
    assert reports[0].refs_compacted == 32
    with Store(root, dag="d") as store:
        for i in range(32):
            history = [e.version for e in store.history(f"k{i:02d}").entries]
            # k00 was compacted (1 dropped) before the write; k20 after its writer went on
            want = {0: [3, 2], 20: [3]}.get(i, [2])
            assert history == want, (i, history)
        assert store.get("k00").value == {"new": True}
        assert store.get("k20").value == 3
        assert store.check().ok


def test_a_key_stalled_before_its_removal_holds_up_no_other_write(tmp_path: pathlib.Path) -> None:
    # Removals come after the namespace's other logs: the compaction waits for a stalled
    # writer's key holding no lock, and decides again under the lock a key it had put off
    # (deleted when it first looked, written again since).
    root = str(tmp_path / "s")
    with Store(root, dag="d", durable=False) as store:
        for i in range(40):
            store.set(f"k{i:02d}", 1)
            store.set(f"k{i:02d}", 2) if i % 2 == 0 else store.delete(f"k{i:02d}")
    slow = _stalled_writer(root, "k21")
    try:
        thread, reports = _compacting(root, keep_within_seconds=0)
        _until_compacted(root, "k20")  # k00-k20 compacted, then it waits for k21
        with Store(root, dag="d", lock_timeout=3) as writer:
            assert writer.set("k01", {"again": True}).version == 3  # put off, not held
            assert writer.set("k00", 3).version == 3
        assert reports == []  # still waiting for k21
    finally:
        os.kill(slow.pid, signal.SIGCONT)
        slow.wait(timeout=20)
    thread.join(timeout=60)
    assert slow.returncode == 0
    assert (reports[0].refs_examined, reports[0].keys_removed) == (40, 18)
    with Store(root, dag="d") as store:
        for i in range(40):
            history = [e.version for e in store.history(f"k{i:02d}").entries]
            want = {0: [3, 2], 1: [3], 21: [3]}.get(i, [2] if i % 2 == 0 else [])
            assert history == want, (i, history)
        assert store.get("k01").value == {"again": True}
        assert [e.key for e in store.list().entries] == sorted(
            f"k{i:02d}" for i in range(40) if i % 2 == 0 or i in (1, 21)
        )
        assert store.check().ok
