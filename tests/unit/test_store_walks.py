"""What the directory store's whole-store walks hold (DESIGN.md, "Memory of store-wide commands").

Counted, never timed: the handle's cached logs and paths after ``audit`` and
``export``; the bytes ``stats`` asks of one ``pread``. Oracle for ``stats``:
the same count with every log read whole (the reading it had before), on the
same store, intact, with a torn tail, and damaged.
"""

import os
import pathlib
import shutil
from collections.abc import Iterator

import pytest

from castore import CorruptionError, Store
from castore.audit import audit
from castore.file import chained
from castore.file import stats as file_stats
from castore.file.frames import classify
from castore.transfer import export_lines
from tests.helpers import corrupt, file_backend, frames_of, ref_log_path

CHUNK = 4096  # small enough that every log below spans several chunks


def new_store(root: pathlib.Path) -> Store:
    return Store(root, dag="d", durable=False)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Store:
    """Two namespaces, a key with a value longer than a chunk, a deleted key, a long log."""
    s = new_store(tmp_path / "s")
    for i in range(40):
        s.set(f"k{i}", {"i": i}, scope="custom", namespace="a" if i % 2 else "b")
    text = os.urandom(3 * CHUNK).hex()  # compressed, still longer than a chunk
    s.set("big", {"text": text})
    s.set("big", {"text": "y" * 300})
    s.set("shared", {"text": text})  # the same value as big's first
    for i in range(120):
        s.set("long", {"i": i, "pad": "p" * 40})
    s.delete("k3", scope="custom", namespace="a")
    return new_store(tmp_path / "s")


@pytest.mark.parametrize("walk", ["audit", "export"])
def test_a_walk_over_every_key_keeps_no_log_in_the_handle(store, walk):
    backend = file_backend(store)
    lines = list(audit(store)) if walk == "audit" else list(export_lines(store))
    assert len(lines) > 160
    # Before: one RefLog and one path per key walked, up to 65,536 of each.
    assert (len(backend._logs), len(backend.layout._paths)) == (0, 0)
    store.get("long")  # a get still keeps its log
    assert len(backend._logs) == 1


def whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``stats`` read every log whole, as it did before."""

    def unchained(fd: int, size: int, chunk: int = 0) -> Iterator[object]:
        if size >= 0:
            raise chained.UnchainedError
        yield from ()

    monkeypatch.setattr(file_stats, "chained_frames", unchained)


def largest_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes ``os.pread`` is asked for, from now on."""
    asked: list[int] = []
    pread = os.pread

    def counted(fd: int, size: int, offset: int) -> bytes:
        asked.append(size)
        return pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", counted)
    return asked


def test_stats_reads_a_log_in_chunks_and_counts_as_when_read_whole(store, monkeypatch):
    size = frames_of(ref_log_path(store, "long"))[1]
    longest = max(f.end - f.start for f in frames_of(ref_log_path(store, "big"))[0])
    assert size > 4 * CHUNK
    assert longest > CHUNK
    monkeypatch.setattr(chained, "CHUNK_BYTES", CHUNK)
    asked = largest_read(monkeypatch)
    chunked = store.stats()
    assert max(asked) <= longest  # before: one read of each log whole (size)
    with monkeypatch.context() as m:
        whole(m)
        assert new_store(pathlib.Path(store.root)).stats() == chunked
    assert chunked.total.versions == 40 + 3 + 120 + 1


def test_stats_of_a_torn_tail_and_of_damage_are_those_of_a_whole_read(store, monkeypatch, tmp_path):
    monkeypatch.setattr(chained, "CHUNK_BYTES", CHUNK)
    log = ref_log_path(store, "long")
    frames = frames_of(log)[0]
    with open(log, "ab") as f:  # an append cut short: its frame declares more than is there
        f.write(bytes([200, 1, 0, 0, ord("E")]) + b"{")
    torn = store.stats()
    with monkeypatch.context() as m:
        whole(m)
        assert new_store(pathlib.Path(store.root)).stats() == torn
    assert torn.total.reclaimable_bytes >= 6
    shutil.copytree(store.root, tmp_path / "damaged")
    damaged = new_store(tmp_path / "damaged")
    middle = frames[len(frames) // 2]
    corrupt(ref_log_path(damaged, "long"), (middle.start + middle.end) // 2)
    assert classify(pathlib.Path(ref_log_path(damaged, "long")).read_bytes()).damage
    with pytest.raises(CorruptionError) as chunked_error:
        damaged.stats()
    again = new_store(tmp_path / "damaged")
    with monkeypatch.context() as m:
        whole(m)
        with pytest.raises(CorruptionError) as whole_error:
            again.stats()
    assert str(chunked_error.value) == str(whole_error.value)


def test_chained_frames_are_classifys_for_every_chunk_size(store):
    path = ref_log_path(store, "big")
    data = pathlib.Path(path).read_bytes()
    want = classify(data).frames
    fd = os.open(path, os.O_RDONLY)
    try:
        for chunk in [1, 2, 24, 25, 26, 100, 4095, 4096, len(data) - 1, len(data), 1 << 20]:
            assert list(chained.chained_frames(fd, len(data), chunk)) == want, chunk
        for cut in [1, 24, 25, want[1].start + 3, want[-1].end - 1]:  # a torn tail there
            with pytest.raises(chained.UnchainedError):
                list(chained.chained_frames(fd, cut, 64))
            assert classify(data[:cut]).torn < cut
    finally:
        os.close(fd)
