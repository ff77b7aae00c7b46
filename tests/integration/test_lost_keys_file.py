"""A namespace whose ``KEYS`` is lost still lists, exports and audits every key.

Found by a review: with ``KEYS`` deleted, ``list``, ``export`` and ``audit``
answered as if the namespace were empty (exit 0) while ``get`` still found its
keys; an export then silently left them out. Each answer is compared with the
same call on an undamaged copy of the store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from castore import ConflictError, Store
from castore.audit import audit
from castore.file import statefile
from castore.file.frames import scan_frames
from castore.transfer import export_lines, import_lines
from tests.helpers import file_backend, keys_path

pytestmark = pytest.mark.integration


def _build(root: Path) -> None:
    s = Store(root, dag="d")
    for key in ("a", "b/c", "gone", "deleted"):
        s.set(key, {"k": key})
    s.set("a", {"k": "a2"})
    s.delete("deleted")
    s.delete("gone")
    s.compact(prefix="gone", keep_within_seconds=0)  # removes the key: GRAVES keeps it
    s.set("other", 1, namespace="e")


def _answers(root: Path) -> tuple[object, ...]:
    s = Store(root, dag="d")
    listed = s.list(include_values=True).entries
    return (
        [(e.key, e.version, e.value) for e in listed],
        list(export_lines(s)),
        list(audit(s)),
        s.get("a").value,
    )


def _versions(root: Path) -> tuple[object, ...]:
    """What :func:`_answers` gives, but times and pids (two stores wrote ``zz``)."""
    s = Store(root, dag="d")
    listed = [(e.key, e.version, e.value) for e in s.list(include_values=True).entries]
    exported = [json.loads(line) for line in export_lines(s)][1:-1]  # head and end: no keys
    return (
        listed,
        [(e["namespace"], e["key"], e["version"], e.get("value")) for e in exported],
        [(r.key, r.version, r.operation) for r in audit(s)],
    )


@pytest.mark.parametrize("also_state", [False, True])
def test_a_lost_keys_file_hides_no_key(tmp_path: Path, also_state: bool) -> None:
    twin, damaged = tmp_path / "twin", tmp_path / "damaged"
    _build(twin)
    Store(twin, dag="d").list()  # STATE exists
    shutil.copytree(twin, damaged)
    keys = Path(keys_path(damaged, "dag", "d"))
    keys.unlink()
    if also_state:
        (keys.parent / "STATE").unlink(missing_ok=True)
    assert _answers(damaged) == _answers(twin)
    assert [f.path for f in Store(damaged, dag="d").check().findings]  # check says so


def _keys_damage(keys: Path, how: str) -> None:
    if how == "first byte":
        data = bytearray(keys.read_bytes())
        data[0] ^= 0xFF
        keys.write_bytes(bytes(data))
    elif how == "emptied":
        keys.write_bytes(b"")
    else:  # another namespace's KEYS copied over it
        keys.write_bytes(Path(keys_path(keys.parents[3], "dag", "e")).read_bytes())


def _lose_keys(
    tmp_path: Path, how: str, before: Callable[[], object] | None = None
) -> tuple[Path, Path, Path]:
    """An undamaged store, and its copy whose ``KEYS`` is ``how`` ("lost" or "emptied")."""
    twin, damaged = tmp_path / "twin", tmp_path / "damaged"
    _build(twin)
    if before is not None:
        before()
    shutil.copytree(twin, damaged)
    keys = Path(keys_path(damaged, "dag", "d"))
    if how == "lost":
        keys.unlink()
    else:
        _keys_damage(keys, "emptied")
    return twin, damaged, keys


@pytest.mark.parametrize("how", ["first byte", "emptied", "another namespace's"])
def test_a_damaged_keys_file_hides_no_key_or_namespace(tmp_path: Path, how: str) -> None:
    """Found by a review: with ``KEYS``'s first line damaged, emptied or another
    namespace's, ``export`` (and ``compact``) left the whole namespace out and an
    emptied one made ``list`` answer no keys, each with exit 0."""
    twin, damaged = tmp_path / "twin", tmp_path / "damaged"
    _build(twin)
    shutil.copytree(twin, damaged)
    _keys_damage(Path(keys_path(damaged, "dag", "d")), how)
    assert _answers(damaged) == _answers(twin)
    assert [f.path for f in Store(damaged, dag="d").check().findings]  # check says so


@pytest.mark.parametrize("how", ["lost", "emptied"])
def test_a_write_after_keys_was_lost_lists_every_key_again(tmp_path: Path, how: str) -> None:
    """Found by a review: the first write of a new key made ``KEYS`` anew, listing that key
    alone, and ``list``, ``export`` and ``audit`` then left the others out (exit 0)."""
    twin, damaged, _ = _lose_keys(tmp_path, how)
    for root in (twin, damaged):
        Store(root, dag="d").set("zz", 1)
    assert _versions(damaged) == _versions(twin)
    assert Store(damaged, dag="d").check().ok  # listed again: nothing is missing


@pytest.mark.parametrize("how", ["lost", "emptied"])
def test_a_compaction_that_removes_a_key_of_a_lost_keys_file_lists_the_others(
    tmp_path: Path, how: str
) -> None:
    """Was: compaction removing a key rewrote a lost or emptied ``KEYS`` naming no
    namespace and listing nothing (or left it lost), so ``check`` failed after it and
    no later write listed the other keys again (``KEYS`` no longer read as lost)."""
    twin, damaged, keys = _lose_keys(
        tmp_path, how, lambda: Store(tmp_path / "twin", dag="d").delete("a")
    )
    for root in (twin, damaged):
        removed = Store(root, dag="d").compact(prefix="a", keep_within_seconds=0)
        assert removed.keys_removed == 1
    assert _answers(damaged) == _answers(twin)
    assert keys.read_bytes() == Path(keys_path(twin, "dag", "d")).read_bytes()
    assert Store(damaged, dag="d").check().ok
    for root in (twin, damaged):
        Store(root, dag="d").set("zz", 1)
    assert _versions(damaged) == _versions(twin)


_KILLED = """
import os, sys
from castore import Store
from castore.file import keyindex
real_add, real_rewrite = keyindex.KeyIndex._add, keyindex.KeyIndex._rewrite
def add(self, *args, **kwargs):
    real_add(self, *args, **kwargs)
    os._exit(9)  # killed after the first line it lists
