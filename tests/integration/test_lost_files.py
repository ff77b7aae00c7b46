"""A key's log that is gone while evidence of its versions remains: lost, never "not found".

The version index (``.vix``) is built from the log only, the namespace's
``STATE`` records what ``list`` read from it, and compaction removes a log
only after recording the key's last version in ``GRAVES``, so either one
recording a version above the grave while the log is missing proves the log
held it and was lost (deleted by hand, a file system losing a directory entry).
Every read of that key must fail with ``CorruptionError`` (CLI exit 5,
the quick ``get`` included) rather than answer "not found" or write version
1 again; other keys answer exactly as on an undamaged copy; ``check`` reports
it, and ``check --repair`` records the lost versions as one ``damaged`` entry
so the key's next version is above them (docs/FORMAT.md §7).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from castore import CorruptionError, Store
from castore.cli import EXIT_DAMAGED
from tests.helpers import Cli, file_backend, key_answers, log_path

pytestmark = pytest.mark.integration

DAG: Final = "lost"


# The two kinds of evidence a lost log leaves, and what errors and findings say of each.
EVIDENCE: Final = {
    "index": "its version index records versions up to 3",
    # the index, then a zero-filled extension (a power loss, FORMAT.md §7): unknown, not more
    "index+zeros": "its version index records versions up to 3",
    "state": "the namespace's STATE records version 3",
}


@pytest.fixture(params=sorted(EVIDENCE))
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, str]:
    """An undamaged store, a copy whose key ``k`` lost its log, and the evidence left.

    ``index``: a version read built ``k``'s ``.vix``, which remains. ``state``:
    ``list`` recorded ``k`` in ``STATE``, and the log went with its index. ``index+zeros``:
    the index, zero-filled up to version 100.
    """
    clean = tmp_path / "clean"
    store = Store(clean, dag=DAG)
    for n in range(3):
        store.set("k", {"n": n})
    store.set("other", {"o": 1})
    if request.param.startswith("index"):
        assert store.get("k", version=3).value == {"n": 2}  # builds k's version index
    else:
        assert [e.key for e in store.list().entries] == ["k", "other"]  # into STATE
    store.close()
    lost = tmp_path / "lost"
    shutil.copytree(clean, lost)
    log = Path(log_path(lost, "dag", DAG, "k"))
    assert log.with_suffix(".vix").exists() == request.param.startswith("index")
    if request.param == "index+zeros":
        with open(log.with_suffix(".vix"), "r+b") as vix:
            vix.truncate(8 * 100)  # records 0 (unknown) for versions 4..100
    log.unlink()
    return clean, lost, EVIDENCE[request.param]


def test_every_read_of_a_lost_log_fails_and_other_keys_are_untouched(
    stores: tuple[Path, Path, str], tmp_path: Path
) -> None:
    clean, lost, evidence = stores
    failing = dict.fromkeys(["get", "get v1", "history", "export"], "CorruptionError")
    assert key_answers(lost, "k", DAG) == failing
    clean_answers, lost_answers = key_answers(clean, "other", DAG), key_answers(lost, "other", DAG)
    del clean_answers["export"], lost_answers["export"]  # the namespace's: k's fails
    assert lost_answers == clean_answers
    cli, twin = Cli(tmp_path, lost, dag=DAG), Cli(tmp_path, clean, dag=DAG)
    for args in (("get", "k"), ("get", "k", "--version", "2"), ("history", "k"), ("delete", "k")):
        err = cli.fail(EXIT_DAMAGED, *args, stdin=subprocess.DEVNULL)  # the quick get too
        assert f"is missing, but {evidence}" in err, err
    cli.fail(EXIT_DAMAGED, "set", "k", '{"n": 99}')  # the CLI's writers
    for args in (("get", "other"), ("get", "never")):
        assert cli.ok(*args) == twin.ok(*args)


def test_a_write_to_a_lost_log_is_refused_and_repair_keeps_versions_from_repeating(
    stores: tuple[Path, Path, str],
) -> None:
    _, lost, evidence = stores
    store = Store(lost, dag=DAG)
    log = Path(log_path(lost, "dag", DAG, "k"))
    report = store.check()  # before any write touched the key
    assert not report.ok
    [finding] = [f for f in report.findings if f.path.endswith(log.name)]
    assert finding.severity == "error", finding
    assert evidence.split(" ", 1)[1] in finding.problem, finding
    for write in (lambda: store.set("k", {"n": 99}), lambda: store.delete("k")):
        with pytest.raises(CorruptionError, match=r"versions up to 3|STATE records version 3"):
            write()
    assert not log.exists()  # nothing was written, not even an empty log
    vix = log.with_suffix(".vix")
    kept = vix.read_bytes() if vix.exists() else None
    assert store.check(repair=True).ok
    assert store.check().ok, store.check()
    copies = list((lost / "quarantine").glob(f"*/**/{vix.name}"))
    assert [p.read_bytes() for p in copies] == ([kept] if kept else [])  # the evidence is kept
    with pytest.raises(CorruptionError, match="versions 1-3 lost"):
        store.get("k")  # the newest version is the lost range: never "not found"
    [marker] = store.history("k").entries
    assert (marker.operation, marker.version) == ("damaged", 3)
    assert store.set("k", {"n": 3}).version == 4  # above every version the evidence proves
    assert store.get("other").value == {"o": 1}
    store.close()


@pytest.mark.parametrize("indexed", ["before-delete", "after-delete"])
def test_a_version_index_that_records_nothing_more_is_stale_and_removed(
    tmp_path: Path, indexed: str
) -> None:
    """An index left by a removed life (GRAVES covers it) is no evidence: reported, then removed.

    Also one recording the delete itself, the grave's own version (found by mutation
    testing: a writer that kept only an index below the grave refused the set).
    """
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    store.set("gone", 1)
    if indexed == "before-delete":
        store.get("gone", version=1)  # an index of version 1
    store.delete("gone")
    if indexed == "after-delete":
        store.get("gone", version=1)  # an index of versions 1 and 2 (the grave's)
    vix = Path(log_path(root, "dag", DAG, "gone")).with_suffix(".vix")
    kept = vix.read_bytes()
    assert store.compact(keep_within_seconds=0, prefix="gone").keys_removed == 1  # into GRAVES
    store.gc()  # removes the log (and its index)
    assert not vix.with_suffix(".log").exists()
    vix.write_bytes(kept)  # as a reader racing gc, or a compaction cut short, leaves it
    assert not store.get("gone").found  # the grave covers what the index records
    report = store.check()
    assert report.ok, report
    [finding] = report.findings
    assert (finding.problem, finding.severity) == ("version index without its log", "info")
    assert store.set("gone", 2).version == 3  # above the removed life, and not refused
    assert not vix.exists()  # the writer removed the stale index
    assert store.check().ok
    store.close()


def test_a_reader_of_a_removed_log_builds_no_index_for_its_path(tmp_path: Path) -> None:
    """A reader still holding a log that gc removed must not leave an index in its name."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    for n in range(3):
        store.set("k", n)
    backend = file_backend(store)
    log = backend.log(store.ref("k"))
    fd = log.open()
    try:
        os.unlink(log.path)  # as gc removes it while the reader holds it
        assert log.version_index(fd, 2) == -1
        assert not os.path.exists(log.vix_path)
    finally:
        os.close(fd)
    store.close()


def test_a_missing_log_with_its_index_and_state_is_reported_once(tmp_path: Path) -> None:
    # Found by mutation testing: the walk reports a missing log whose index remains;
    # STATE's gone logs must skip it (only those missing with their index), or check
    # reports the one loss twice.
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    for version in (1, 2, 3):
        store.set("k", version)
    store.list()  # STATE records 3
    store.get("k", version=1)  # an index records 1 to 3
    os.unlink(log_path(root, "dag", DAG, "k"))
    [finding] = store.check().findings
    assert "missing, but the version index records versions up to 3" in finding.problem
    assert store.check(repair=True).ok
    assert store.set("k", 4).version == 4
    store.close()
