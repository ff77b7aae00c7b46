"""An older copy of a log put back after compaction removed its key is never read as current.

Compaction removes a deleted key: it records the key's last version (its
tombstone) in ``GRAVES``, then rewrites the log to its header, blob frames
and a ``C`` frame, which gc removes. An operator who then puts back an older
copy of the log (from a backup, with ``cp``) made the key's older version
read as current, and the next ``set`` gave the tombstone's version a second
time; ``check`` reported the repeat but could not repair it. A log that ends
at or below its key's grave (other than with the grave's own tombstone, which
a compaction stopped before the rewrite leaves) is now refused by readers and
writers, and ``check --repair`` rewrites it as compaction leaves a removed
key's log (the original kept in quarantine). The oracle: the same calls on an
undamaged copy of the store.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from castore import CorruptionError, NotFoundError, Store
from castore.keys import Ref
from castore.transfer import export_lines
from tests.helpers import Cli, file_backend, keys_path, log_path

pytestmark = pytest.mark.integration

STALE = "an older copy of the log was put back"


def _removed_store(root: Path, backup: Path, *, collected: bool, listed: bool = False) -> None:
    """Key ``a`` at versions 1, 2 (copied to ``backup``), deleted (3), compacted away.

    ``listed``: a ``list`` between the delete and the compaction (``STATE`` records 3).
    """
    store = Store(root, dag="d")
    store.set("a", 1)
    store.set("a", 2)
    store.set("b", 10)
    shutil.copy(log_path(root, "dag", "d", "a"), backup)
    store.delete("a")
    if listed:
        store.list()
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="a").keys_removed == 1
    if collected:
        assert store.gc(grace_seconds=0).logs_removed == 1
    store.close()


def _answers(store: Store) -> dict[str, Any]:
    """What the key answers after its removal: not found, then version 4."""
    got = store.get("a")
    out: dict[str, Any] = {"found": got.found, "version": got.version}
    out["history"] = [(e.version, e.operation) for e in store.history("a").entries]
    written = store.set("a", 5)
    out["set"] = (written.version, written.created)
    out["b"] = store.get("b").value
    return out


@pytest.mark.parametrize("collected", [True, False], ids=["after-gc", "before-gc"])
def test_an_old_log_put_back_over_a_removed_key_is_refused_then_repaired(
    tmp_path: Path, collected: bool
) -> None:
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    backup = tmp_path / "a.log"
    _removed_store(clean, backup, collected=collected)
    shutil.copytree(clean, damaged)
    shutil.copy(backup, log_path(damaged, "dag", "d", "a"))  # the older copy put back

    expected = _answers(Store(clean, dag="d"))
    assert expected["found"] is False
    assert expected["set"] == (4, True)

    store = Store(damaged, dag="d")
    calls: list[Callable[[], object]] = [
        lambda: store.get("a"),
        lambda: store.get("a", version=1),  # a version the key's removal dropped
        lambda: store.history("a"),
        lambda: store.set("a", 5),
        lambda: store.delete("a"),
        lambda: store.rollback("a", to_version=1),
        lambda: list(export_lines(store)),
    ]
    for call in calls:
        with pytest.raises(CorruptionError, match=STALE):
            call()
    assert store.get("b").value == 10  # other keys are never blocked
    report = store.check()
    assert not report.ok
    errors = [f for f in report.findings if f.severity == "error"]
    assert len(errors) == 1, report.findings
    assert STALE in errors[0].problem
    assert all(f.repaired for f in store.check(repair=True).findings)
    assert store.check().ok
    assert _answers(store) == expected
    assert list((damaged / "quarantine").rglob("*.log")), "the original is kept"
    store.close()


def test_a_handle_that_saw_the_key_removed_refuses_the_copy(tmp_path: Path) -> None:
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _removed_store(root, backup, collected=True)
    reader = Store(root, dag="d")
    assert not reader.get("a").found
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    with pytest.raises(CorruptionError, match=STALE):
        reader.get("a")
    with pytest.raises(CorruptionError, match=STALE):
        reader.set("a", 5)
    reader.close()


def test_an_old_life_put_back_over_a_recreated_key_is_refused(tmp_path: Path) -> None:
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _removed_store(root, backup, collected=True)
    store = Store(root, dag="d")
    assert store.set("a", 7).version == 4  # the key's second life
    store.close()
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    for call in (lambda: store.get("a"), lambda: store.set("a", 8)):
        with pytest.raises(CorruptionError, match=STALE):
            call()
    # KEYS lists the key again: the copy hides its second life, whose length is unknown.
    (finding,) = [f for f in store.check(repair=True).findings if f.severity == "error"]
    assert "lived again" in finding.problem
    assert finding.repaired
    with pytest.raises(CorruptionError, match="lost"):
        store.get("a")  # versions lost, as for any lost range, until a write supersedes them
    assert store.set("a", 8).version > 1_000_000  # never 4 again, nor 3
    assert store.get("a").value == 8
    assert store.check().ok
    store.close()


def test_a_compaction_stopped_before_its_rewrite_is_no_stale_copy(tmp_path: Path) -> None:
    """The log still ends with the grave's tombstone: the key is removed, continues at 4."""
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _removed_store(root, backup, collected=True)
    store = Store(root, dag="d")
    store.close()
    # The log as it was when compaction stopped after GRAVES: versions 1-3, 3 a tombstone.
    whole = tmp_path / "whole"
    store = Store(whole, dag="d")
    store.set("a", 1)
    store.set("a", 2)
    store.set("b", 10)
    store.delete("a")
    store.close()
    shutil.copy(log_path(whole, "dag", "d", "a"), log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    assert not store.get("a").found
    assert store.check().ok, store.check().findings
    assert store.set("a", 5).version == 4
    store.close()


def test_the_command_line_refuses_the_copy(tmp_path: Path) -> None:
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _removed_store(root, backup, collected=True)
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    cli = Cli(tmp_path, root)
    before = log_path(root, "dag", "d", "a")
    data = Path(before).read_bytes()
    assert STALE in cli.fail(5, "get", "a")
    assert STALE in cli.fail(5, "set", "a", "5")
    assert Path(before).read_bytes() == data  # nothing written


def test_a_read_that_a_delete_and_compaction_overtook_is_no_evidence(tmp_path: Path) -> None:
    """The tail read, then the key deleted and compacted away, then GRAVES read: no alarm."""
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set("a", 1)
    ref = Ref("dag", "d", "a")
    path = log_path(root, "dag", "d", "a")
    names = file_backend(store).names
    fd = os.open(path, os.O_RDONLY)  # the reader's read of version 1, live
    try:
        newest = file_backend(store).current(ref).entry
        other = Store(root, dag="d")
        other.delete("a")
        time.sleep(0.02)
        assert other.compact(keep_within_seconds=0.01).keys_removed == 1
        other.close()
        names.not_put_back(ref, path, newest, fd)  # confirmed on the file the path names now
        with pytest.raises(CorruptionError, match=STALE):
            names.not_put_back(ref, path, newest)  # unconfirmed (a lock holder's read): refused
    finally:
        os.close(fd)
    store.close()


def test_readers_never_raise_while_keys_are_deleted_and_compacted(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root, dag="d").set("k0", 0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            with Store(root, dag="d", durable=False) as writer:
                n = 0
                while not stop.is_set():
                    n += 1
                    for k in range(3):
                        writer.set(f"k{k}", n)
                    for k in range(3):
                        writer.delete(f"k{k}")
                    writer.compact(keep_within_seconds=0)
        except BaseException as exc:  # noqa: BLE001 - the main thread reports it
            errors.append(exc)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        with Store(root, dag="d") as reader:
            deadline = time.monotonic() + 3
            reads = 0
            while time.monotonic() < deadline:
                for k in range(3):
                    reader.get(f"k{k}")
                    reader.history(f"k{k}")
                    reads += 1
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert reads > 100


# Found by the review of these fixes (each failed before its fix).


def _second_life(root: Path, backup: Path, evidence: str) -> None:
    """``a``'s first life (1, 2) in ``backup``; removed at 3; lived again at 4, 5."""
    _removed_store(root, backup, collected=True)
    store = Store(root, dag="d")
    assert (store.set("a", 7).version, store.set("a", 8).version) == (4, 5)
    if evidence == "vix":
        assert store.get("a", version=4).value == 7  # readers index the log
    elif evidence == "state":
        store.list()  # STATE settles a at 5
    elif evidence == "no-keys":
        os.unlink(keys_path(root, "dag", "d"))
    store.close()


@pytest.mark.parametrize("evidence", ["vix", "state", "no-keys", "keys"])
def test_a_repair_never_brings_back_a_removed_life_nor_repeats_a_later_one(
    tmp_path: Path, evidence: str
) -> None:
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _second_life(root, backup, evidence)
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    store.check(repair=True)
    assert store.check().ok, store.check().findings
    with pytest.raises(CorruptionError, match="lost"):
        store.get("a")  # versions 4 and 5 went with the copy: lost, never "not found"
    with pytest.raises(NotFoundError, match="compacted"):
        store.get("a", version=1)  # as on the twin: never the removed life's value again
    assert store.set("a", 9).version > 5
    store.close()


def test_a_torn_copy_is_refused_by_every_read_and_repaired_in_one_pass(tmp_path: Path) -> None:
    root, twin = tmp_path / "store", tmp_path / "twin"
    store = Store(root, dag="d")
    for n in (1, 2, 3):
        store.set("a", n)
    store.set("b", 10)
    data = Path(log_path(root, "dag", "d", "a")).read_bytes()
    store.delete("a")
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="a").keys_removed == 1
    assert store.gc(grace_seconds=0).logs_removed == 1
    store.close()
    shutil.copytree(root, twin)
    Path(log_path(root, "dag", "d", "a")).write_bytes(data[:-5])  # copied mid-write
    store = Store(root, dag="d")
    calls: list[Callable[[], object]] = [
        lambda: store.get("a"),
        lambda: store.get("a", version=1),
        lambda: store.get("a", version=3),
        lambda: store.history("a"),
        lambda: store.set("a", 5),
    ]
    for call in calls:
        with pytest.raises(CorruptionError):
            call()
    store.check(repair=True)
    assert store.check().ok, store.check().findings
    assert _answers(store) == _answers(Store(twin, dag="d"))
    store.close()


def test_list_never_records_the_copy(tmp_path: Path) -> None:
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _second_life(root, backup, "keys")
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    for _ in range(2):
        listed = {e.key: e.version for e in store.list().entries}
        assert listed.get("a") != 2, listed  # never the copy's version
    store.close()


def test_a_version_the_copy_hides_is_refused_not_absent(tmp_path: Path) -> None:
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _second_life(root, backup, "keys")
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    with pytest.raises(CorruptionError, match=STALE):
        store.get("a", version=4)
    store.close()


@pytest.mark.parametrize("put_back", ["new-file", "in-place"])
def test_a_handle_that_read_versions_before_refuses_them_from_the_copy(
    tmp_path: Path, put_back: str
) -> None:
    """A kept log judged sound is judged again once the file at its path changes."""
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _second_life(root, backup, "vix")
    reader = Store(root, dag="d")
    assert [reader.get("a", version=v).value for v in (4, 5, 4)] == [7, 8, 7]
    path = log_path(root, "dag", "d", "a")
    if put_back == "new-file":
        os.unlink(path)
        shutil.copy(backup, path)
    else:
        time.sleep(0.02)  # past the clock's tick: the file's stat changes
        shutil.copyfile(backup, path)  # the same inode, rewritten
    for version in (1, 2, 4, 5):
        with pytest.raises(CorruptionError):  # the copy, or the cut its index shows
            reader.get("a", version=version)
    reader.close()


def test_a_copy_ending_with_its_tombstone_is_judged_again_once_its_index_is_back(
    tmp_path: Path,
) -> None:
    """Found by the review of the kept logs' judgement: while the ``.vix`` that marks the
    tombstone compacted was away, a handle read the copy; with the ``.vix`` back, that
    handle went on serving the removed life's versions that a new handle refuses."""
    root, backup = tmp_path / "store", tmp_path / "a.log"
    store = Store(root, dag="d")
    store.set("a", 1)
    store.set("a", 2)
    store.delete("a")
    path = log_path(root, "dag", "d", "a")
    shutil.copy(path, backup)  # ends with the tombstone, version 3
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="a").keys_removed == 1
    store.close()
    vix, away = Path(path[: -len(".log")] + ".vix"), tmp_path / "a.vix"
    os.replace(vix, away)
    os.replace(backup, path)
    reader = Store(root, dag="d")
    assert [reader.get("a", version=1).value for _ in range(2)] == [1, 1]  # no evidence
    os.replace(away, vix)
    for handle in (reader, Store(root, dag="d")):
        with pytest.raises(CorruptionError, match=STALE):
            handle.get("a", version=2)
        handle.close()