def rewrite(self, *args, **kwargs):
    if sys.argv[2] != "before":
        real_rewrite(self, *args, **kwargs)
    if sys.argv[2] != "first line":
        os._exit(9)
keyindex.KeyIndex._add, keyindex.KeyIndex._rewrite = add, rewrite
store = Store(sys.argv[1], dag="d")
store.set("zz", 1) if sys.argv[3] == "set" else store.check(repair=True)
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_write_killed_while_it_lists_the_keys_of_a_lost_keys_file_hides_none(
    tmp_path: Path, when: str
) -> None:
    """Found by a review: the keys of a lost ``KEYS`` were listed one line at a time, so a
    kill among them (or a ``list`` meanwhile) saw a ``KEYS`` listing a few keys, no longer
    lost: the others were gone from ``list`` for good. They are listed in one rewrite."""
    twin, damaged = tmp_path / "twin", tmp_path / "damaged"
    _build(twin)
    shutil.copytree(twin, damaged)
    Path(keys_path(damaged, "dag", "d")).unlink()
    child = subprocess.run(
        [sys.executable, "-c", _KILLED, str(damaged), when, "set"], check=False, timeout=60
    )
    assert child.returncode == 9
    listed = [e.key for e in Store(damaged, dag="d").list().entries if e.key != "zz"]
    assert listed == [e.key for e in Store(twin, dag="d").list().entries]
    assert Store(damaged, dag="d").check(repair=True).ok


@pytest.mark.parametrize("how", ["lost", "emptied"])
@pytest.mark.parametrize("when", ["first line", "after"])
def test_a_repair_killed_while_it_lists_the_keys_of_a_lost_keys_file_hides_none(
    tmp_path: Path, how: str, when: str
) -> None:
    """Found by a review: ``check --repair`` listed the keys of a lost ``KEYS`` one append
    at a time (a header first, then a line per log), so a repair killed among them left a
    well-formed ``KEYS`` listing a few keys: ``list`` left the others out for good."""
    twin, damaged, _ = _lose_keys(tmp_path, how)
    child = subprocess.run(
        [sys.executable, "-c", _KILLED, str(damaged), when, "repair"], check=False, timeout=60
    )
    assert child.returncode in (0, 9)  # 0: nothing listed a line or rewrote after it
    assert _answers(damaged) == _answers(twin)
    assert Store(damaged, dag="d").check(repair=True).ok


