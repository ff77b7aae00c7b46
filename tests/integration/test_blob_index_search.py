"""A handle finds a digest absent from its index shard by the shard's bytes, not by parsing it.

Found by a review of what one command costs as a store grows: a ``set`` of a new
value (256 bytes or more) made a new handle parse the digest's whole shard, a
256th of every blob's record, to learn that none was its digest (+1.3 ms per
100,000 blobs, +130 ms at ten million). An index record begins with the
digest, so a shard whose bytes do not hold it holds no record of it (FORMAT.md
§5). The oracle: the same calls on a twin whose handle parses every shard.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

import castore.file.blobindex as blobindex
from castore import Store
from tests.helpers import file_backend, log_path

pytestmark = pytest.mark.integration

BLOBS = 600  # about two records in each of the 256 shards


def _value(i: int) -> dict[str, str]:
    """Over 256 bytes (stored as a blob, indexed) that compress little."""
    return {"blob": "".join(hashlib.sha256(b"%d.%d" % (i, n)).hexdigest() for n in range(8))}


def _parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = blobindex.shard_frames

    def counted(fd: int, start: int, end: int):  # type: ignore[no-untyped-def]
        calls.append(end - start)
        return real(fd, start, end)

    monkeypatch.setattr(blobindex, "shard_frames", counted)
    return calls


def test_a_new_value_parses_no_shard_and_a_stored_one_is_still_deduplicated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, twin = tmp_path / "s", tmp_path / "twin"
    store = Store(root, dag="d", durable=False)
    for i in range(BLOBS):
        store.set(f"k{i}", _value(i))
    store.close()
    shutil.copytree(root, twin)
    oracle = Store(twin, dag="d", durable=False)
    file_backend(oracle)._blobs._searched = blobindex._SEARCHES  # parses, as before
    for store in (oracle, Store(root, dag="d", durable=False)):
        calls = _parses(monkeypatch)
        store.set("new", _value(BLOBS))  # no record of its digest anywhere
        parsed = len([c for c in calls if c])
        store.set("dup", _value(7))  # k7's value: found, not written again
        assert (parsed, len([c for c in calls if c])) == ((1, 2) if store is oracle else (0, 1))
    handle = store
    for name in ("new", "dup"):
        mine, theirs = log_path(root, "dag", "d", name), log_path(twin, "dag", "d", name)
        assert os.path.getsize(mine) == os.path.getsize(theirs)
    dup, new = (os.path.getsize(log_path(root, "dag", "d", k)) for k in ("dup", "new"))
    assert dup < new - 200  # dup's value is k7's blob, not written again
    assert handle.get("dup").value == oracle.get("dup").value == _value(7)


def test_a_handle_parses_the_shards_it_reads_after_64_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    store = Store(root, dag="d", durable=False)
    for i in range(BLOBS):
        store.set(f"k{i}", _value(i))
    store.close()
    calls = _parses(monkeypatch)
    handle = Store(root, dag="d", durable=False)
    for i in range(blobindex._SEARCHES):
        handle.set(f"n{i}", _value(BLOBS + i))
    assert [c for c in calls if c] == []
    handle.set("n64", _value(BLOBS + 64))
    assert len([c for c in calls if c]) == 1


@pytest.mark.parametrize("at", [0, 1, 5, 6, 7, 13, 30, 31, 32, 40])
def test_a_digest_is_found_across_the_chunks_a_shard_is_read_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: int
) -> None:
    monkeypatch.setattr(blobindex, "_CHUNK", 7)
    digest = hashlib.sha256(b"d").digest()
    path = tmp_path / "shard"
    path.write_bytes(b"\0" * at + digest + b"\1" * 9)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert blobindex._holds(fd, digest)
        assert not blobindex._holds(fd, hashlib.sha256(b"e").digest())
        assert not blobindex._holds(fd, digest[:31] + bytes([digest[31] ^ 1]))
    finally:
        os.close(fd)