# Found by the review of the mends (each failed before its fix).


def test_another_keys_old_log_in_a_live_keys_place_is_never_repaired_as_its_copy(
    tmp_path: Path,
) -> None:
    root, backup = tmp_path / "store", tmp_path / "a.log"
    _removed_store(root, backup, collected=True)
    store = Store(root, dag="d")
    store.set("c", 5)
    store.set("c", 6)
    store.close()
    shutil.copy(backup, log_path(root, "dag", "d", "c"))  # a's old log, under c's name
    store = Store(root, dag="d")
    report = store.check(repair=True)
    assert all(STALE not in f.problem for f in report.findings), report.findings
    assert any("header names dag/d/a" in f.problem for f in report.findings)
    store.gc(grace_seconds=0)
    assert not store.check().ok  # still reported: c's log is not c's
    with pytest.raises(CorruptionError):
        store.get("c")  # never "not found", never version 1 again
    with pytest.raises(CorruptionError):
        store.set("c", 7)
    store.close()


def test_a_copy_whose_header_is_damaged_is_repaired_in_one_pass(tmp_path: Path) -> None:
    root, twin, backup = tmp_path / "store", tmp_path / "twin", tmp_path / "a.log"
    _removed_store(root, backup, collected=True)
    shutil.copytree(root, twin)
    data = bytearray(backup.read_bytes())
    data[10] ^= 0xFF  # inside the header frame
    Path(log_path(root, "dag", "d", "a")).write_bytes(bytes(data))
    store = Store(root, dag="d")
    store.check(repair=True)
    assert store.check().ok, store.check().findings
    assert _answers(store) == _answers(Store(twin, dag="d"))
    store.close()


