"""A key's version index stays bounded by its log, and keeps up with a key made again.

Found in the eighteenth session. One line of an import file naming version 16,777,000
made the first ``get --version`` of that key build a 128 MiB ``.vix`` of "never in
this log" markers (12 s of CPU, 128 MiB of disk for a 331-byte log): hostile input
amplified 400,000 times. And a key that compaction removed and a later ``set`` made
again kept the index of its first life (the removed versions) for good: no reader
extended it past those markers, so every ``get --version`` and history page of the new
life scanned the whole log (22 ms instead of microseconds after 3,000 versions).

Now an index covers versions only up to ``max(1 MiB, log size) / 8`` (FORMAT.md §5),
higher ones are found by a scan of the (then small) log, and an index a reader cannot
extend from its last record is rebuilt from the log when it is a prefix of what a
rebuild gives (else it is evidence of a cut, left for check). The oracles: every
answer equals the one a fresh store with the same history gives, the index's size,
and ``check`` finding nothing, not even an index out of step.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from castore import CorruptionError, NotFoundError, Store
from castore.file import logread, versionindex
from castore.file.frames import scan_frames
from castore.file.records import KIND_ENTRY, decode_entry
from castore.transfer import export_lines, import_lines
from tests.helpers import import_starting_at, log_path

pytestmark = pytest.mark.integration

FAR = 16_777_000  # just below the highest version an index may hold (2**24)


def _vix(root: Path, key: str) -> Path:
    return Path(versionindex.vix_path(str(log_path(root, "dag", "d", key))))


def _import(root: Path, first: int, on_conflict: str = "refuse") -> None:
    source = Store(root.parent / f"source-{first}", dag="d")
    source.set("k", "placeholder")
    lines = [
        line.replace(b'"version":1,', f'"version":{first},'.encode())
        for line in export_lines(source, scope="dag", namespace="d")
    ]
    assert any(f'"version":{first},'.encode() in line for line in lines)
    import_lines(Store(root, dag="d"), lambda: lines, on_conflict=on_conflict)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["import", "import overwrite"])
def test_a_key_imported_far_up_gets_no_index_larger_than_a_mebibyte(
    tmp_path: Path, how: str
) -> None:
    root = tmp_path / "store"
    if how == "import overwrite":
        Store(root, dag="d").set("k", "before")
    _import(root, FAR, "overwrite" if how == "import overwrite" else "refuse")
    s = Store(root, dag="d")
    assert s.get("k", version=FAR).value == "placeholder"
    assert [e.version for e in s.history("k").entries] == [FAR]
    with pytest.raises(NotFoundError, match=f"has no version {FAR - 1}"):
        s.get("k", version=FAR - 1)
    assert s.set("k", "next").version == FAR + 1
    assert s.get("k", version=FAR + 1).value == "next"
    assert [e.version for e in s.history("k").entries] == [FAR + 1, FAR]
    vix = _vix(root, "k")
    assert not vix.exists() or vix.stat().st_size <= 1 << 20
    assert s.check().findings == []


def test_a_key_made_again_after_compaction_removed_it_is_indexed_again(tmp_path: Path) -> None:
    root = tmp_path / "store"
    s = Store(root, dag="d")
    for n in range(50):
        s.set("k", n)
    s.delete("k")
    assert s.compact(keep_last=1, keep_within_seconds=0).keys_removed == 1
    first_life = _vix(root, "k").stat().st_size  # markers for versions 1-51
    for n in range(300):
        s.set("k", {"n": n})
    newest = s.history("k", limit=1).entries[0].version
    assert newest == 52 + 299
    assert s.get("k", version=newest - 10).value == {"n": 289}
    # the index now leads to the new life's versions: it covers the newest one
    assert _vix(root, "k").stat().st_size == newest * versionindex.VIX_RECORD_BYTES > first_life
    page = s.history("k", limit=5, before_version=newest - 100).entries
    assert [e.version for e in page] == list(range(newest - 101, newest - 106, -1))
    with pytest.raises(NotFoundError, match="version 51 was compacted"):
        s.get("k", version=51)
    assert s.check().findings == []


def test_an_index_out_of_step_is_left_alone_as_evidence(tmp_path: Path) -> None:
    """An index whose last record is not where the log says (a cut, FORMAT.md §7) is not
    rebuilt by a reader: the rebuild would drop the evidence."""
    root = tmp_path / "store"
    s = Store(root, dag="d")
    for n in range(5):
        s.set("k", n)
    s.history("k")  # indexed up to version 5
    vix = _vix(root, "k")
    before = vix.read_bytes()
    log = log_path(root, "dag", "d", "k")
    frames_end = os.path.getsize(log)
    s.set("k", 5)  # version 6, then cut off the log by hand at version 5's end
    os.truncate(log, frames_end)
    with open(vix, "r+b") as fh:  # a reader had indexed version 6 before the cut
        fh.seek(len(before))
        fh.write((frames_end).to_bytes(8, "little"))
    evidence = vix.read_bytes()
    fresh = Store(root, dag="d")
    for version in (3, 7, 8):  # 7, 8: past the index, so a reader would extend it
        with contextlib.suppress(NotFoundError, CorruptionError):
            fresh.get("k", version=version)
    with pytest.raises(CorruptionError, match="no longer holds versions up to 6"):
        fresh.get("k")
    assert vix.read_bytes() == evidence
    assert not fresh.check().ok


def _noise(rng: random.Random, n: int) -> str:  # an incompressible JSON string
    return base64.b64encode(rng.randbytes(n * 3 // 4)).decode()


def test_a_torn_tail_never_counts_toward_the_index_s_size(tmp_path: Path) -> None:
    """Found by the review: the limit came from the log file's size, torn tail included,
    so a reader indexed a version that a log without that tail may not index; once a
    writer cut the tail, the index was larger than its log and check said out of step."""
    rng = random.Random(1)
    source = Store(tmp_path / "source", dag="d")
    source.set("k", _noise(rng, 900_000))
    source.set("k", _noise(rng, 900_000))
    raw = list(export_lines(source, scope="dag", namespace="d"))
    root = tmp_path / "store"

    def imported(first: int) -> None:
        shutil.rmtree(root, ignore_errors=True)
        lines = [
            line.replace(b'"version":2,', f'"version":{first + 1},'.encode()).replace(
                b'"version":1,', f'"version":{first},'.encode()
            )
            for line in raw
        ]
        import_lines(Store(root, dag="d"), lambda: lines)

    imported(1)
    log = log_path(root, "dag", "d", "k")
    first = os.path.getsize(log) // 8 + 1000  # just above what a log this size indexes
    imported(first)
    intact = os.path.getsize(log)
    assert versionindex.index_limit(intact) < first < versionindex.index_limit(intact + 100_000)
    Store(root, dag="d").set("k", _noise(rng, 200_000))
    os.truncate(log, intact + 100_000)  # that append torn by a crash: never acknowledged
    assert len(Store(root, dag="d").get("k", version=first + 1).value) == 900_000
    assert Store(root, dag="d").set("k", "small").version == first + 2  # cuts the tail
    assert os.path.getsize(versionindex.vix_path(str(log))) <= max(1 << 20, os.path.getsize(log))
    findings = Store(root, dag="d").check().findings  # the torn append's index record: stale
    assert [f.problem for f in findings] == ["1 stale or damaged blob index records"]


def test_a_version_above_the_limit_is_read_with_one_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the review: each read tried to extend an index that could not hold the
    version, reading the whole log under the index's lock before the lookup read it again."""
    root = tmp_path / "store"
    _import(root, FAR)
    writer = Store(root, dag="d", durable=False)
    for n in range(300):
        writer.set("k", n)
    scans: list[int] = []
    real = logread.scan

    def counted(fd: int, *args: Any, **kwargs: Any) -> Any:
        scans.append(fd)
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(logread, "scan", counted)
    reader = Store(root, dag="d")
    for i in range(10):
        assert reader.get("k", version=FAR + 100 + i).value == 99 + i
    assert len(scans) <= 10


