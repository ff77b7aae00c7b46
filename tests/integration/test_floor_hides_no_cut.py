"""A repaired ``GRAVES``' floor covers removed keys only, never a cut of a live key's log.

``check --repair`` replaces a ``GRAVES`` whose damage no twin covers by a
floor far above every version of the namespace (FORMAT.md §7): where a
re-created key starts. Readers (``STATE``'s evidence) and ``check`` (the
index's and ``STATE``'s) compared a live key's log with that floor as if it
were the key's grave, so a log cut back one version below what ``STATE``
recorded was served as current, check found nothing, and the next ``set``
gave the cut version again; a cut the index proved was refused by readers
while check found it out of step, and its repair would not run. Oracle: the
same store without the damaged ``GRAVES`` (the floor alone differs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from castore import CorruptionError, Store
from castore.file.records import KIND_BLOB, KIND_HEADER
from tests.helpers import frames_of, log_path

pytestmark = pytest.mark.integration


def _store(root: Path, *, floor: bool) -> str:
    """Key ``k`` at versions 1 to 3 (``STATE`` and the index record them); its log's path.

    A floor in ``GRAVES`` if asked.
    """
    store = Store(root, dag="d")
    for version in (1, 2, 3):
        store.set("k", {"v": version})
    store.set("x", 1)
    store.delete("x")
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="x").keys_removed == 1
    store.list()  # STATE records k at 3
    assert store.get("k", version=1).version == 1  # the index records 1 to 3
    store.close()
    path = log_path(root, "dag", "d", "k")
    if floor:
        graves = Path(os.path.dirname(path)) / "GRAVES"
        graves.write_bytes(bytes(b ^ 0xFF for b in graves.read_bytes()))  # both twins
        store = Store(root, dag="d")
        assert store.check(repair=True).ok
        store.close()
    return path


def _store_with_a_cut(root: Path, evidence: str, *, floor: bool) -> None:
    """:func:`_store`, the log then cut back to version 2; ``evidence``: what records 3."""
    path = _store(root, floor=floor)
    if evidence == "state":
        os.unlink(path[: -len(".log")] + ".vix")
    else:
        os.unlink(Path(os.path.dirname(path)) / "STATE")
    frames, _ = frames_of(path)
    os.truncate(path, [f for f in frames if f.kind == KIND_BLOB][-1].start)  # version 3 goes


@pytest.mark.parametrize("evidence", ["index", "state"])
def test_a_cut_below_a_floor_is_refused_reported_and_repaired(
    tmp_path: Path, evidence: str
) -> None:
    for floor in (False, True):  # the oracle first
        root = tmp_path / f"floor-{floor}"
        _store_with_a_cut(root, evidence, floor=floor)
        store = Store(root, dag="d")
        with pytest.raises(CorruptionError, match=r"version 3|versions up to 3"):
            store.get("k")
        report = store.check()
        assert not report.ok, (floor, report.findings)
        assert any("no longer holds" in f.problem for f in report.findings)
        store.check(repair=True)
        with pytest.raises(CorruptionError, match="version 3 lost"):
            store.get("k")
        assert store.set("k", 4).version == 4  # never 3 again
        store.close()


def _lose_the_log(path: str, how: str) -> None:
    """The log cut to its header or gone; its index the only evidence of versions 1 to 3."""
    os.unlink(Path(os.path.dirname(path)) / "STATE")  # the index is the only evidence
    if how == "missing":
        os.unlink(path)
    else:
        frames, _ = frames_of(path)
        os.truncate(path, next(f for f in frames if f.kind == KIND_HEADER).end)


@pytest.mark.parametrize("how", ["header", "missing"])
def test_a_lost_log_whose_index_outlived_it_is_no_removal_below_a_floor(
    tmp_path: Path, how: str
) -> None:
    # Found by a review: the floor still stood for the grave of a log without entries
    # (or missing), so a live key whose log lost every entry read as "not found"
    # (missing) or was refused while check found nothing and --repair failed on it
    # (header); a set erased the index and went on above the floor. Entry offsets in an
    # index come from a life of the key (compaction marks what it drops "compacted").
    for floor in (False, True):  # the oracle first
        root = tmp_path / f"floor-{floor}"
        _lose_the_log(_store(root, floor=floor), how)
        store = Store(root, dag="d")
        with pytest.raises(CorruptionError, match="up to 3"):
            store.get("k")
        with pytest.raises(CorruptionError, match="up to 3"):
            store.set("k", 4)
        report = store.check()
        assert not report.ok, (floor, report.findings)
        assert store.check(repair=True).ok
        with pytest.raises(CorruptionError, match="versions 1-3 lost"):
            store.get("k")
        assert store.set("k", 4).version == 4  # never 1 to 3 again
        store.close()
