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
from pathlib import Path

import pytest

import castore.file.graves as graves_module
from castore import Store
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
