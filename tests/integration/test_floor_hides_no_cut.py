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

import contextlib
import os
import time
from pathlib import Path

import pytest

from castore import CorruptionError, NotFoundError, Store
from castore.file.records import KIND_BLOB, KIND_ENTRY, KIND_HEADER
from tests.helpers import frames_of, log_path

pytestmark = pytest.mark.integration


def _damage_graves(root: Path) -> None:
    """Both twins of every record of namespace ``dag/d``'s ``GRAVES`` flipped."""
    graves = Path(os.path.dirname(log_path(root, "dag", "d", "k"))) / "GRAVES"
    graves.write_bytes(bytes(b ^ 0xFF for b in graves.read_bytes()))


def _put_a_floor(root: Path) -> None:
    """``GRAVES`` damaged beyond its twins, then repaired: a floor far above every version."""
    _damage_graves(root)
    store = Store(root, dag="d")
    assert store.check(repair=True).ok
    store.close()


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
        _put_a_floor(root)
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


def _lose_the_log(path: str, how: str, evidence: str) -> None:
    """The log cut to its header or gone; ``evidence`` the only record of versions 1 to 3."""
    if evidence == "index":
        os.unlink(Path(os.path.dirname(path)) / "STATE")
    else:
        os.unlink(path[: -len(".log")] + ".vix")
    if how == "missing":
        os.unlink(path)
    else:
        frames, _ = frames_of(path)
        os.truncate(path, next(f for f in frames if f.kind == KIND_HEADER).end)


@pytest.mark.parametrize("evidence", ["index", "state"])
@pytest.mark.parametrize("how", ["header", "missing"])
def test_a_lost_log_is_no_removal_below_a_floor(tmp_path: Path, how: str, evidence: str) -> None:
    # Found by a review: the floor still stood for the grave of a log without entries
    # (or missing), so a live key whose log lost every entry read as "not found" (or,
    # cut to its header with its index, was refused while check found nothing and
    # --repair failed on it); a set went on above the floor (erasing the index). An
    # index's entry offsets, and STATE's last record of a live version (a delete appends
    # P first), come from a life of the key, which no repair's floor covers.
    for floor in (False, True):  # the oracle first
        root = tmp_path / f"floor-{floor}"
        _lose_the_log(_store(root, floor=floor), how, evidence)
        store = Store(root, dag="d")
        with pytest.raises(CorruptionError, match=r"up to 3|STATE records version 3"):
            store.get("k")
        with pytest.raises(CorruptionError, match=r"up to 3|STATE records version 3"):
            store.set("k", 4)
        report = store.check()
        assert not report.ok, (floor, report.findings)
        assert store.check(repair=True).ok
        with pytest.raises(CorruptionError, match="versions 1-3 lost"):
            store.get("k")
        assert store.set("k", 4).version == 4  # never 1 to 3 again
        store.close()


def _removed_at_3(root: Path, *, gc: bool, damaged: bool) -> None:
    """Key ``k`` set at 1 and 2, listed, deleted (version 3) and removed by compaction.

    ``gc``: its emptied log collected too; ``damaged``: both twins of ``GRAVES`` flipped.
    """
    store = Store(root, dag="d")
    store.set("k", 1)
    store.set("k", 2)
    store.list()
    store.delete("k")
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01).keys_removed == 1
    if gc:
        store.gc()
    store.close()
    if damaged:
        _damage_graves(root)


def test_a_removed_key_whose_grave_the_floor_took_stays_removed(tmp_path: Path) -> None:
    # The converse: STATE's highest record of a removed key is a live version (its
    # delete appended P after it), so the floor still covers it when damage took the
    # key's own record: no lost log, and the key starts again above the floor.
    root = tmp_path / "store"
    _removed_at_3(root, gc=False, damaged=True)  # STATE: k live at 2, then the delete's P
    store = Store(root, dag="d")
    assert store.check(repair=True).ok
    assert store.get("k").found is False
    assert [f for f in store.check().findings if f.severity == "error"] == []
    assert store.set("k", 3).version > 1_000_000  # above the floor
    store.close()


