"""A version index from before a compaction, put back beside the log it emptied, is no cut.

Found by mutation testing of castore/file/cuts.py: readers ignored the
compaction's own last version only below it (``<`` for ``<=``) and every test
passed; the removed key's get then refused a healthy store. The rule
(FORMAT.md §7): versions a compaction dropped (its ``C`` frame) do not
count. The oracle: the same store with the index compaction left.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from castore import Store
from castore.file.frames import encode_frame
from castore.file.records import KIND_COMPACTED
from tests.helpers import frames_of, removed_beside_its_index

pytestmark = pytest.mark.integration


def test_an_index_from_before_the_removal_proves_no_cut(tmp_path: Path) -> None:
    root, twin = tmp_path / "store", tmp_path / "twin"
    _, vix, older = removed_beside_its_index(root)
    assert vix.read_bytes() != older
    shutil.copytree(root, twin)
    vix.write_bytes(older)  # its records of 1 to 3 name offsets the log no longer holds
    for location in (root, twin):
        handle = Store(location, dag="d")
        assert handle.get("a").found is False
        assert handle.check().ok
        assert handle.set("a", 5).version == 4
        handle.close()


def test_a_removal_by_an_older_castore_killed_before_its_index_is_no_cut(tmp_path: Path) -> None:
    """The key's grave covers what the index records, as check judges it (FORMAT.md §7).

    Castores of format 1 and the first of format 2 (515648a, not 06fd8f1)
    emptied a removed key's log to its header and blob frames, no ``C``
    frame, and rebuilt the index only after the rename: killed in between,
    its index named the old offsets. That castore answered "not found" and
    went on above the grave; this one refused every read and write of the
    key (acknowledged bytes cut off) while check found the index merely out
    of step, and its repair refused to rebuild it. Found by killing commit
    515648a at its "rewrite-after-rename" failpoint; the oracle is its answers.
    """
    root = tmp_path / "store"
    path, vix, older = removed_beside_its_index(root)
    frames, _ = frames_of(path)  # as that castore left it: header and blobs, no C frame
    Path(path).write_bytes(
        b"".join(encode_frame(f.kind, f.payload) for f in frames if f.kind != KIND_COMPACTED)
    )
    vix.write_bytes(older)  # its records of 1 to 3 name offsets the log no longer holds
    handle = Store(root, dag="d")
    assert handle.get("a").found is False
    assert handle.history("a").entries == []
    assert handle.check().ok
    assert handle.check(repair=True).ok
    assert handle.set("a", 5).version == 4  # above the grave, as that castore went on
    handle.close()