@pytest.mark.parametrize("damaged", [False, True])
def test_a_cut_at_or_below_the_limit_is_proven_after_reads_above_it(
    tmp_path: Path, damaged: bool
) -> None:
    """Found by the second review: a first fix skipped the index for every read of a version
    above the limit, so versions at or below it were never indexed either; cut off at a
    frame boundary, they were no longer proven, and the next set gave one of them again.
    And by the third: the skip read the next entry's version unverified, so one damaged
    byte in it (reading 931,060) did the same."""
    base = versionindex.index_limit(0) - 12  # 131,060: the log's versions straddle the limit
    root = tmp_path / "store"
    import_starting_at(root, tmp_path / "source", base, 21)
    log = Path(log_path(root, "dag", "d", "k"))
    if damaged:
        flipped = bytearray(log.read_bytes())
        flipped[flipped.find(b'{"version":%d,' % base) + 11] = ord("9")
        log.write_bytes(bytes(flipped))
    reader = Store(root, dag="d")
    assert reader.get("k", version=base + 20).value == {"n": 20}
    if not damaged:  # (a version in the damaged range is refused, as it should be)
        assert [e.version for e in reader.history("k", limit=2).entries] == [base + 20, base + 19]
    assert reader.get("k", version=base + 5).value == {"n": 5}
    reader.close()
    data = log.read_bytes()
    end = next(
        f.end
        for f in scan_frames(data)
        if f.kind == KIND_ENTRY and decode_entry(f.payload).version == base + 8
    )
    os.truncate(log, end)  # versions base + 9 .. base + 20 cut off, base + 12 the limit
    fresh = Store(root, dag="d")
    with pytest.raises(CorruptionError, match="no longer holds versions up to"):
        fresh.get("k")
    with pytest.raises(CorruptionError):
        fresh.set("k", "again")
    assert "no longer holds" in " ".join(f.problem for f in fresh.check().findings)