@pytest.mark.parametrize("damaged", [False, True])  # the oracle first
def test_a_removed_key_whose_grave_is_damaged_never_repeats_a_version(
    tmp_path: Path, damaged: bool
) -> None:
    # Found by a review: compaction removed k after its delete (version 3) and gc its
    # log; with both copies of GRAVES' record damaged, the check that repaired GRAVES
    # judged k's log lost by STATE's record of version 2 (taken before the delete) in
    # the same run, rewrote it as versions 1-2 lost, and the next set gave version 3
    # again. Until the run's floor stands for the damaged records, such a key is not lost.
    root = tmp_path / "store"
    _removed_at_3(root, gc=True, damaged=damaged)
    store = Store(root, dag="d")
    report = store.check(repair=True)
    assert [f.problem for f in report.findings if "GRAVES" not in f.path] == []
    assert store.check().ok
    assert store.get("k").found is False
    assert store.set("k", 4).version >= 4  # never 3 again
    store.close()


@pytest.mark.parametrize("floor", [False, True])  # the oracle first
def test_a_handle_that_read_a_version_of_a_lost_log_refuses_below_a_floor(
    tmp_path: Path, floor: bool
) -> None:
    # Found by a review: the log, its index and STATE all lost, the handle that had read
    # version 3 took a repair's floor for the key's grave (a removal since) and answered
    # "not found", and its set gave the floor's next version. What it saw is a life of
    # the key: only the key's own record (or the log's C frame) covers it.
    root = tmp_path / "store"
    path = _store(root, floor=floor)
    handle = Store(root, dag="d")
    assert handle.get("k").version == 3
    for gone in (path, path[: -len(".log")] + ".vix", os.path.join(os.path.dirname(path), "STATE")):
        os.unlink(gone)
    with pytest.raises(CorruptionError, match="read or wrote version 3"):
        handle.get("k")
    with pytest.raises(CorruptionError, match="up to 3"):  # the index it recorded
        handle.set("k", 4)
    handle.close()
    store = Store(root, dag="d")  # the evidence it recorded in the index: every reader's
    with pytest.raises(CorruptionError, match="up to 3"):
        store.get("k")
    assert not store.check().ok
    assert store.check(repair=True).ok
    assert store.set("k", 4).version == 4
    store.close()


@pytest.mark.parametrize("floor", [False, True])  # the oracle first
def test_a_version_a_live_key_never_had_is_not_called_compacted_below_a_floor(
    tmp_path: Path, floor: bool
) -> None:
    # Found by a review: in a namespace whose GRAVES a repair rewrote, get --version 5
    # of a key never removed said "version 5 was compacted (the key was removed as
    # deleted)": the floor taken for its grave.
    root = tmp_path / "store"
    _store(root, floor=floor)
    store = Store(root, dag="d")
    with pytest.raises(NotFoundError, match="has no version 5"):
        store.get("k", version=5)
    store.close()


def _deleted_with_its_tombstone_cut(root: Path, *, floor: bool) -> None:
    """Key ``k`` at 1 to 3, deleted (4) and listed; its log then loses the delete alone.

    No index: ``STATE``'s last record (a delete) is the only evidence. A floor if asked.
    """
    store = Store(root, dag="d")
    for version in (1, 2, 3):
        store.set("k", {"v": version})
    store.delete("k")  # version 4
    store.set("x", 1)
    store.delete("x")
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="x").keys_removed == 1
    store.list()  # STATE: k's last record the delete at 4
    store.close()
    path = log_path(root, "dag", "d", "k")
    if floor:
        _put_a_floor(root)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path[: -len(".log")] + ".vix")
    frames, _ = frames_of(path)
    os.truncate(path, [f for f in frames if f.kind == KIND_ENTRY][-1].start)  # 4 goes


@pytest.mark.parametrize("floor", [False, True])  # the oracle first
def test_a_cut_delete_of_a_log_with_entries_is_reported_below_a_floor(
    tmp_path: Path, floor: bool
) -> None:
    # Found by mutation testing: a log holding entries is its key's own life whatever
    # STATE's last record is (here a delete, not a live version); without that rule
    # check took the floor for its grave and found nothing, while readers refused it.
    root = tmp_path / "store"
    _deleted_with_its_tombstone_cut(root, floor=floor)
    store = Store(root, dag="d")
    with pytest.raises(CorruptionError, match="STATE records version 4"):
        store.get("k")
    report = store.check()
    assert any("STATE records version 4" in f.problem for f in report.findings), report
    assert store.check(repair=True).ok
    assert store.set("k", 5).version == 5  # never 4 again
    store.close()


