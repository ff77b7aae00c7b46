"""gc and check read a namespace's ``GRAVES`` once per run, not once per log.

Found by a review of gc (failed before its fix): gc's test of whether a
removed key's log may go, and check's grave of each log and its test for an
older copy of a removed key's log, each parsed ``GRAVES`` afresh, so both
took time in the square of the removed keys (4,000 of them: check 47 s, gc
124 s). Each run now keeps one graveyard per namespace, which reads only
what changed (a ``stat`` when nothing did). gc's still answers from the file
as it is at each question (a record lost meanwhile is no record: FORMAT.md §8).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

import castore.file.graves as graves_module
from castore import CorruptionError, Store
from castore.file import frames
from tests.helpers import log_path, ns_dir

pytestmark = pytest.mark.integration

REMOVED = 40


def _removed_keys(root: Path) -> Store:
    store = Store(root, dag="d", durable=False)
    for i in range(REMOVED):
        store.set(f"key{i}", {"i": i})
        store.delete(f"key{i}")
    assert store.compact(keep_within_seconds=0).keys_removed == REMOVED
    return store


def _parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the reads of a ``GRAVES`` file's bytes (each parse of what was read)."""
    calls: list[int] = []
    real = frames.classify_twinned

    def counted(data: bytes, start: int = 0):  # type: ignore[no-untyped-def]
        calls.append(len(data))
        return real(data, start)

    monkeypatch.setattr("castore.file.graves.classify_twinned", counted)
    return calls


def test_gc_reads_graves_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    _removed_keys(root)
    calls = _parses(monkeypatch)
    assert Store(root, dag="d").gc(grace_seconds=0).logs_removed == REMOVED
    assert len(calls) <= 2, len(calls)  # observed: one per log (40)


def test_check_reads_graves_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    _removed_keys(root)
    calls = _parses(monkeypatch)
    assert Store(root, dag="d").check().ok
    assert len(calls) <= 3, len(calls)  # observed: one per log, and one (41)


def test_gc_keeps_the_logs_of_graves_lost_during_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GRAVES`` lost after gc asked about the first removed key: the others' logs stay."""
    root = tmp_path / "s"
    _removed_keys(root)
    graves = os.path.join(ns_dir(root, "dag", "d"), "GRAVES")
    real = graves_module.Graveyard.version_of
    asked: list[str] = []

    def losing(self: graves_module.Graveyard, key: str) -> int:
        answer = real(self, key)
        asked.append(key)
        if len(asked) == 1:
            os.unlink(graves)  # lost: each later log's C frame is its only record
        return answer

    monkeypatch.setattr(graves_module.Graveyard, "version_of", losing)
    assert Store(root, dag="d").gc(grace_seconds=0).logs_removed == 1
    kept = [
        k
        for k in (f"key{i}" for i in range(REMOVED))
        if os.path.exists(log_path(root, "dag", "d", k))
    ]
    assert len(kept) == REMOVED - 1
    monkeypatch.undo()
    store = Store(root, dag="d")
    store.check(repair=True)  # GRAVES restored from the C frames left
    assert store.set(kept[0], "again").version == 3


def test_a_handles_reads_of_keys_no_grave_names_parse_no_graves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's get, history and set of a live key find no grave by ``GRAVES``' bytes.

    Each command's first read of a key parsed its namespace's whole ``GRAVES``
    to learn that no record named the key (20,000 removed keys: 60 ms of every
    `castore get`). The bytes that end a key's record (FORMAT.md §5) absent, no
    parse; the answers are the parsing handle's (the oracle: the same calls on a
    twin whose handle parsed first). A long-lived handle parses once, after 64.
    """
    root, twin = tmp_path / "s", tmp_path / "twin"
    store = _removed_keys(root)
    for i in range(70):
        store.set(f"live{i}", i)
    store.close()
    shutil.copytree(root, twin)
    oracle = Store(twin, dag="d")
    assert oracle.get("key0").found is False  # a key a grave names: GRAVES parsed

    def answers(store: Store) -> list[object]:
        out: list[object] = [store.get("live0").value, store.history("live1").entries[0].version]
        out.append(store.set("live2", "x").version)
        return [*out, *(store.get(f"live{i}").value for i in range(3, 70)), store.get("key3")]

    expected = answers(oracle)
    calls = _parses(monkeypatch)
    handle = Store(root, dag="d")
    first = [handle.get("live0").value, handle.history("live1").entries[0].version]
    assert calls == []
    assert [*first, *answers(handle)[2:]] == expected
    assert len(calls) == 1  # the 65th key: parsed once, read on after


@pytest.mark.parametrize("key", ["a", "caf\u00e9", 'q"x', "l\u2028s", "d\x7f", "t\x01"])
def test_an_old_log_put_back_is_refused_whatever_the_keys_characters(
    tmp_path: Path, key: str
) -> None:
    """Keys whose record is found by its bytes and keys whose JSON has escapes alike.

    The oracle: the twin without the copy answers "not found" and goes on at 4.
    """
    root, twin = tmp_path / "s", tmp_path / "twin"
    store = Store(root, dag="d")
    store.set(key, 1)
    store.set(key, 2)
    store.set("b", 10)
    path = log_path(root, "dag", "d", key)
    copy = Path(path).read_bytes()
    store.delete(key)
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix=key).keys_removed == 1
    store.close()
    shutil.copytree(root, twin)
    Path(path).write_bytes(copy)
    with pytest.raises(CorruptionError, match="an older copy of the log was put back"):
        Store(root, dag="d").get(key)
    with pytest.raises(CorruptionError, match="an older copy of the log was put back"):
        Store(root, dag="d").set(key, 3)
    oracle = Store(twin, dag="d")
    assert oracle.get(key).found is False
    assert oracle.set(key, 3).version == 4
