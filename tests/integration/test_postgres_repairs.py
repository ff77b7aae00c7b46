"""PostgreSQL rows damaged or edited by hand, and what writes, gc and check --repair do then.

Found by a review of the PostgreSQL backend (thirty-fourth session, docs/RELIABILITY.md).
Each test states its oracle: the directory store running the same calls (with the
same damage made to its files), the same PostgreSQL store before the edit, or the
acknowledged writes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Final

import pytest

import castore
from castore import Store
from castore.transfer import export_lines
from tests.integration.test_postgres import query

pytestmark = pytest.mark.integration

DAG: Final = "pg"
_TOUCHED_A: Final = (  # when a write (or a repair) last took key a's value into use
    "SELECT touched_ns FROM blobs WHERE digest = (SELECT blob FROM refs WHERE key = 'a')"
)


def _big(seed: int) -> dict[str, Any]:
    """A value of several hundred bytes that zstd cannot shrink much: a blob row."""
    rng = random.Random(seed)
    return {"x": [rng.random() for _ in range(40)]}


def _location(backend: str, postgres_location: str, tmp_path: Path) -> str:
    return postgres_location if backend == "postgresql" else str(tmp_path / "s")


def _damage_blob_rows(location: str) -> None:
    query(location, "UPDATE blobs SET data = overlay(data placing '\\x00'::bytea from 20 for 1)")


def _damage_the_log(root: Path) -> None:
    (log,) = root.glob("refs/dag/*/*.log")
    data = bytearray(log.read_bytes())
    data[len(data) // 3] ^= 1  # inside the one frame of the value
    log.write_bytes(bytes(data))


@pytest.mark.parametrize("backend", ["directory", "postgresql"])
def test_a_write_of_a_value_whose_stored_copy_is_damaged_is_readable(
    backend, postgres_location, tmp_path
):
    # Oracle: the directory store, whose writer never points a new version at a damaged
    # copy of the value. On PostgreSQL the upsert only refreshed touched_ns of the damaged
    # blob row: both acknowledged sets read as damage for good (check --repair: "none").
    location = _location(backend, postgres_location, tmp_path)
    value = _big(1)
    Store(location, dag=DAG).set("a", value)
    if backend == "postgresql":
        _damage_blob_rows(location)
    else:
        _damage_the_log(tmp_path / "s")
    store = Store(location, dag=DAG)
    with pytest.raises(castore.CorruptionError):
        store.get("a")
    assert store.set("b", value).version == 1
    assert store.set("a", value).version == 2
    assert store.get("b").value == value
    assert store.get("a").value == value
    store.check(repair=True)
    again = Store(location, dag=DAG)
    assert again.get("b").value == value
    assert again.get("a").value == value
    assert again.check().ok


@pytest.mark.parametrize(
    "edit",
    [
        "data = overlay(data placing '\\x00'::bytea from 20 for 1)",
        "size = size + 1",
        "codec = 1 - codec",
    ],
)
def test_a_write_replaces_a_blob_row_that_is_not_its_value(postgres_location, edit):
    # Oracle: the acknowledged write. A blob row whose data, size or codec was edited is
    # replaced by the next write of its value; a good row is kept as it is.
    value = _big(2)
    store = Store(postgres_location, dag=DAG)
    store.set("a", value)
    (before,) = query(postgres_location, "SELECT codec, size, data FROM blobs")
    query(postgres_location, f"UPDATE blobs SET {edit}")  # noqa: S608
    assert store.set("b", value).version == 1
    assert query(postgres_location, "SELECT codec, size, data FROM blobs") == [before]
    assert Store(postgres_location, dag=DAG).get("a").value == value


def test_a_blob_row_whose_size_column_was_edited_is_repaired_from_its_data(postgres_location):
    # Oracle: the same store before the edit (check ok, the value served). Reads never
    # use the column, so they serve the value; check said the versions "read as damaged"
    # and check --repair never fixed it, though the size is the verified data's.
    value = _big(5)
    store = Store(postgres_location, dag=DAG)
    store.set("a", value)
    assert store.check().ok
    query(postgres_location, "UPDATE blobs SET size = size + 1")
    assert store.get("a").value == value
    report = store.check()
    assert not report.ok
    (finding,) = report.findings
    assert "its size column says" in finding.problem
    assert "read as damaged" not in finding.repair
    assert store.check(repair=True).findings[0].repaired
    assert store.check().ok
    assert Store(postgres_location, dag=DAG).get("a").value == value


@pytest.mark.parametrize("value", [{"small": 1}, _big(3)], ids=["inline", "blob"])
def test_check_reports_a_version_whose_size_is_not_its_value_s(postgres_location, value):
    # Oracle: reads and export of the same store, which refuse the version ("its entry
    # says"). check reported the edit of an inline value's size, but said ok for a value
    # in a blob row.
    store = Store(postgres_location, dag=DAG)
    store.set("a", value)
    store.set("a", {"v": 2})
    assert store.check().ok
    query(postgres_location, "UPDATE versions SET size = size + 1 WHERE version = 1")
    with pytest.raises(castore.CorruptionError, match="its entry says"):
        store.get("a", version=1)
    with pytest.raises(castore.CorruptionError):
        list(export_lines(store))
    report = store.check()
    assert not report.ok
    assert [f.path.rsplit("@", 1)[1] for f in report.findings] == ["1"]


def test_gc_keeps_the_blob_of_a_copy_that_is_its_version_s_only_record(postgres_location):
    # Oracle: the same store without the gc: get serves version 2 from the key's copy
    # (DESIGN.md: a copy above its rows is its version's only record) and check --repair
    # restores the row from it. gc counted only version rows as users of a blob, so it
    # deleted that copy's blob: version 2 was lost for good.
    value = _big(2)
    store = Store(postgres_location, dag=DAG)
    store.set("a", {"v": 1})
    store.set("a", value)
    store.set("other", _big(7))
    store.delete("other")
    query(postgres_location, "DELETE FROM versions WHERE version = 2")
    assert store.get("a").value == value
    report = store.gc(grace_seconds=0)
    assert report.blobs_freed == 0  # "other"'s value is still its version 1's
    assert store.get("a").value == value
    ((touched,),) = query(postgres_location, _TOUCHED_A)
    assert store.check(repair=True).ok
    # The row made from the copy took the blob into use, as a write does (gc's grace).
    ((retouched,),) = query(postgres_location, _TOUCHED_A)
    assert retouched > touched
    again = Store(postgres_location, dag=DAG)
    assert again.get("a", version=2).value == value
    assert again.check().ok


@pytest.mark.parametrize("edit", ["version = 9", "version = 9, time_ns = time_ns - 5"])
def test_a_copy_renumbered_by_hand_is_never_served_as_a_version_it_never_was(
    postgres_location, edit
):
    # Oracle: the same store before the edit (version 2, its value; the next set 3). The
    # copy differed from row 2 only in its number (9), or was older than it: get served
    # version 9 with version 2's value, and a set wrote version 10 on it. A genuine copy
    # above its rows (its row lost) is newer than them, and is still read.
    store = Store(postgres_location, dag=DAG)
    store.set("a", {"v": 1})
    before = store.set("a", {"v": 2})
    query(postgres_location, f"UPDATE refs SET {edit}")  # noqa: S608
    fresh = Store(postgres_location, dag=DAG)
    with pytest.raises(castore.CorruptionError, match="no newer than"):
        fresh.get("a")
    with pytest.raises(castore.CorruptionError, match="no newer than"):
        fresh.set("a", {"v": 3})
    assert fresh.list().skipped == ["a"]
    assert fresh.check(repair=True).ok
    again = Store(postgres_location, dag=DAG)
    assert again.get("a").to_dict() == store.get("a", version=2).to_dict()
    assert again.get("a").version == before.version
    assert again.set("a", {"v": 3}).version == 3
    assert again.check().ok


def test_a_copy_whose_row_was_lost_is_still_its_version_s_record(postgres_location):
    # Oracle: the acknowledged write (DESIGN.md: a copy above its rows is read, and check
    # --repair restores its row).
    store = Store(postgres_location, dag=DAG)
    store.set("a", {"v": 1})
    store.set("a", {"v": 2})
    written = store.set("a", {"v": 3})
    query(postgres_location, "DELETE FROM versions WHERE version = 3")
    assert Store(postgres_location, dag=DAG).get("a").value == {"v": 3}
    assert store.check(repair=True).ok
    restored = store.get("a", version=3)
    assert (restored.version, restored.value) == (written.version, {"v": 3})