def test_damage_in_a_live_log_names_the_same_versions_below_a_floor(tmp_path: Path) -> None:
    # Found by mutation testing: check's report of damage in a live key's log names the
    # versions the damaged bytes may hold counting from the key's own grave; with the
    # floor taken for it, the versions went unnamed. Oracle: the store without the floor.
    problems = []
    for floor in (False, True):
        root = tmp_path / f"floor-{floor}"
        path = _store(root, floor=floor)
        first = next(f for f in frames_of(path)[0] if f.kind == KIND_ENTRY)
        with open(path, "r+b") as log:  # version 1's entry frame damaged
            log.seek(first.start + 10)
            byte = log.read(1)[0]
            log.seek(first.start + 10)
            log.write(bytes([byte ^ 0xFF]))
        store = Store(root, dag="d")
        problems.append([f.problem for f in store.check().findings if "GRAVES" not in f.path])
        store.close()
    assert any("versions 1-1 may be there" in p for p in problems[0]), problems
    assert problems[1] == problems[0]


@pytest.mark.parametrize("damaged", [False, True])  # the oracle first
def test_a_removed_keys_stale_index_is_no_lost_log_while_graves_is_damaged(
    tmp_path: Path, damaged: bool
) -> None:
    # Found by mutation testing: an index of versions 1-2 outlived k's removal at 3 (its
    # log collected); with GRAVES' record of k damaged, nothing names the index's key, so
    # only the damage's "above anything" grave keeps check from judging it a lost log,
    # which a repair cannot mend (get refused after it) and which would give 3 again.
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set("k", 1)
    store.set("k", 2)
    store.get("k", version=1)  # an index of versions 1 and 2
    vix = Path(log_path(root, "dag", "d", "k")).with_suffix(".vix")
    kept = vix.read_bytes()
    store.delete("k")
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01).keys_removed == 1
    store.gc()
    store.close()
    vix.write_bytes(kept)  # as a reader racing gc leaves it
    if damaged:
        _damage_graves(root)
    store = Store(root, dag="d")
    report = store.check(repair=True)
    assert [f.problem for f in report.findings if "GRAVES" not in f.path] == [
        "version index without its log"
    ]
    assert store.check().ok
    assert store.get("k").found is False
    assert store.set("k", 4).version >= 4  # never 3 again
    store.close()


@pytest.mark.parametrize("listed", ["before-delete", "after-delete"])
@pytest.mark.parametrize("damaged", [False, True])  # the oracle first
def test_a_removed_keys_log_is_no_lost_log_while_graves_is_damaged(
    tmp_path: Path, damaged: bool, listed: str
) -> None:
    # Found by mutation testing: compaction removed k (deleted at 3), its log left
    # holding a C frame naming versions 1-3 and no entry; with both copies of GRAVES'
    # record damaged, check reported that log as one that lost acknowledged bytes
    # ("STATE records version 3, which the log no longer holds"), while its C frame
    # names those versions compacted, as readers count it: the record the damage took,
    # which the repair writes again. Oracle: the undamaged twin.
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set("k", 1)
    store.set("k", 2)
    if listed == "before-delete":
        store.list()  # STATE: k live at 2, then the delete's P
    store.delete("k")
    if listed == "after-delete":
        store.list()  # STATE: k's last record the delete at 3
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01).keys_removed == 1
    store.close()
    if damaged:
        _damage_graves(root)
    store = Store(root, dag="d")
    report = store.check(repair=True)
    restored = ["GRAVES lacks the last version (3) of dag/d/k, which compaction removed"]
    assert [f.problem for f in report.findings if "GRAVES" not in f.path] == restored * damaged
    assert store.check().ok
    assert store.get("k").found is False
    assert store.set("k", 4).version >= 4  # never 3 again
    store.close()