@pytest.mark.parametrize("how", ["lost", "emptied"])
def test_an_import_overwrite_into_a_lost_keys_file_lists_every_key(
    tmp_path: Path, how: str
) -> None:
    """Found by a review: an import ``--overwrite`` made ``KEYS`` anew listing the key it
    imported alone, so ``list`` and ``export`` left every other key out (exit 0)."""
    twin, damaged, _ = _lose_keys(tmp_path, how)
    source = tmp_path / "source"
    src = Store(source, dag="d")
    for i in range(5):
        src.set("a", {"i": i})
    lines = list(export_lines(src))
    for root in (twin, damaged):
        import_lines(Store(root, dag="d"), lambda: iter(lines), on_conflict="overwrite")
    assert _versions(damaged) == _versions(twin)
    assert Store(damaged, dag="d").check().ok


def test_a_lost_graves_file_still_exports_the_removed_key(tmp_path: Path) -> None:
    """Was: export left out the removed key, so after an import its versions began again at 1."""
    twin, damaged = tmp_path / "twin", tmp_path / "damaged"
    _build(twin)
    shutil.copytree(twin, damaged)
    (Path(keys_path(damaged, "dag", "d")).parent / "GRAVES").unlink()
    lines = list(export_lines(Store(damaged, dag="d")))
    assert lines == list(export_lines(Store(twin, dag="d")))
    assert [line for line in lines if b'"key":"gone"' in line]
    for where in ("from-damaged", "from-twin"):
        copy = Store(tmp_path / where, dag="d")
        import_lines(copy, lambda: lines)
        assert copy.set("gone", 1).version == 3  # versions 1 and 2 were the removed life's


def test_lost_keys_and_graves_files_still_export_the_removed_key(tmp_path: Path) -> None:
    """With both gone, the removed key's log (waiting for gc) was listed as a key, then left
    out of export as one: after an import its versions began again at 1."""
    twin, damaged = tmp_path / "twin", tmp_path / "damaged"
    _build(twin)
    shutil.copytree(twin, damaged)
    nsdir = Path(keys_path(damaged, "dag", "d")).parent
    (nsdir / "KEYS").unlink()
    (nsdir / "GRAVES").unlink()
    assert _answers(damaged) == _answers(twin)


def _refused_namespace(root: Path) -> tuple[Store, Path]:
    """A store whose namespace custom/other only a refused first write made (no KEYS)."""
    s = Store(root, dag="d")
    s.set("a", 0)
    with pytest.raises(ConflictError):
        s.set("a", 1, scope="custom", namespace="other", expected_version=1)
    return s, Path(keys_path(root, "custom", "other")).parent


def test_a_namespace_only_a_refused_write_and_a_list_saw_is_no_finding(tmp_path: Path) -> None:
    """Found by the store model's new teardown check (eighteenth session): a conditional
    write refused in a new namespace made its directory, a list then recorded the empty
    namespace in STATE, and check reported "KEYS does not name its namespace" (exit 1) for
    a store nothing was wrong with. A KEYS lost beside a GRAVES is still reported."""
    s, nsdir = _refused_namespace(tmp_path / "store")
    assert s.list(scope="custom", namespace="other").entries == []
    assert list(nsdir.iterdir()) == []  # a list makes no STATE where KEYS is missing
    assert s.check().findings == []
    file_backend(s).names.state("custom", "other").create()  # as the list before did
    assert sorted(p.name for p in nsdir.iterdir()) == ["STATE"]
    assert s.check().findings == []
    _build(tmp_path / "removed")  # "gone" removed by compaction: its name is in GRAVES
    removed = Store(tmp_path / "removed", dag="d")
    removed.gc(grace_seconds=0)
    gone_dir = Path(keys_path(tmp_path / "removed", "dag", "d")).parent
    for path in gone_dir.iterdir():
        if path.name.endswith((".log", ".vix")) or path.name == "KEYS":
            path.unlink()
    assert "KEYS does not name its namespace" in [f.problem for f in removed.check().findings]


_KILLED_FIRST_WRITE = """
import os, sys
from castore import Store
from castore.file import namespaces
def list_key(self, *args, **kwargs):
    os._exit(9)  # killed after it made the new log, before it lists the key in KEYS
namespaces.Namespaces.list_key = list_key
Store(sys.argv[1]).set("k", 1, scope="dag", namespace="fresh")
"""


