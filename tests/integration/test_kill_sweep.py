"""Kills at every call that changes the store, and torn appends (``tests/killsweep.py``).

A child runs one ``castore`` command and kills itself with SIGKILL just before
its n-th call that changes a file (for n = 1, 2, ... until a run completes), or
tears its first long write to a log (what a SIGKILL during a long ``write(2)``
leaves). After each kill, on a fresh handle: every key holds its history from
before the command or the one the command makes (each key whole), ``check`` is
ok or made ok by ``check --repair``, and the command run again gives what an
uninterrupted run gave.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Any, Final

import pytest

from castore import Store
from castore.transfer import export_lines, import_lines

pytestmark = pytest.mark.integration

CHECKOUT: Final = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIG: Final = {"big": "imported value " * 40}  # > DEDUP_MIN_BYTES: a blob index record

History = dict[tuple[str, str, str], list[tuple[int, str, str]]]


def child(root: str, workdir: str, mode: tuple[str, str], *argv: str) -> tuple[int, bool]:
    """Run ``castore --dir root argv`` under ``tests.killsweep``: (exit code, completed)."""
    countfile = os.path.join(workdir, "count")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(countfile)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, (CHECKOUT, os.environ.get("PYTHONPATH")))),
    )
    env.pop("CASTORE_FAILPOINTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.killsweep", *mode, countfile, "--", "--dir", root, *argv],
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, os.path.exists(countfile)


def histories(root: str) -> History:
    """Every ref's versions as the export gives them: (version, op, value)."""
    store = Store(root, dag="a", durable=False)
    out: History = {}
    for line in list(export_lines(store))[1:-1]:
        rec: dict[str, Any] = json.loads(line)
        ref = (rec["scope"], rec["namespace"], rec["key"])
        value = json.dumps(rec.get("value"), sort_keys=True)
        out.setdefault(ref, []).append((rec["version"], rec["op"], value))
    return out


def export_file(path: str, source: str) -> None:
    """An export of keys with several versions each (an import appends each key's at once)."""
    store = Store(source, dag="a", durable=False)
    for key in ("k1", "k2"):
        store.set(key, {"v": 1})
        store.set(key, BIG)
        store.set(key, {"v": 3, "pad": "x" * 300})
        store.delete(key)
        store.set(key, {"v": 5})
    with open(path, "wb") as fh:
        fh.writelines(export_lines(store))


@pytest.mark.parametrize("durable", [True, False])
def test_import_killed_during_its_append_leaves_each_key_whole(tmp_path, durable):
    """A key's imported history is all there or not at all after a kill mid-append.

    Before the fix, an import appended a new key's versions in one ``write(2)``;
    torn by a kill, the prefix of whole frames read as the key's history (version
    1 as its newest, ``check`` reporting a torn tail), and ``import --on-conflict
    skip``, the documented way to import the rest, left the key at that version.
    """
    dump = str(tmp_path / "dump.jsonl")
    export_file(dump, str(tmp_path / "source"))
    want = histories(str(tmp_path / "source"))
    root = str(tmp_path / "store")
    sync = [] if durable else ["--no-sync"]
    code, done = child(root, str(tmp_path), ("torn", ".log"), *sync, "import", dump)
    assert (code, done) == (-signal.SIGKILL, False)  # the write was torn, the child killed
    got = histories(root)
    for ref, versions in got.items():
        assert versions == want[ref], ref  # each key whole, or absent
    report = Store(root, dag="a").check(repair=True)
    assert all(f.repaired or f.severity == "info" for f in report.findings), report.findings
    code, done = child(root, str(tmp_path), ("0", "0"), "import", "--on-conflict", "skip", dump)
    assert (code, done) == (0, True)
    assert histories(root) == want
    assert Store(root, dag="a").check().ok
    shutil.rmtree(root)


