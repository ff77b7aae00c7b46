"""A namespace directory (or ``refs/``) replaced under an open handle is never read as empty.

Found by a review (restores from a backup): a handle kept the descriptors of
the directories it had opened, so after an operator replaced a namespace
directory with an older copy (``rm -r`` then ``cp -a``) the handle read the
deleted directory: live keys answered "not found", ``list`` was empty,
``check`` said ok with 0 logs, a ``set`` died with a ``FileNotFoundError``
traceback, and the evidence of the cut a handle saw went into the deleted
directory, so a fresh process then gave a version twice. A handle now looks
at the directories on the path of a call that finds nothing: one the path no
longer names is dropped, and that call fails with ``StoreUnavailableError``
("try again", nothing read or written); maintenance drops them first. The
oracle: a fresh handle's answers on the restored store.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from castore import CorruptionError, Store, StoreUnavailableError
from tests.helpers import log_path, ns_dir, twin_with_six_versions

pytestmark = pytest.mark.integration


def _settled(call: Any) -> Any:
    """The call's answer once the handle has seen the replaced directory (one refusal)."""
    try:
        return call()
    except StoreUnavailableError as exc:
        refused = str(exc)
    assert "was replaced under this handle" in refused, refused
    assert "try again" in refused, refused
    return call()


@pytest.mark.parametrize("what", ["namespace", "refs"])
def test_a_directory_restored_under_an_open_handle_is_read_as_restored(
    tmp_path: Path, what: str
) -> None:
    root = tmp_path / "store"
    writer = Store(root, dag="d")
    writer.set("a", 1)
    writer.set("b", 1)
    namespace = Path(ns_dir(root, "dag", "d"))
    source = namespace if what == "namespace" else root / "refs"
    backup = tmp_path / "backup"
    shutil.copytree(source, backup)
    writer.set("b", 2)  # this handle wrote version 2, which the backup lacks
    reader = Store(root, dag="d")
    assert not reader.get("x").found  # it holds the namespace directory open now
    shutil.rmtree(source)
    shutil.copytree(backup, source)

    fresh = Store(root, dag="d")
    assert fresh.get("a").value == 1
    assert fresh.get("b").version == 1  # the older copy: only a handle that saw 2 knows
    fresh.close()

    assert _settled(lambda: reader.get("a")).value == 1
    assert reader.get("b").version == 1
    assert [e.key for e in reader.list().entries] == ["a", "b"]
    report = reader.check()
    assert (report.ok, report.logs) == (True, 2)
    assert reader.set("a", 9).version == 2
    # The handle that wrote version 2 of b refuses the older copy, and records the cut
    # where every process sees it: a fresh handle refuses it too, never gives 2 again.
    with pytest.raises(CorruptionError):
        _settled(lambda: writer.get("b"))
    with pytest.raises(CorruptionError):
        Store(root, dag="d").set("b", 3)
    assert writer.get("a").value == 9
    writer.close()
    reader.close()


def test_an_older_longer_copy_of_a_log_is_read_as_the_cut_its_index_proves(tmp_path: Path) -> None:
    # Found by the same review: after compaction and gc had made the log shorter, a copy
    # of it from before (longer) put back in its place read as its older newest version,
    # although the version index recorded the later versions (at offsets inside the
    # copy): a deleted key was served live, the next set repeated a version, and check
    # said ok. A record whose offset no longer holds that version's entry is evidence.
    root = tmp_path / "store"
    store = Store(root, dag="d")
    for v in (1, 2, 3):
        store.set("k", {"v": v})
    log = Path(log_path(root, "dag", "d", "k"))
    old = log.read_bytes()
    store.compact(keep_last=1)
    store.gc(grace_seconds=0)
    store.delete("k")  # version 4
    assert [e.version for e in store.history("k").entries] == [4, 3]  # indexed now
    store.close()
    assert len(old) > log.stat().st_size
    log.write_bytes(old)
    fresh = Store(root, dag="d")
    for call in (
        lambda: fresh.get("k"),
        lambda: fresh.set("k", {"v": 5}),
        lambda: fresh.incr("k", path="/v"),
    ):
        with pytest.raises(CorruptionError, match="no longer holds versions up to 4"):
            call()
    assert not fresh.check().ok
    fresh.check(repair=True)
    assert fresh.set("k", {"v": 5}).version == 5  # never 4 again
    fresh.close()


def test_an_index_record_at_another_version_s_entry_is_evidence_of_a_cut(tmp_path: Path) -> None:
    # Found by mutation testing: a record of a version above the log's newest entry whose
    # offset holds an intact E frame of another version (as in an older, longer copy of
    # the log) must count as a cut (FORMAT.md §7): a check of the frame's kind alone
    # served the older newest version as current. Oracle: the undamaged twin's answer.
    twin, root = tmp_path / "twin", tmp_path / "store"
    log, entries = twin_with_six_versions(twin, root)
    os.truncate(log, entries[5].end)  # version 6 cut off
    with open(log.with_suffix(".vix"), "r+b") as vix:  # its record: version 3's E frame
        vix.seek(8 * 5)
        vix.write(entries[3].start.to_bytes(8, "little"))
    assert Store(twin, dag="d").get("k").version == 6
    fresh = Store(root, dag="d")
    for call in (lambda: fresh.get("k"), lambda: fresh.set("k", {"v": 7})):
        with pytest.raises(CorruptionError, match="no longer holds versions up to 6"):
            call()
    assert not fresh.check().ok  # check reads the index by the same rule
    fresh.check(repair=True)
    assert fresh.set("k", {"v": 7}).version == 7  # never 6 again
    fresh.close()


def test_a_handle_never_lowers_a_grave_it_read(tmp_path: Path) -> None:
    # Found by the same review: a handle that had read a removed key's grave gave the key
    # version 1 again once GRAVES was removed (an older copy of the namespace put back).
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set("k", 1)
    store.set("k", 2)
    store.delete("k")
    store.set("other", "o1")  # no value k had: gc removes k's log (no blob another uses)
    time.sleep(1.1)
    assert store.compact(keep_last=1, keep_within_seconds=1).keys_removed == 1
    assert not store.get("k").found  # the handle read the grave
    assert store.set("other", "o2").version == 2
    store.gc(grace_seconds=0)
    assert not store.get("k").found
    os.remove(Path(ns_dir(root, "dag", "d")) / "GRAVES")
    assert store.set("k", "again").version == 4  # above the grave it read, never 1
    store.close()


@pytest.mark.parametrize("what", ["namespace", "refs"])
def test_the_refusal_names_the_directory_that_was_replaced(tmp_path: Path, what: str) -> None:
    """A review found ``refs/`` replaced named as nothing: " in the store at … was replaced"."""
    root = tmp_path / "store"
    with Store(root, dag="d") as store:
        store.set("a", 1)
        namespace = Path(ns_dir(root, "dag", "d"))
        source = namespace if what == "namespace" else root / "refs"
        # A miss in the namespace holds it open; one in a scope never opened, ``refs/`` only.
        scope = "dag" if what == "namespace" else "global"
        assert not store.get("x", scope=scope).found
        os.rename(source, tmp_path / "moved")
        with pytest.raises(StoreUnavailableError) as refused:
            store.get("x", scope=scope)
    named = os.path.relpath(source, root)
    assert str(refused.value).startswith(f"{named} in the store at {root} was replaced"), str(
        refused.value
    )