def test_the_index_records_what_format_md_names(tmp_path: Path) -> None:
    """FORMAT.md §5: version v's ``u64le`` at byte ``8 * (v - 1)`` is the offset of its
    ``E`` frame, 1 (compacted) or 2 (never in this log: an import started higher).
    Another castore reads these bytes, so they are the format, not a hint."""
    root = tmp_path / "store"
    s = Store(root, dag="d")
    for n in range(4):
        s.set("c", n)
    assert s.compact(keep_last=2, prefix="c").versions_dropped == 2
    _import(root, 3)  # k's versions start at 3
    s.set("k", "next")
    for key, marker in (("c", versionindex.COMPACTED), ("k", versionindex.ABSENT)):
        assert [e.version for e in s.history(key).entries] == [4, 3]  # builds the index
        frames = scan_frames(Path(log_path(root, "dag", "d", key)).read_bytes())
        offsets = [f.start for f in frames if f.kind == KIND_ENTRY]
        data = _vix(root, key).read_bytes()
        got = [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]
        assert got == [marker, marker, *offsets], key


def test_an_index_extended_past_a_damaged_entry_still_proves_a_later_cut(tmp_path: Path) -> None:
    """Found by mutation testing: the index is extended from its last record only while
    the log's next versions follow on; version 4's entry damaged (a gap) must not shift
    versions 5 and 6 into slots 4 and 5, or the index stops in step with the log and
    never records version 7, and a later cut of version 7 served version 6 as current.
    Oracle: FORMAT.md §5 (2 for a version the intact frames lack) and §7 (a cut the
    index proves is refused, never served as an older version)."""
    root = tmp_path / "store"
    s = Store(root, dag="d")
    for v in range(1, 4):
        s.set("k", {"v": v})
    s.history("k")  # indexed up to version 3
    for v in range(4, 7):
        s.set("k", {"v": v})
    log = Path(log_path(root, "dag", "d", "k"))
    data = bytearray(log.read_bytes())
    frames = scan_frames(bytes(data))
    entries = {decode_entry(f.payload).version: f for f in frames if f.kind == KIND_ENTRY}
    data[entries[4].start + 8] ^= 0xFF  # version 4's entry damaged
    log.write_bytes(bytes(data))
    assert s.get("k", version=6).value == {"v": 6}  # extends the index past the damage
    vix = _vix(root, "k").read_bytes()
    assert vix[24:32] == versionindex.ABSENT.to_bytes(8, "little")
    assert s.set("k", {"v": 7}).version == 7
    assert s.history("k", limit=1).entries[0].version == 7  # indexed up to version 7
    os.truncate(log, entries[6].end)  # version 7 cut off
    with pytest.raises(CorruptionError, match="no longer holds versions up to 7"):
        Store(root, dag="d").get("k")
