"""Blob index appends from many processes and threads at once lose no record.

Appends take no lock (FORMAT.md §5, ``index/<xx>.idx``): each ``add_many`` is one
``O_APPEND`` write per shard, which no other append splits. The oracle is the
set of records every writer was asked to add: afterwards a fresh handle, and
each writer's own handle (which caches the shards it appended to), find every
digest at its location.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from castore import Store
from castore.file import fileio
from castore.file.backend import FileBackend
from castore.records import BlobLoc

pytestmark = pytest.mark.integration

PROCESSES, THREADS, CALLS = 3, 3, 400
LOG = "dag/" + "a" * 64 + "/" + "b" * 64 + ".log"  # a name an index record may hold


def _records(writer: int, call: int) -> list[tuple[bytes, BlobLoc]]:
    """1 to 3 records per call, digests spread over every shard, each with its own offset."""
    out = []
    for item in range(1 + call % 3):
        digest = hashlib.sha256(f"{writer}.{call}.{item}".encode()).digest()
        out.append((digest, BlobLoc(LOG, writer * 1_000_000 + call * 10 + item, 300 + item)))
    return out


def _index(root: Path):  # type: ignore[no-untyped-def]
    backend = Store(root, dag="d").backend
    assert isinstance(backend, FileBackend)
    return backend._blobs


def _every() -> list[tuple[bytes, BlobLoc]]:
    return [r for w in range(PROCESSES * THREADS) for c in range(CALLS) for r in _records(w, c)]


def _missing(index, records: list[tuple[bytes, BlobLoc]]) -> int:  # type: ignore[no-untyped-def]
    return sum(index.lookup(digest) != [loc] for digest, loc in records)


def _write(root: Path, process: int, start: threading.Barrier, done: threading.Barrier) -> None:
    """Append from THREADS threads of one handle; then, once every process is done, exit
    with the number of records that handle does not find (it cached the shards it wrote)."""
    index = _index(root)
    barrier = threading.Barrier(THREADS)

    def run(thread: int) -> None:
        barrier.wait()
        for call in range(CALLS):
            records = _records(process * THREADS + thread, call)
            index.lookup(records[0][0])  # as a writer does first: the handle caches the shard
            index.add_many(records, durable=False)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    start.wait()  # every process writes at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.wait()
    os._exit(min(_missing(index, _every()), 100))


def test_concurrent_appends_keep_every_record(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root, dag="d").set("k", 1)  # a store: FORMAT, refs/
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(PROCESSES), ctx.Barrier(PROCESSES)
    workers = [ctx.Process(target=_write, args=(root, p, start, done)) for p in range(PROCESSES)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * PROCESSES  # each handle found every record
    every = _every()
    missing = _missing(_index(root), every)
    assert not missing, f"{missing} of {len(every)} records lost"


def test_a_record_another_process_appends_right_after_ours_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a handle's append and its bookkeeping, another thread of the handle reads
    the shard up to that append, and another process appends a record as long as it.
    Was (the first version of the lock-free append, by this test): the handle took the
    shard's new size for its own record's end and never read the other process's."""
    root = tmp_path / "store"
    Store(root, dag="d").set("k", 1)
    mine, other = _index(root), _index(root)
    ours, theirs = _records(0, 0), _records(1, 0)  # one record each, of the same length
    shard = ours[0][0][:1]
    theirs = [(shard + theirs[0][0][1:], theirs[0][1])]  # in the same shard
    mine.lookup(ours[0][0])  # the handle caches the shard
    real = fileio.append
    injected: list[int] = []

    def append(fd: int, data: bytes, *, durable: bool) -> None:
        real(fd, data, durable=durable)
        if not injected:
            injected.append(fd)
            mine.lookup(shard + b"\0" * 31)  # a reader thread of the handle, up to our record
            other.add_many(theirs, durable=False)

    monkeypatch.setattr(fileio, "append", append)
    mine.add_many(ours, durable=False)
    monkeypatch.setattr(fileio, "append", real)
    assert injected
    assert mine.lookup(theirs[0][0]) == [theirs[0][1]]
    assert mine.lookup(ours[0][0]) == [ours[0][1]]