def test_a_copy_ending_with_its_tombstone_over_a_later_life_is_refused(tmp_path: Path) -> None:
    """Copied between the delete and its compaction: the index marks the tombstone compacted."""
    root, backup = tmp_path / "store", tmp_path / "a.log"
    store = Store(root, dag="d")
    store.set("a", 1)
    store.set("a", 2)
    store.set("b", 1)  # b's value is a's blob: gc keeps a's emptied log, and its index
    store.delete("a")
    shutil.copy(log_path(root, "dag", "d", "a"), backup)  # ends with tombstone 3
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="a").keys_removed == 1
    store.gc(grace_seconds=0)
    assert (store.set("a", "x4").version, store.set("a", "x5").version) == (4, 5)
    store.close()
    vix = Path(log_path(root, "dag", "d", "a")[: -len(".log")] + ".vix")
    assert vix.exists()  # the later life's index marks 1-3 compacted
    shutil.copy(backup, log_path(root, "dag", "d", "a"))
    store = Store(root, dag="d")
    for call in (lambda: store.get("a"), lambda: store.set("a", 6)):
        with pytest.raises(CorruptionError, match=STALE):
            call()
    store.check(repair=True)
    assert store.check().ok, store.check().findings
    with pytest.raises(CorruptionError, match="lost"):
        store.get("a")
    assert store.set("a", 6).version > 5
    store.close()


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_compaction_leaves_a_copy_of_an_unlisted_key_to_check(
    tmp_path: Path, dry_run: bool
) -> None:
    """Was: compaction, which now also visits the keys ``GRAVES`` records and ``KEYS`` omits
    (to end a removal a kill stopped), met such a key's older copy put back, refused it
    (CorruptionError, exit 5) and stopped: the namespaces after it were never compacted,
    where the compaction before that visit compacted them and left the copy to ``check``.
    Oracle: the twin without the copy compacts the other key the same, and the copy
    stays as it was for ``check --repair``."""
    clean, damaged, backup = tmp_path / "clean", tmp_path / "damaged", tmp_path / "a.log"
    with Store(clean, dag="d") as store:
        store.set("a", 1)
        store.delete("a")
        shutil.copy(log_path(clean, "dag", "d", "a"), backup)  # ends with a tombstone: 2
        store.set("a", 3)
        store.delete("a")
        time.sleep(0.02)
        assert store.compact(keep_within_seconds=0.01, prefix="a").keys_removed == 1  # grave 4
    with Store(clean, dag="e") as other:  # another namespace
        for n in range(3):
            other.set("k", n)
    shutil.copytree(clean, damaged)
    shutil.copy(backup, log_path(damaged, "dag", "d", "a"))  # the older copy put back

    def compacted(root: Path) -> tuple[int, int, int]:
        with Store(root, dag="d") as store:
            report = store.compact(keep_last=1, dry_run=dry_run)
            return report.refs_compacted, report.versions_dropped, report.keys_removed

    assert compacted(damaged) == compacted(clean) == (1, 2, 0)
    assert Path(log_path(damaged, "dag", "d", "a")).read_bytes() == backup.read_bytes()
    with Store(damaged, dag="d") as store:
        assert any(STALE in f.problem for f in store.check().findings)