def test_a_first_write_of_a_namespace_killed_before_keys_leaves_no_error(tmp_path: Path) -> None:
    """Found by a review (thirty-sixth session): a first write of a new namespace killed
    after it made its log and before it listed the key left the empty log and no KEYS;
    check reported "KEYS does not name its namespace" (an error, exit 1, and check --repair
    exit 1 though it left the store ok). An empty log is no key's: it stays an info finding,
    removed by the repair, and the namespace is one never written."""
    root = tmp_path / "store"
    Store(root, dag="d").set("a", 0)
    argv = [sys.executable, "-c", _KILLED_FIRST_WRITE, str(root)]
    child = subprocess.run(argv, check=False, timeout=60)
    assert child.returncode == 9
    nsdir = Path(keys_path(root, "dag", "fresh")).parent
    assert [p.stat().st_size for p in nsdir.iterdir()] == [0]  # the new log, empty
    report = Store(root).check()
    assert [(f.problem, f.severity) for f in report.findings] == [
        ("log without a valid frame (0 bytes)", "info")
    ]
    assert report.ok
    assert Store(root).check(repair=True).ok
    assert Store(root).check().findings == []
    assert Store(root).set("k", 2, scope="dag", namespace="fresh").version == 1


def _lose_all_but_state(root: Path) -> Path:
    s = Store(root, dag="d")
    s.set("a", 1, namespace="ns2")
    s.set("b", 2, namespace="ns2")
    assert [e.key for e in s.list(namespace="ns2").entries] == ["a", "b"]  # STATE names them
    s.close()
    nsdir = Path(keys_path(root, "dag", "ns2")).parent
    for path in nsdir.iterdir():
        if path.name != "STATE":
            path.unlink()
    return nsdir


def test_a_namespace_that_lost_keys_and_every_log_is_reported_after_a_reboot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the review of the test above's first fix (a namespace holding only STATE
    was skipped): after a reboot STATE is not trusted for versions, so nothing reported a
    namespace whose KEYS, logs and indexes were all lost; its keys would read as new."""
    root = tmp_path / "store"
    _lose_all_but_state(root)
    monkeypatch.setattr(statefile, "boot_id", lambda: "another boot")
    report = Store(root, dag="d").check()
    assert not report.ok
    assert "KEYS does not name its namespace" in [f.problem for f in report.findings]


def test_a_list_after_a_reboot_keeps_the_evidence_of_a_lost_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the second review: after a reboot a list replaced the untrusted STATE of a
    namespace without KEYS with an empty one, which then passed for a namespace nothing was
    written to. A list leaves STATE alone (and makes none) where KEYS is missing."""
    root = tmp_path / "store"
    nsdir = _lose_all_but_state(root)
    before = (nsdir / "STATE").read_bytes()
    monkeypatch.setattr(statefile, "boot_id", lambda: "another boot")
    assert Store(root, dag="d").list(namespace="ns2").entries == []
    assert (nsdir / "STATE").read_bytes() == before
    report = Store(root, dag="d").check()
    assert "KEYS does not name its namespace" in [f.problem for f in report.findings]
    assert not report.ok


def test_a_state_cut_at_a_frame_boundary_still_names_its_keys(tmp_path: Path) -> None:
    """Found by the second review: the STATE of a lost namespace cut right after its first
    frame passed for one that names no key (its first 8 bytes still said how long it was)."""
    root = tmp_path / "store"
    nsdir = _lose_all_but_state(root)
    state = nsdir / "STATE"
    first = next(iter(scan_frames(state.read_bytes()[8:], 8)))
    os.truncate(state, first.end)
    report = Store(root, dag="d").check()
    assert "KEYS does not name its namespace" in [f.problem for f in report.findings]


