"""A compacted version names the compaction that dropped it (FORMAT.md §3, the ``C`` frame).

A log has one ``C`` frame; each compaction replaces it and remembers the frame it
replaced, up to :data:`EARLIER_RUNS` of them.
"""

from __future__ import annotations

import pathlib

import msgspec
import pytest

from castore import NotFoundError, Store
from castore.file.frames import scan_frames
from castore.file.records import (
    EARLIER_RUNS,
    KIND_COMPACTED,
    Compaction,
    CompactionRun,
    decode_compaction,
    encode_record,
)
from tests.helpers import log_path


def compacted_message(store: Store, version: int) -> str:
    with pytest.raises(NotFoundError) as info:
        store.get("k", version=version)
    return str(info.value)


def test_each_version_names_its_own_compaction_up_to_the_runs_remembered(
    tmp_path: pathlib.Path,
) -> None:
    store = Store(str(tmp_path / "s"), dag="d", durable=False)
    store.set("k", 0)
    runs = EARLIER_RUNS + 8  # run i drops version i, by "keep-last i+1"
    for run in range(1, runs + 1):
        store.set("k", run)
        store.set("k", -run)
        assert store.compact(keep_last=run + 1).versions_dropped == 1
    oldest_remembered = runs - EARLIER_RUNS  # the runs before it are forgotten
    for version in range(1, runs + 1):
        by = max(version, oldest_remembered)  # a forgotten run's versions: the oldest known
        assert f"version {version} was compacted (keep-last {by + 1}, " in compacted_message(
            store, version
        )
    data = pathlib.Path(log_path(tmp_path / "s", "dag", "d", "k")).read_bytes()
    frames = [f for f in scan_frames(data) if f.kind == KIND_COMPACTED]
    assert len(frames) == 1
    done = decode_compaction(frames[0].payload)
    assert len(done.earlier) == EARLIER_RUNS
    assert done.versions == [(1, runs)]
    store.close()


def test_a_c_frame_of_one_compaction_keeps_its_bytes_and_older_ones_still_read() -> None:
    # written before `earlier` existed, and read by castore before it (which ignores it)
    one = Compaction(versions=[(1, 3)], policy="keep-last 2", time_ns=7)
    assert encode_record(one) == b'{"versions":[[1,3]],"policy":"keep-last 2","time_ns":7}'
    assert decode_compaction(encode_record(one)) == one
    two = Compaction(
        versions=[(1, 5)],
        policy="keep-last 1",
        time_ns=9,
        earlier=[CompactionRun(versions=[(1, 3)], policy="keep-last 2", time_ns=7)],
    )

    class Before(msgspec.Struct):  # the C frame's fields before this one
        versions: list[tuple[int, int]]
        policy: str
        time_ns: int

    assert msgspec.json.decode(encode_record(two), type=Before) == Before(
        [(1, 5)], "keep-last 1", 9
    )
    assert [two.dropped_by(v) for v in (0, 1, 3, 4, 5, 6)] == [
        None,
        ("keep-last 2", 7),
        ("keep-last 2", 7),
        ("keep-last 1", 9),
        ("keep-last 1", 9),
        None,
    ]