def test_export_keeps_the_grave_of_a_key_whose_recreation_was_killed(tmp_path):
    """A removed key listed again by a write killed before its append is exported as removed.

    The writer lists the key in ``KEYS`` before its append (FORMAT.md §6 step
    5); killed in between, the key is listed with no entry. Before the fix,
    export then wrote neither its versions (none) nor its removal record (only
    for unlisted keys), so an import of the export started the key again at
    version 1: versions 1-3 given twice.
    """
    root = str(tmp_path / "store")
    store = Store(root, dag="a", durable=False)
    store.set("gone", {"n": 1})
    store.set("gone", {"n": 2})
    store.delete("gone")
    assert store.compact(keep_last=1, keep_within_seconds=0).keys_removed == 1
    env = dict(os.environ, CASTORE_FAILPOINTS="before-append", PYTHONPATH=CHECKOUT)
    proc = subprocess.run(
        [sys.executable, "-m", "castore", "--dir", root, "--dag", "a", "set", "gone", "{}"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    assert histories(root) == {("dag", "a", "gone"): [(3, "delete", "null")]}
    copy = Store(str(tmp_path / "copy"), dag="a", durable=False)
    import_lines(copy, lambda: iter(export_lines(Store(root, dag="a"))))
    assert copy.set("gone", {"n": 4}).version == 4
    assert Store(root, dag="a").set("gone", {"n": 4}).version == 4


def _removal_store(root: str) -> None:
    """Keys to compact (one to remove: deleted) and to overwrite, a value shared across logs."""
    store = Store(root, dag="a", durable=False)
    for key in ("k1", "gone"):
        store.set(key, {"v": 1})
        store.set(key, BIG)
    store.delete("gone")
    store.list()  # STATE exists: every change appends P


def _newer_dump(path: str, source: str) -> None:
    """An export whose k1 is newer than the store's, and a new key: overwrite and append."""
    store = Store(source, dag="a", durable=False)
    for version in range(4):
        store.set("k1", {"imported": version})
        store.set("new", {"imported": version, "pad": "y" * 300})
    with open(path, "wb") as fh:
        fh.writelines(export_lines(store))


@pytest.mark.parametrize("command", ["compact", "import"])
def test_kill_before_every_call_leaves_every_key_before_or_after(tmp_path, command):
    """Kill before each call that changes a file; each key is as before or as after.

    ``compact`` removes a deleted key (``GRAVES``, ``KEYS``, the rename) and
    drops versions of another; ``import --on-conflict overwrite`` replaces one
    key's history and creates another. After each kill: every key as before or
    after; ``check`` ok, or ok after ``--repair``; a new version of each key
    above every version it had; and ``check --repair`` then the command again
    gives what the uninterrupted run gave.
    """
    seed, twin = str(tmp_path / "seed"), str(tmp_path / "twin")
    _removal_store(seed)
    argv = ["compact", "--keep-last", "1", "--keep-within", "0s"]
    if command == "import":
        dump = str(tmp_path / "dump.jsonl")
        _newer_dump(dump, str(tmp_path / "source"))
        argv = ["import", "--on-conflict", "overwrite", dump]
    shutil.copytree(seed, twin)
    before = histories(seed)
    assert child(twin, str(tmp_path), ("0", "0"), *argv) == (0, True)
    after = histories(twin)
    assert after != before
    calls = int((tmp_path / "count").read_text())
    assert calls > 20  # the sweep reaches every step
    for at in range(1, calls + 1):
        work = str(tmp_path / f"at{at}")
        shutil.copytree(seed, work)
        assert child(work, str(tmp_path), (str(at), "0"), *argv) == (-signal.SIGKILL, False)
        now = histories(work)
        for ref in {*before, *after, *now}:
            assert now.get(ref) in (before.get(ref), after.get(ref)), (at, ref)
        store = Store(work, dag="a", durable=False)
        store.check(repair=True)  # also ends a removal stopped after KEYS (info, FORMAT.md §5)
        assert Store(work, dag="a").check().ok, at
        assert child(work, str(tmp_path), ("0", "0"), *argv) == (0, True), at
        assert histories(work) == after, at
        for (_scope, namespace, key), versions in {**before, **now}.items():
            top = max(v for v, _op, _value in versions)
            assert store.set(key, {"after": at}, namespace=namespace).version > top, (at, key)
        shutil.rmtree(work)


def test_compaction_run_again_ends_a_removal_a_kill_stopped(tmp_path):
    """Compaction killed anywhere, then run again (no repair): as if never killed.

    Compaction takes a removed key out of ``KEYS`` before it renames the key's
    emptied log into place (FORMAT.md §5); killed in between, the old log kept
    its tombstone while ``KEYS`` no longer listed the key, so no later
    compaction visited it: the log's versions stayed (``check`` reported it,
    and only ``check --repair`` listed it again). Compaction now also takes
    the keys ``GRAVES`` records and ``KEYS`` does not, and ends their removal.
    """
    seed, twin = str(tmp_path / "seed"), str(tmp_path / "twin")
    _removal_store(seed)
    argv = ["compact", "--keep-last", "1", "--keep-within", "0s"]
    shutil.copytree(seed, twin)
    assert child(twin, str(tmp_path), ("0", "0"), *argv) == (0, True)
    after = histories(twin)
    calls = int((tmp_path / "count").read_text())
    again = Store(twin, dag="a").compact(keep_last=1, keep_within_seconds=0)
    assert (again.refs_examined, again.keys_removed) == (1, 0)  # the removed log: not visited
    for at in range(1, calls + 1):
        work = str(tmp_path / f"at{at}")
        shutil.copytree(seed, work)
        assert child(work, str(tmp_path), (str(at), "0"), *argv) == (-signal.SIGKILL, False)
        assert child(work, str(tmp_path), ("0", "0"), *argv) == (0, True), at
        assert histories(work) == after, at
        assert Store(work, dag="a").check().findings == [], at
        for key, version in (("k1", 3), ("gone", 4)):
            assert Store(work, dag="a").set(key, {"after": at}).version == version, (at, key)
        shutil.rmtree(work)
