"""What a long-lived handle keeps per namespace stays bounded, and its close forgets it.

A server's handle (or a worker's kept for days) asked for new namespaces kept
each one's ``KEYS`` and ``GRAVES`` and the directory it made, without end: a
get of a namespace that does not exist kept one too (about 2 KB each). And
``close()`` kept the refs it had resolved and the blob index it had read.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest

from castore import Audit, Store
from castore.file import namespaces
from castore.file.blobindex import _SEARCHES
from castore.file.layout import KEY_BYTES_CACHED
from castore.keys import NAME_CHARS_CACHED, Ref
from castore.postgres.rows import ID_NAMES_CACHED, ref_id
from tests.helpers import file_backend

_BOUND = 8


def test_a_handle_asked_for_many_namespaces_keeps_at_most_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # raising=False: without the bound, the test fails on what the handle keeps
    monkeypatch.setattr(namespaces, "NAMESPACES_CACHED", _BOUND, raising=False)
    store = Store(tmp_path / "s", dag="d", durable=False)
    backend = file_backend(store)
    for i in range(5 * _BOUND):
        store.set("k", {"i": i}, scope="custom", namespace=f"n{i}")
        assert store.get("k", scope="custom", namespace=f"missing{i}").found is False
        assert len(backend.names._keys) <= _BOUND
        assert len(backend.names._graves) <= _BOUND
        assert len(backend._writer._dirs) <= _BOUND
    for i in range(5 * _BOUND):  # forgotten, never wrong: each namespace read again
        assert store.get("k", scope="custom", namespace=f"n{i}").value == {"i": i}
        assert [e.key for e in store.list("", scope="custom", namespace=f"n{i}").entries] == ["k"]
    store.delete("k", scope="custom", namespace="n0")
    assert store.get("k", scope="custom", namespace="n0").found is False


def test_close_forgets_the_refs_directories_and_blob_index_it_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", dag="d", durable=False)
    backend = file_backend(store)
    backend._blobs._searched = _SEARCHES  # past its lookups by a shard's bytes: it parses them
    for i in range(20):  # values of 256 bytes or more are in the blob index
        store.set(f"k{i}", {"i": i, "pad": "x" * 300}, namespace=f"n{i % 3}")
    assert backend._writer._dirs
    assert backend._blobs._shards
    assert store._refs._refs
    store.close()
    assert not backend._writer._dirs
    assert not backend._blobs._shards
    assert not store._refs._refs
    assert store.get("k7", namespace="n1").value == {"i": 7, "pad": "x" * 300}  # still usable
    assert store.set("k7", {"i": 8, "pad": "x" * 300}, namespace="n1").version == 2


@pytest.mark.parametrize(
    ("scope", "namespace", "root_dag"), [("custom", "n", ""), ("root_dag", None, "root")]
)
def test_the_refs_a_server_handle_resolved_keep_at_most_the_bound_of_their_names(
    tmp_path: Path, scope: str, namespace: str | None, root_dag: str
) -> None:
    # A server's requests each bring a dag of their own (up to a body's megabyte), one the
    # call may not even use: the refs a handle resolved kept each one, 65,536 of them.
    store = Store(tmp_path / "s", dag="d", durable=False)
    store.set("k", 1, scope=scope, namespace=namespace)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(400):  # 400 requests of 100,000-character DAG names: 40 MB
            worker = store.for_caller(Audit(), dag=f"{i:06}".ljust(100_000, "d"), root_dag=root_dag)
            assert worker.get(f"k{i}", scope=scope, namespace=namespace).found is False
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < NAME_CHARS_CACHED + (4 << 20)  # the bound, and the small change of 400 calls
    assert store.get("k", scope=scope, namespace=namespace).value == 1


def test_a_handle_asked_for_refs_of_long_namespaces_keeps_at_most_the_bound_of_their_names(
    tmp_path: Path,
) -> None:
    # The handle's caches of log paths and logs counted their keys' bytes, not their
    # namespaces': a server asked for keys of a 4,000-byte namespace (a new string per
    # request) kept 65,536 of them, about 300 MB.
    store = Store(tmp_path / "s", durable=False)
    store.set("k", 1, scope="custom", namespace="n" * 4000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(16_000):  # 64 MB of namespace names
            namespace = f"{i:06}".ljust(4000, "n")[6:] + f"{i % 10}" * 6
            assert store.get(f"k{i}", scope="custom", namespace=namespace).found is False
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2 * KEY_BYTES_CACHED + (8 << 20)  # the caches' bounds (their refs shared)
    assert store.get("k", scope="custom", namespace="n" * 4000).value == 1


def test_the_ids_of_refs_of_long_namespaces_kept_by_a_postgresql_process_are_bounded() -> None:
    # Each ref's and namespace's id was kept for the last 65,536 asked (functools.lru_cache):
    # a server's gets of keys of a 4,000-byte namespace kept about 300 MB of names.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ids = []
        for i in range(16_000):  # 64 MB of namespace names, each a new string
            ref = Ref("custom", f"{i:06}".ljust(4000, "n")[6:] + f"{i % 10}" * 6, f"k{i}")
            ids.append((ref.namespace[-1], ref.key, ref_id(ref)))
        kept = tracemalloc.get_traced_memory()[0] - before - 16_000 * 200  # less the list
    finally:
        tracemalloc.stop()
    assert kept < ID_NAMES_CACHED + (8 << 20)
    for digit, key, got in ids[::997]:  # and each id is the one its names give
        namespace = "n" * 3994 + digit * 6
        ns = hashlib.sha256(b"custom\0" + namespace.encode()).digest()
        assert got == hashlib.sha256(ns + key.encode()).digest()
