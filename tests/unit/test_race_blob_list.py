"""A blob another log points at stays readable when a gc rebuilds the index under a handle.

The stateful model test once saw ``list`` skip a key ("version 2: blob ... is
missing or damaged") after: two keys set to one 259-byte value (the second
points at the first key's blob frame, in the other log), ``compact``, ``gc``.
Compaction and gc move that frame; the pointing entry's location goes stale,
and a reader finds the frame through the blob index. gc's rebuild replaces
each shard by rename, and ext4 hands the new file a freed inode number at
once: when it is the number the *other* handle cached for that shard, and
the new file is no shorter than what it had read, the handle took it for
the same file and kept the locations the rebuild had dropped.

Here the rebuild writes shards in place, which is exactly what such a reader
sees: the same inode number, other bytes.
"""

import hashlib
import os

import pytest

from castore import Store, codec
from castore.file.tree import Tree
from tests.helpers import file_backend

VALUE = "v" * 300  # over DEDUP_MIN_BYTES: the second key reuses the first key's blob frame
SMALL = 0


@pytest.fixture
def shards_keep_their_inodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blob index rebuilds overwrite each shard in place (a rename onto a reused inode number)."""
    rename = Tree.atomic_write

    def atomic_write(
        self: Tree, path: str, data: bytes, *, durable: bool, unsynced: bool = False
    ) -> None:
        if os.path.basename(os.path.dirname(path)) == "index" and os.path.exists(path):
            with open(path, "wb") as fh:  # O_TRUNC: the same inode, new bytes
                fh.write(data)
            return
        rename(self, path, data, durable=durable, unsynced=unsynced)

    monkeypatch.setattr(Tree, "atomic_write", atomic_write)


def _digest(value: object) -> bytes:
    return hashlib.sha256(codec.normalize(value)).digest()


def test_a_stale_hint_is_found_after_a_rebuild_reuses_the_shard_inode(
    store_dir, shards_keep_their_inodes
):
    # The two values' blobs sit in different shards: the shard of VALUE holds
    # one record before and after (the same size, so no re-read by size).
    assert _digest(VALUE)[0] != _digest(SMALL)[0]
    writer = Store(store_dir, dag="flow", durable=False)
    reader = Store(store_dir, dag="flow", durable=False)
    try:
        for key in ("a", "ab"):
            writer.set(key, SMALL)
        for key in ("a", "ab"):
            writer.set(key, VALUE)
        backend = file_backend(writer)
        ab = backend.current(writer.ref("ab")).entry
        assert ab is not None
        assert ab.blob is not None
        assert ab.blob.log == backend.rel(backend.log_path(writer.ref("a")))  # across logs

        assert reader.list().skipped == []  # the reader caches the shard of VALUE
        writer.compact(keep_last=1)  # moves the frame (index record appended)
        writer.gc(grace_seconds=0)  # frees SMALL's frames, moves it again, rebuilds the index

        listed = reader.list()
        assert listed.skipped == []
        assert [(e.key, e.version) for e in listed.entries] == [("a", 2), ("ab", 2)]
        values = reader.list(include_values=True).entries
        assert [e.value for e in values] == [VALUE, VALUE]
        assert reader.get("ab").value == VALUE
    finally:
        writer.close()
        reader.close()
