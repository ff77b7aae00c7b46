"""A value shared across logs stays readable however many newer index records name nothing.

Found by a review: the blob index keeps the newest four locations of a value.
A log holding several copies of it records as many new locations each time it
is rewritten, before its new file is renamed in (or never, when the rewrite is
killed); those named offsets of a file that was not there, pushed out the one
good location, and another key whose entry points at the value (deduplicated,
its own hint stale since an earlier compaction) read as damaged: during every
such compaction, and for good after a killed one, where ``check --repair``
then recorded the intact value as lost. The oracle is an undamaged twin store
given the same writes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Final, NamedTuple

import pytest

from castore import Store, codec
from castore.file.backend import FileBackend
from castore.records import BlobLoc
from tests.helpers import log_path

pytestmark = pytest.mark.integration

BIG: Final = {"pad": "x" * 300}  # >= 256 bytes: deduplicated through the blob index


def _writes(store: Store) -> None:
    store.set("a", BIG)
    store.set("a", "small")
    store.set("b", BIG)  # b's entry points at a's copy
    store.compact(prefix="a", keep_last=1)  # moves a's copy: b's hint is stale for good


def _answers(store: Store) -> tuple[Any, ...]:
    b = store.get("b")
    return b.version, b.value, store.get("b", version=1).value, store.get("a").value


class _Pair(NamedTuple):
    store: Store
    twin: Store  # the oracle: the same writes, nothing added
    backend: FileBackend
    digest: bytes  # BIG's
    a_log: str  # a's log, relative to refs/


def _pair(tmp_path: Path) -> _Pair:
    """``tmp_path/store`` and its twin after :func:`_writes`."""
    store, twin = Store(tmp_path / "store", dag="d"), Store(tmp_path / "twin", dag="d")
    _writes(store)
    _writes(twin)
    backend = store._backend
    assert isinstance(backend, FileBackend)
    digest = bytes.fromhex(codec.hexdigest(codec.normalize(BIG)))
    root = tmp_path / "store"
    a_log = os.path.relpath(log_path(root, "dag", "d", "a"), root / "refs")
    return _Pair(store, twin, backend, digest, a_log)


@pytest.mark.parametrize("bogus", [4, 9])
def test_newer_records_naming_nothing_do_not_hide_the_good_one(tmp_path: Path, bogus: int) -> None:
    root = tmp_path / "store"
    store, twin, backend, digest, a_log = _pair(tmp_path)
    size = os.path.getsize(root / "refs" / a_log)
    # What killed rewrites of a's log leave: offsets in a file that was never renamed in.
    nowhere = [(digest, BlobLoc(a_log, size + 100 * i, 350)) for i in range(bogus)]
    backend._blobs.add_many(nowhere, durable=False)
    for s in (store, Store(root, dag="d")):  # this handle, and one that reads the shard anew
        assert _answers(s) == _answers(twin)
    report = Store(root, dag="d").check(repair=True)
    assert not [f for f in report.findings if "lost" in f.problem or "unreadable" in f.problem]
    assert _answers(Store(root, dag="d")) == _answers(twin)
    assert [e.operation for e in Store(root, dag="d").history("b").entries] == ["set"]


def test_check_repair_rebuilds_the_index_rather_than_record_a_value_lost(tmp_path: Path) -> None:
    """Was: with the index shard gone, check --repair recorded b's intact value as lost."""
    root, twin_root = tmp_path / "store", tmp_path / "twin"
    store, twin = Store(root, dag="d"), Store(twin_root, dag="d")
    _writes(store)
    _writes(twin)
    for shard in (root / "index").glob("*.idx"):
        shard.unlink()
    report = Store(root, dag="d").check()
    assert not report.ok
    problems = [f.problem for f in report.findings]
    assert not [p for p in problems if "lost" in p or "unreadable" in p], problems
    assert [p for p in problems if "does not lead to its value in refs/" in p], problems
    repaired = Store(root, dag="d").check(repair=True)
    assert repaired.ok, repaired.findings
    assert _answers(Store(root, dag="d")) == _answers(twin)
    assert [e.operation for e in Store(root, dag="d").history("b").entries] == ["set"]
    assert Store(root, dag="d").check().ok


def test_a_copy_in_a_file_no_reader_opens_does_not_count(tmp_path: Path) -> None:
    """Was: a's only intact copy in ``backup.log`` (no log's name) made every repair say it
    rebuilt the index while a stayed unreadable. A copy counts only where readers look."""
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set("a", BIG)
    a_log = Path(log_path(root, "dag", "d", "a"))
    shutil.copyfile(a_log, a_log.parent / "backup.log")
    data = bytearray(a_log.read_bytes())
    blob_start = int.from_bytes(data[:4], "little") + 25  # after the header frame
    assert data[blob_start + 4] == ord("B")
    data[blob_start + 5 + 40] ^= 1  # a's own copy damaged
    a_log.write_bytes(bytes(data))
    for _ in range(2):
        report = Store(root, dag="d").check(repair=True)
        assert not [f for f in report.findings if "does not lead" in f.problem], report
    assert [e.operation for e in Store(root, dag="d").history("a").entries] == ["damaged"]


def test_a_large_shard_is_read_whole(tmp_path: Path) -> None:
    """Was (a review of this session's fix): only a shard's newest 16 MiB were read, so a value
    only the index leads to read as damaged once 90,000 newer records shared its shard."""
    root = tmp_path / "store"
    _, twin, backend, digest, a_log = _pair(tmp_path)
    others = [
        (bytes([digest[0]]) + i.to_bytes(31, "big"), BlobLoc(a_log, 1000 + i, 400))
        for i in range(90_000)
    ]
    backend._blobs.add_many(others, durable=False)
    assert (root / "index" / f"{digest[0]:02x}.idx").stat().st_size > 16 << 20
    assert _answers(Store(root, dag="d")) == _answers(twin)
