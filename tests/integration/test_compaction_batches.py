"""Compaction removes the keys of a namespace in batches: one ``KEYS`` rewrite per batch.

Before, each removed key rewrote the whole ``KEYS`` file (and fdatasynced
``GRAVES`` once), so compacting a namespace with many deleted keys cost the
square of their number: 1,000 keys 3.3 s, 4,000 keys 25 s, 20,000 keys
400 s. Now the logs of up to 32 keys of a namespace are locked and decided
together, their graves recorded in one append and their lines taken out of
``KEYS`` in one rewrite, before any new log is renamed into place
(docs/FORMAT.md §6, "Compaction"). The oracles: how often ``KEYS`` is
rewritten, and every answer of the compacted store against what compaction
must leave (removed keys not found and continuing above their last version,
live keys untouched), also after a kill between the batch's graves and its
renames.
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


def test_removing_many_keys_rewrites_keys_once_per_batch(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "s")
    _fill(root)
    rewrites: list[str] = []
    real = KeyIndex._rewrite

    def counted(self: KeyIndex, *args: Any, **kw: Any) -> None:
        rewrites.append(os.path.basename(os.path.dirname(self.path)))
        real(self, *args, **kw)

    monkeypatch.setattr(KeyIndex, "_rewrite", counted)
    report = Store(root, dag="a").compact(keep_within_seconds=0)
    assert report.keys_removed == 73
    assert report.versions_dropped == 70 * 3 + 3 * 2 + 5  # every live key keeps its newest
    monkeypatch.undo()
    # 75 keys of dag a in batches of 32 (3 batches with removals), dag b one batch.
    assert len(rewrites) == 4, rewrites
    _expected_after(root)


def test_a_compaction_killed_before_its_first_rename_loses_nothing(tmp_path: pathlib.Path) -> None:
    root = str(tmp_path / "s")
    _fill(root)
    untouched = str(tmp_path / "copy")
    shutil.copytree(root, untouched)
    before = _answers(root)
    env = dict(os.environ, CASTORE_FAILPOINTS="rewrite-before-rename")
    env["PYTHONPATH"] = CASTORE_PATH
    done = subprocess.run(
        [sys.executable, "-m", "castore", "--dir", root, "compact", "--keep-within", "0"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    # The first batch's graves are recorded and its keys out of KEYS; no log was replaced.
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
    env = dict(os.environ, CASTORE_FAILPOINTS="before-append:stop", PYTHONPATH=CASTORE_PATH)
    slow = subprocess.Popen(  # stops holding k20's lock (a paused process, a slow disk)
        [sys.executable, "-m", "castore", "--dir", root, "--dag", "d", "set", "k20", "3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _stopped(slow.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        reports: list[Any] = []

        def compaction() -> None:
            with Store(root, dag="d", lock_timeout=20) as store:
                reports.append(store.compact(keep_last=1))

        thread = threading.Thread(target=compaction)
        thread.start()
        # It compacts k00 (not a timed wait: a loaded machine may take seconds), then
        # waits for k20; the old code held k00 meanwhile, and never got this far.
        deadline = time.monotonic() + 60
        with Store(root, dag="d") as reader:
            while [e.version for e in reader.history("k00").entries] != [2]:
                assert time.monotonic() < deadline, "k00 was never compacted"
                time.sleep(0.01)
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
