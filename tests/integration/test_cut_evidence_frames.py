"""Which version index records prove a cut, and which are damage, hints or out of step.

Found by mutation testing of ``castore/file/cuts.py`` and
``castore/file/versionindex.py`` (each test names what it pins). FORMAT.md
§7 ("A cut that the version index proves") counts a record of a version
above the newest intact entry as evidence of a cut unless the log holds
*that version's* ``E`` frame at its offset; records at or below the newest,
and versions a ``C`` frame covers, prove nothing. §5: a record the index
lacks is unknown, and an index never outlives its log. The oracle: those
texts, and the undamaged twin store's answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castore import CorruptionError, Store
from castore.file import versionindex
from castore.file.frames import encode_frame, scan_frames
from castore.file.records import KIND_ENTRY, decode_entry
from castore.file.tree import Tree
from tests.helpers import log_path, ns_dir, removed_beside_its_index, twin_with_six_versions

pytestmark = pytest.mark.integration


def test_a_record_at_a_frame_of_another_kind_holding_that_entry_is_a_cut(tmp_path: Path) -> None:
    # Version 6's E frame is replaced by a frame of a kind readers skip (§3) whose payload
    # is version 6's entry, and the index records version 6 there: the log does not hold
    # version 6's E frame, so the newest version (6, the twin's) is unknown. A check of
    # the payload alone read the record as the log's own and served version 5 as newest.
    twin, root = tmp_path / "twin", tmp_path / "store"
    log, entries = twin_with_six_versions(twin, root)
    six = entries[6]
    os.truncate(log, six.start)
    with open(log, "ab") as f:
        f.write(encode_frame(ord("X"), six.payload))
    with open(log.with_suffix(".vix"), "rb") as vix:  # the record still names that offset
        assert int.from_bytes(vix.read()[8 * 5 : 8 * 6], "little") == six.start
    assert Store(twin, dag="d").get("k").version == 6
    fresh = Store(root, dag="d")
    for call in (lambda: fresh.get("k"), lambda: fresh.set("k", {"v": 7})):
        with pytest.raises(CorruptionError, match="no longer holds versions up to 6"):
            call()
    assert not fresh.check().ok
    fresh.check(repair=True)
    assert fresh.set("k", {"v": 7}).version == 7  # never 6 again
    fresh.close()


def test_an_index_torn_inside_a_record_and_out_of_step_is_read_as_unknown(
    tmp_path: Path,
) -> None:
    # The index ends 3 bytes into version 6's record and its last whole record (5) names
    # version 2's frame, so no reader extends it (out of step, FORMAT.md §5): a lookup of
    # version 6 reads a short record, which is "unknown: scan", never a failure. Oracle:
    # the twin's value of version 6.
    twin, root = tmp_path / "twin", tmp_path / "store"
    _, entries = twin_with_six_versions(twin, root)
    vix = Path(log_path(root, "dag", "d", "k")).with_suffix(".vix")
    data = bytearray(vix.read_bytes()[: 8 * 5 + 3])
    data[8 * 4 : 8 * 5] = entries[2].start.to_bytes(8, "little")
    vix.write_bytes(bytes(data))
    expected = Store(twin, dag="d").get("k", version=6)
    fresh = Store(root, dag="d")
    got = fresh.get("k", version=6)
    assert (got.version, got.value) == (expected.version, expected.value) == (6, {"v": 6})
    assert vix.read_bytes() == bytes(data)  # left as it is, for check
    fresh.close()


def test_a_record_at_the_previous_version_s_entry_is_a_cut(tmp_path: Path) -> None:
    # Version 6 cut off, its record naming version 5's E frame (the log's newest): the
    # log does not hold version 6's E frame there, so that is a cut (FORMAT.md §7), not
    # the log's own record. Oracle: the twin's newest version, 6.
    twin, root = tmp_path / "twin", tmp_path / "store"
    log, entries = twin_with_six_versions(twin, root)
    os.truncate(log, entries[5].end)
    with open(log.with_suffix(".vix"), "r+b") as vix:
        vix.seek(8 * 5)
        vix.write(entries[5].start.to_bytes(8, "little"))
    assert Store(twin, dag="d").get("k").version == 6
    fresh = Store(root, dag="d")
    for call in (lambda: fresh.get("k"), lambda: fresh.set("k", {"v": 7})):
        with pytest.raises(CorruptionError, match="no longer holds versions up to 6"):
            call()
    fresh.close()


def test_a_damaged_entry_below_the_newest_is_damage_not_a_cut(tmp_path: Path) -> None:
    # Version 3's E frame is damaged in place; 4 and 5 follow it intact. Its record is
    # below the newest intact entry (5), so by FORMAT.md §7 it proves no cut: check
    # reports the damaged bytes and nothing lost by the index. Judging the records above
    # the log's oldest entry instead of its newest read it as a cut too.
    root = tmp_path / "store"
    store = Store(root, dag="d")
    for v in range(1, 6):
        store.set("k", {"v": v})
    assert [e.version for e in store.history("k").entries] == [5, 4, 3, 2, 1]  # indexed
    store.close()
    log = Path(log_path(root, "dag", "d", "k"))
    data = bytearray(log.read_bytes())
    frames = scan_frames(bytes(data))
    three = next(f for f in frames if f.kind == KIND_ENTRY and decode_entry(f.payload).version == 3)
    data[three.start + 10] ^= 0x20
    log.write_bytes(bytes(data))
    fresh = Store(root, dag="d")
    assert fresh.get("k").value == {"v": 5}
    problems = [f.problem for f in fresh.check().findings]
    assert len(problems) == 1, problems
    assert problems[0].startswith("damaged bytes"), problems
    fresh.close()


def test_a_link_planted_as_the_index_is_no_evidence_and_is_not_followed(tmp_path: Path) -> None:
    # A symbolic link in place of the .vix (to a file outside the store, its lstat long
    # enough to "record" versions above the newest) is no index: readers and writers
    # answer as the twin without it does, and the file outside is never read or written.
    twin, root = tmp_path / "twin", tmp_path / "store"
    log, _ = twin_with_six_versions(twin, root)
    outside = tmp_path / ("outside-" + "x" * 80)
    outside.write_bytes(b"not an index")
    vix = log.with_suffix(".vix")
    vix.unlink()
    vix.symlink_to(outside)
    assert os.lstat(vix).st_size // 8 > 6
    expected = Store(twin, dag="d").get("k")
    fresh = Store(root, dag="d")
    got = fresh.get("k")
    assert (got.version, got.value) == (expected.version, expected.value) == (6, {"v": 6})
    assert fresh.set("k", {"v": 7}).version == 7
    fresh.close()
    assert outside.read_bytes() == b"not an index"


class _RewriteOnIndexOpen(Tree):
    """A tree on which a rewrite replaces the log just before a reader opens its index."""

    def __init__(self, root: str, log: Path, new_log: Path) -> None:
        super().__init__(root)
        self.log, self.new_log, self.raced = log, new_log, False

    def open(self, path: str, flags: int, *, unsynced: bool = False) -> int:
        if path.endswith(".vix") and not self.raced:
            self.raced = True
            os.replace(self.new_log, self.log)  # a rewrite: its old index is already gone
        return super().open(path, flags, unsynced=unsynced)


def test_an_index_built_from_a_log_replaced_meanwhile_does_not_outlive_it(
    tmp_path: Path,
) -> None:
    # A reader holds the log's descriptor; a rewrite renames another log over the path
    # after the reader's check that its log is linked, before it opens the index. What it
    # builds from its file is not the new log's index and must not stay at the path
    # (FORMAT.md §5: a stale index cannot outlive its log; it would be evidence of
    # versions the new log never held). The oracle: no index, the reader told -1 (scan).
    twin, root = tmp_path / "twin", tmp_path / "store"
    log, _ = twin_with_six_versions(twin, root)
    log.with_suffix(".vix").unlink()
    new_log = tmp_path / "new.log"
    new_log.write_bytes(log.read_bytes()[:1])  # what the rewrite made; never read here
    tree = _RewriteOnIndexOpen(str(root), log, new_log)
    fd = os.open(log, os.O_RDONLY)
    try:
        got = versionindex.open_caught_up(tree, str(log.with_suffix(".vix")), fd, 6)
    finally:
        os.close(fd)
        tree.close()
    assert tree.raced
    assert got == -1
    assert not log.with_suffix(".vix").exists()


def test_a_wrong_record_of_the_newest_version_is_no_cut(tmp_path: Path) -> None:
    # The log is intact; the index's record of its newest version (6) names version 3's
    # frame. Only records above the newest intact entry can prove a cut (FORMAT.md §7):
    # this one is an index out of step (info), and the reader serves the twin's 6.
    twin, root = tmp_path / "twin", tmp_path / "store"
    log, entries = twin_with_six_versions(twin, root)
    with open(log.with_suffix(".vix"), "r+b") as vix:
        vix.seek(8 * 5)
        vix.write(entries[3].start.to_bytes(8, "little"))
    fresh = Store(root, dag="d")
    assert fresh.get("k").version == Store(twin, dag="d").get("k").version == 6
    found = [(f.severity, f.problem) for f in fresh.check().findings]
    assert found == [("info", "version index out of step")], found
    fresh.close()


def test_check_counts_no_cut_at_the_last_version_a_compaction_dropped(tmp_path: Path) -> None:
    # A removed key's emptied log (its C frame dropped 1..3) beside its index from before
    # the removal (records of 1..3), GRAVES lost: the index's top record is the C frame's
    # last version, which does not count (FORMAT.md §7): check restores the grave, and
    # reports no versions lost.
    root = tmp_path / "store"
    _, vix, older = removed_beside_its_index(root)
    vix.write_bytes(older)
    os.remove(Path(ns_dir(root, "dag", "d")) / "GRAVES")
    fresh = Store(root, dag="d")
    assert fresh.get("a").found is False
    problems = [f.problem for f in fresh.check().findings]
    assert not [p for p in problems if "no longer holds" in p], problems
    assert any(p.startswith("GRAVES lacks the last version (3)") for p in problems), problems
    fresh.close()