def test_a_temporary_file_beside_an_empty_namespace_s_state_is_no_error(tmp_path: Path) -> None:
    """Found by the second review: a STATE made (by castore before this fix) in the
    harmless namespace of a refused write, and a copy of it a killed rewrite left as a
    temporary file, made that namespace an error. Each STATE file is read: one that may
    name keys (an empty or cut temporary file) is still reported."""
    s, nsdir = _refused_namespace(tmp_path / "store")
    file_backend(s).names.state("custom", "other").create()
    shutil.copyfile(nsdir / "STATE", nsdir / ".STATE.123.456.789.tmp")
    old = time.time() - 120  # a crash's leftover (a younger one may be a write in flight)
    os.utime(nsdir / ".STATE.123.456.789.tmp", (old, old))
    assert [(f.problem, f.severity) for f in s.check().findings] == [
        ("leftover temporary file", "info")
    ]
    (nsdir / ".STATE.123.456.789.tmp").write_bytes(b"")
    assert "KEYS does not name its namespace" in [f.problem for f in s.check().findings]


def test_a_leftover_log_rewrite_is_evidence_of_a_key(tmp_path: Path) -> None:
    """Found by the third review: temporary files were all left out, so a namespace holding
    only a killed rewrite's copy of a log (KEYS, the log, its index and STATE lost) passed
    for one nothing was written to."""
    root = tmp_path / "store"
    s = Store(root, dag="d")
    s.set("a", 1, namespace="ns2")
    s.set("a", 2, namespace="ns2")
    nsdir = Path(keys_path(root, "dag", "ns2")).parent
    (log,) = nsdir.glob("*.log")
    shutil.copyfile(log, f"{log}.4242.123456.tmp")  # as a killed compaction leaves it
    for path in nsdir.iterdir():
        if not path.name.endswith(".tmp"):
            path.unlink()
    problems = [f.problem for f in Store(root, dag="d").check().findings]
    assert "KEYS does not name its namespace" in problems


def test_a_planted_state_in_a_namespace_without_keys_is_reported_not_raised(
    tmp_path: Path,
) -> None:
    """A FIFO planted as STATE where KEYS is missing: check read it to tell whether the
    namespace was ever written, and raised UnsafePathError instead of reporting."""
    s, nsdir = _refused_namespace(tmp_path / "store")
    os.mkfifo(nsdir / "STATE")
    problems = {f.problem for f in s.check().findings}
    assert problems == {
        "KEYS does not name its namespace",
        "a FIFO, socket or device planted in the store (castore never opens one)",
    }


def test_a_keys_file_that_lost_one_line_hides_no_key_from_export_or_audit(tmp_path: Path) -> None:
    # Found by a review: with one key's line taken out of KEYS, export left that key out
    # (exit 0: a backup silently short) while check reported it missing from KEYS.
    twin, damaged = tmp_path / "twin", tmp_path / "damaged"
    _build(twin)
    shutil.copytree(twin, damaged)
    keys = Path(keys_path(damaged, "dag", "d"))
    line = b"b/c".hex().encode() + b"\n"
    assert line in keys.read_bytes()
    keys.write_bytes(keys.read_bytes().replace(line, b""))
    s, t = Store(damaged, dag="d"), Store(twin, dag="d")
    assert list(export_lines(s)) == list(export_lines(t))
    assert list(audit(s)) == list(audit(t))
    assert [f.path for f in Store(damaged, dag="d").check().findings]  # check says so


def test_a_keys_cut_at_a_line_inside_its_sorted_region_hides_no_key(tmp_path: Path) -> None:
    # Found by a review (thirty-third session): a KEYS whose header says its sorted region
    # ends past the file's end, cut at a line boundary, listed only the keys before the
    # cut (exit 0, nothing skipped), and the next rewrite of KEYS dropped the others.
    # Oracle: the same calls on an undamaged copy.
    root, copy = tmp_path / "s", tmp_path / "copy"
    s = Store(root, dag="d")
    for key in ("k0", "k1", "k2", "k3", "gone"):
        s.set(key, 1)
    s.delete("gone")
    s.compact(keep_last=1, keep_within_seconds=0)  # rewrites KEYS: every key in its sorted region
    s.close()
    shutil.copytree(root, copy)
    keys = Path(keys_path(root, "dag", "d"))
    body = keys.read_bytes()
    assert body.endswith(b"6b32\n6b33\n")  # k2 and k3, the last lines of the sorted region
    os.truncate(keys, len(body) - len(b"6b32\n6b33\n"))
    assert _answers(root) == _answers(copy)
    s = Store(root, dag="d")
    s.set("new", 1)  # a new key: KEYS is appended to (or rewritten), never with k2 and k3 lost
    s.close()
    assert [e.key for e in Store(root, dag="d").list().entries] == ["k0", "k1", "k2", "k3", "new"]
