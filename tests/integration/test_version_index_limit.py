"""The version at an index's limit is indexed, so a cut of it alone is proven.

Found by mutation testing of ``castore/file/versionindex.py``: FORMAT.md §5
says an index "covers versions up to the last one at or below" its limit
(131,072 for a log under 1 MiB), and §7 that a cut of a version it records
is refused by every reader and writer. Leaving out the version exactly at
the limit (``<`` for ``<=`` where the index is rebuilt, where it is
extended, or in the check of the next entry's version) passed every test,
and a fresh reader then served the version below as the newest. The oracle:
those texts and the undamaged twin's newest version. Also: what extending
an index costs and skips (FORMAT.md §5).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from castore import CorruptionError, Store
from castore.file import versionindex
from castore.file.frames import scan_frames
from castore.file.records import KIND_ENTRY, decode_entry
from tests.helpers import import_starting_at, log_path

pytestmark = pytest.mark.integration

LIMIT = versionindex.index_limit(0)  # 131,072


@pytest.mark.parametrize("how", ["rebuilt", "extended"])
def test_a_cut_of_the_version_at_the_limit_alone_is_proven(tmp_path: Path, how: str) -> None:
    twin, root = tmp_path / "twin", tmp_path / "store"
    first = LIMIT - 3
    if how == "rebuilt":  # the first read builds the whole index, up to the limit
        import_starting_at(twin, tmp_path / "source", first, 4)
    else:  # the index is built to LIMIT - 1, then extended by one record
        import_starting_at(twin, tmp_path / "source", first, 3)
        store = Store(twin, dag="d")
        assert store.get("k", version=LIMIT - 1).value == {"n": 2}  # indexed to LIMIT - 1
        assert store.set("k", {"n": 3}).version == LIMIT
        store.close()
    store = Store(twin, dag="d")
    assert store.get("k", version=LIMIT).value == {"n": 3}  # indexes up to the limit
    store.close()
    vix = Path(versionindex.vix_path(str(log_path(twin, "dag", "d", "k"))))
    assert vix.stat().st_size == 8 * LIMIT  # FORMAT.md §5: the limit's version is covered
    shutil.copytree(twin, root)
    log = Path(log_path(root, "dag", "d", "k"))
    below = next(
        f.end
        for f in scan_frames(log.read_bytes())
        if f.kind == KIND_ENTRY and decode_entry(f.payload).version == LIMIT - 1
    )
    os.truncate(log, below)  # only version LIMIT cut off, at a frame boundary
    assert Store(twin, dag="d").get("k").version == LIMIT
    fresh = Store(root, dag="d")
    for call in (lambda: fresh.get("k"), lambda: fresh.set("k", "again")):
        with pytest.raises(CorruptionError, match=f"no longer holds versions up to {LIMIT},"):
            call()
    fresh.close()


def test_an_index_at_its_limit_is_not_extended_for_a_version_above_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FORMAT.md §5 / open_caught_up: an index that holds all an index of this log may
    # hold costs a reader one open and one fstat; a version above the limit is found by a
    # scan, without taking the index's lock to try to extend it (mutation V21: every
    # such read tried).
    root = tmp_path / "store"
    import_starting_at(root, tmp_path / "source", LIMIT - 1, 3)
    reader = Store(root, dag="d")
    assert reader.get("k", version=LIMIT).value == {"n": 1}  # indexed up to the limit
    tries: list[int] = []
    real = versionindex._extend

    def counted(fd: int, log_fd: int, want: int) -> None:
        tries.append(want)
        real(fd, log_fd, want)

    monkeypatch.setattr(versionindex, "_extend", counted)
    for _ in range(3):
        assert reader.get("k", version=LIMIT + 1).value == {"n": 2}
    assert tries == []
    reader.close()


def test_an_index_is_extended_past_a_repeated_entry_of_its_last_version(tmp_path: Path) -> None:
    # The log holds 1..5, a copy of version 5's E frame, then 6 (only something other
    # than castore puts a copy there). A reader extending an index that ends at 5 reads
    # the log after 5's entry, skips the copy (it is no newer) and appends 6's record
    # (FORMAT.md §5); treating the copy as a gap left 6 unindexed.
    root = tmp_path / "store"
    store = Store(root, dag="d")
    for n in range(1, 6):
        store.set("k", {"v": n})
    assert len(store.history("k").entries) == 5  # the index ends at 5
    store.delete("k")  # version 6: an entry without a blob
    store.close()
    log = Path(log_path(root, "dag", "d", "k"))
    data = log.read_bytes()
    entries = {
        decode_entry(f.payload).version: f for f in scan_frames(data) if f.kind == KIND_ENTRY
    }
    five = entries[5]
    log.write_bytes(data[: five.end] + data[five.start : five.end] + data[five.end :])
    vix = Path(versionindex.vix_path(str(log)))
    assert vix.stat().st_size == 8 * 5
    reader = Store(root, dag="d")
    assert [e.version for e in reader.history("k", limit=2).entries] == [6, 5]
    reader.close()
    records = vix.read_bytes()
    assert len(records) == 8 * 6
    assert int.from_bytes(records[40:48], "little") == entries[6].start + (five.end - five.start)
