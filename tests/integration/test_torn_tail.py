from __future__ import annotations

import contextlib
import os
import random
import string
from typing import Any, Final

import pytest

from castore import CorruptionError, NotFoundError, Store, codec
from castore.file.frames import FRAME_OVERHEAD
from castore.file.records import CODEC_RAW, CODEC_ZSTD, KIND_BLOB, KIND_ENTRY, decode_entry
from tests.helpers import (
    assert_clean_log,
    corrupt,
    frames_of,
    keys_path,
    log_path,
    read_versions,
    snapshot,
)

pytestmark = pytest.mark.integration

DAG: Final = "torn"
KEY: Final = "k"
_RNG = random.Random(20240601)
# ~6 bits of entropy per character: its B frame is still > 4096 bytes after zstd.
_ALNUM: Final = string.ascii_letters + string.digits
BIG: Final = {"blob": "".join(_RNG.choice(_ALNUM) for _ in range(5600))}
VALUES: Final[list[Any]] = [
    1,
    {"small": "x"},
    {"text": "compressible " * 30},  # > 128 bytes: zstd
    BIG,  # newest frame is larger than one page
]
REPAIRS: Final[list[Any]] = [{"repaired": True}, BIG, "x" * 500]


def restore(root: str, saved: dict[str, bytes], **override: bytes) -> None:
    """Put every file back as :func:`snapshot` saved it (``override``: path -> other bytes).

    castore only appends to (or truncates) existing files, so a file whose size
    is unchanged is unchanged, except the overridden ones, which are always written.
    Directories left empty go too (a writer's quarantine of a torn tail makes one per
    cut, and every walk would cost more with every cut before).
    """
    wanted = {os.path.join(root, rel): data for rel, data in saved.items()} | override
    for base, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(base, name)
            if path not in wanted:
                os.unlink(path)
            elif path not in override and os.path.getsize(path) == len(wanted[path]):
                del wanted[path]
        for name in dirs:
            with contextlib.suppress(OSError):  # not empty: it holds a file kept
                os.rmdir(os.path.join(base, name))
    for path, data in wanted.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def open_store(root: str) -> Store:
    return Store(root, dag=DAG, durable=False)


def check_versions(root: str, key: str, values: list[Any]) -> None:
    """get(version=v) gives each value (None = tombstone); the next version is absent."""
    store = open_store(root)
    for version, value in enumerate(values, 1):
        res = store.get(key, version=version)
        assert res.found is (value is not None), version
        if value is not None:
            assert (res.version, res.value) == (version, value)
    with pytest.raises(NotFoundError):
        store.get(key, version=len(values) + 1)
    history = store.history(key)
    assert [e.version for e in history.entries] == list(range(len(values), 0, -1))


def check_get(root: str, key: str, version: int, value: Any) -> None:
    res = open_store(root).get(key)
    if version == 0:
        assert (res.found, res.version) == (False, 0)
        return
    assert (res.found, res.version) == (True, version)
    assert res.value == value
    assert res.hash == codec.hexdigest(codec.normalize(value))


def build(root: str, values: list[Any]) -> tuple[str, int, int]:
    """Set ``values`` in order; return the log path and its size before and after the last."""
    store = open_store(root)
    for value in values[:-1]:
        store.set(KEY, value)
    path = log_path(root, "dag", DAG, KEY)
    before = os.path.getsize(path) if os.path.exists(path) else 0
    store.set(KEY, values[-1])
    return path, before, os.path.getsize(path)


def test_layout_is_what_the_torn_tests_assume(tmp_path):
    root = str(tmp_path / "s")
    path, before, after = build(root, VALUES)
    frames = assert_clean_log(path)
    blobs = [f for f in frames if f.kind == KIND_BLOB]
    assert [f.payload[32] for f in blobs] == [CODEC_RAW, CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD]
    last_blob, last_entry = frames[-2:]
    assert (last_blob.start, last_entry.end) == (before, after)
    assert last_blob.end - last_blob.start > 4096 + FRAME_OVERHEAD
    assert decode_entry(last_entry.payload).blob is not None


def _torn_last_write(root: str, values: list[Any], previous: int, prev_value: Any) -> None:
    path, before, after = build(root, values)
    saved = snapshot(root)
    full = saved[os.path.relpath(path, root)]
    assert after - before > 4096
    for cut in range(before, after):
        restore(root, saved, **{path: full[:cut]})
        # Readers: the previous version, whole; the torn one does not exist.
        check_get(root, KEY, previous, prev_value)
        if cut % 5 == 1:
            check_versions(root, KEY, values[:-1])
        if cut % 5 == 0:  # list reads the same tail; a sample of cuts is enough
            listed = open_store(root).list()
            assert [(e.key, e.version) for e in listed.entries] == (
                [(KEY, previous)] if previous else []
            ), cut
            assert listed.skipped == []
        # The next writer repairs the tail and appends the next version.
        repair = REPAIRS[cut % len(REPAIRS)]
        res = open_store(root).set(KEY, repair)
        assert (res.version, res.created) == (len(values), previous == 0), cut
        frames = assert_clean_log(path)
        assert frames[-1].kind == KIND_ENTRY
        check_get(root, KEY, len(values), repair)
        versions = read_versions(root, path)
        assert [v.entry.version for v in versions] == list(range(1, len(values) + 1))
        assert versions[-1].value == codec.normalize(repair)
        if cut % 5 == 2:
            check_versions(root, KEY, [*values[:-1], repair])


def test_every_cut_of_the_last_set_reads_previous_and_is_repaired(tmp_path):
    _torn_last_write(str(tmp_path / "s"), VALUES, len(VALUES) - 1, VALUES[-2])


def test_every_cut_of_the_first_set(tmp_path):
    root = str(tmp_path / "s")
    path, before, after = build(root, [VALUES[2]])
    assert before == 0
    saved = snapshot(root)
    full = saved[os.path.relpath(path, root)]
    for cut in range(before, after):
        restore(root, saved, **{path: full[:cut]})
        check_get(root, KEY, 0, None)
        assert open_store(root).list().entries == []
        repair = REPAIRS[cut % len(REPAIRS)]
        res = open_store(root).set(KEY, repair)
        assert (res.version, res.created) == (1, True), cut
        assert_clean_log(path)
        check_get(root, KEY, 1, repair)
        assert [e.key for e in open_store(root).list().entries] == [KEY]


def test_every_cut_of_a_tombstone(tmp_path):
    root = str(tmp_path / "s")
    path, _, _ = build(root, VALUES)
    store = open_store(root)
    before = os.path.getsize(path)
    assert store.delete(KEY).deleted
    after = os.path.getsize(path)
    saved = snapshot(root)
    full = saved[os.path.relpath(path, root)]
    for cut in range(before, after):
        restore(root, saved, **{path: full[:cut]})
        check_get(root, KEY, len(VALUES), BIG)
        if cut % 2:
            assert open_store(root).delete(KEY).deleted
            check_get(root, KEY, 0, None)
            versions = read_versions(root, path)
            assert [v.entry.op for v in versions][-2:] == ["set", "delete"]
        else:
            res = open_store(root).set(KEY, VALUES[0])
            assert (res.version, res.created) == (len(VALUES) + 1, False)
            check_get(root, KEY, len(VALUES) + 1, VALUES[0])
        assert_clean_log(path)


# Bytes an interrupted append can leave: too short to have been a whole frame.
TORN_GARBAGE: Final = {
    "zeros-1": bytes(1),
    "zeros-24": bytes(24),
    "random-7": random.Random(1).randbytes(7),
    "prefix-of-a-frame": (4000).to_bytes(4, "little") + b"E" + b'{"version":9',
}
# Bytes no interrupted append can leave (FORMAT.md §7): damage, never a torn tail.
DAMAGE_GARBAGE: Final = {
    "zeros-25": bytes(25),
    "zeros-5000": bytes(5000),
    "random-100": random.Random(2).randbytes(100),
    "random-5000": random.Random(3).randbytes(5000),
    "ff-30": b"\xff" * 30,
    # A length field claiming a frame that ends exactly at end of file.
    "fake-frame": (10).to_bytes(4, "little") + b"E" + bytes(10 + 16) + (10).to_bytes(4, "little"),
}


@pytest.mark.parametrize("garbage", list(TORN_GARBAGE.values()), ids=list(TORN_GARBAGE))
def test_torn_garbage_after_a_valid_log_is_quarantined_and_cut(tmp_path, garbage):
    root = str(tmp_path / "s")
    path, _, size = build(root, VALUES)
    with open(path, "ab") as fh:
        fh.write(garbage)
    check_get(root, KEY, len(VALUES), BIG)
    assert [(e.key, e.version) for e in open_store(root).list().entries] == [(KEY, len(VALUES))]
    res = open_store(root).set(KEY, {"after": "garbage"})
    assert res.version == len(VALUES) + 1
    frames = assert_clean_log(path)
    assert frames[-2].start == size  # garbage gone: the new B frame starts where the log ended
    check_get(root, KEY, len(VALUES) + 1, {"after": "garbage"})
    kept = [
        os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "quarantine")) for f in fs
    ]
    assert len(kept) == 1
    assert f".log.{size}." in os.path.basename(kept[0])
    assert os.path.basename(os.path.dirname(kept[0])) == "torn"
    with open(kept[0], "rb") as fh:
        assert fh.read() == garbage  # the cut bytes are kept, not destroyed


@pytest.mark.parametrize("garbage", list(DAMAGE_GARBAGE.values()), ids=list(DAMAGE_GARBAGE))
def test_damage_after_a_valid_log_is_never_read_past(tmp_path, garbage):
    root = str(tmp_path / "s")
    path, _, size = build(root, VALUES)
    with open(path, "ab") as fh:
        fh.write(garbage)
    with open(path, "rb") as fh:
        damaged = fh.read()
    store = open_store(root)
    with pytest.raises(CorruptionError, match=f"offset {size}"):
        store.get(KEY)
    with pytest.raises(CorruptionError):
        store.history(KEY)
    assert open_store(root).list().skipped == [KEY]
    with pytest.raises(CorruptionError, match="nothing was written"):
        open_store(root).set(KEY, {"after": "garbage"}, expected_version=len(VALUES))
    with open(path, "rb") as fh:
        assert fh.read() == damaged  # the writer neither appended nor cut
    report = open_store(root).check()
    assert not report.ok
    assert any("damaged bytes" in f.problem for f in report.findings)
    repaired = open_store(root).check(repair=True)
    assert all(f.repaired or f.severity == "info" for f in repaired.findings)
    after = open_store(root).check()
    assert after.ok
    assert any("lost to damage" in f.problem and f.severity == "info" for f in after.findings)
    res = open_store(root).set(KEY, {"after": "repair"})
    assert res.version > len(VALUES) + 1  # above every version the damage may have held
    check_get(root, KEY, res.version, {"after": "repair"})
    for version, value in enumerate(VALUES, 1):
        assert open_store(root).get(KEY, version=version).value == value


def _frame_middles(path: str) -> list[tuple[str, int]]:
    frames, _ = frames_of(path)
    return [(chr(f.kind), (f.start + f.end) // 2) for f in frames]


@pytest.mark.parametrize("torn", [False, True], ids=["intact-tail", "torn-tail"])
@pytest.mark.parametrize("which", range(7))  # H, B1, E1, B2, E2, B3, E3: never the newest
def test_bit_flip_in_an_older_record(tmp_path, which, torn):
    root = str(tmp_path / "s")
    path, _, size = build(root, VALUES)
    middles = _frame_middles(path)
    assert len(middles) == 9
    kind, offset = middles[which]
    corrupt(path, offset, 0x10)
    if torn:
        with open(path, "ab") as fh:
            fh.write(b"\x00torn")
    check_get(root, KEY, len(VALUES), BIG)
    assert [(e.key, e.version) for e in open_store(root).list().entries] == [(KEY, len(VALUES))]
    res = open_store(root).set(KEY, {"after": kind})
    assert res.version == len(VALUES) + 1
    check_get(root, KEY, len(VALUES) + 1, {"after": kind})
    frames, end = frames_of(path)
    assert frames[-1].end == end
    assert frames[-2].start == size


NS_KEYS: Final = ["a", "ab", "b", "é"]
_HEX: Final = frozenset(b"0123456789abcdef")


def key_lines(data: bytes) -> list[str]:
    """Keys named by the complete, lowercase-hex lines of a KEYS file (FORMAT.md §5)."""
    out = []
    for line in data.split(b"\n")[:-1]:
        if line and len(line) % 2 == 0 and _HEX.issuperset(line):
            out.append(bytes.fromhex(line.decode()).decode())
    return sorted(out)


def test_every_cut_of_keys(tmp_path):
    root = str(tmp_path / "s")
    store = open_store(root)
    for n, key in enumerate(NS_KEYS):
        store.set(key, n)
    kpath = keys_path(root, "dag", DAG)
    saved = snapshot(root)
    full = saved[os.path.relpath(kpath, root)]
    assert key_lines(full) == sorted(NS_KEYS)
    failures: list[tuple[int, bytes, object]] = []
    for cut in range(len(full)):
        restore(root, saved, **{kpath: full[:cut]})
        # A KEYS line without its newline is ignored (a torn append): its key drops out
        # of list until the index is rebuilt, unless the cut left KEYS visibly damaged
        # (no namespace line, a sorted region that does not end a line, an unfinished
        # line that is not hex), when list reads the keys from the logs: never fewer.
        survivors = key_lines(full[:cut])
        for n, key in enumerate(NS_KEYS):
            check_get(root, key, 1, n)
        listed = open_store(root).list()
        shown = [e.key for e in listed.entries]
        assert shown == sorted(shown, key=str.encode), cut
        assert set(survivors) <= set(shown) <= set(NS_KEYS), cut
        assert listed.skipped == []
        for n, key in enumerate(NS_KEYS):
            assert open_store(root).set(key, n + 10).version == 2
        # A key created after the damage must be listed.
        assert open_store(root).set("new", "fresh").created
        check_get(root, "new", 1, "fresh")
        try:
            after = [e.key for e in open_store(root).list().entries]
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            failures.append((cut, full[:cut], repr(exc)))
            continue
        # The next writer puts a newline after a torn last line, which can make it whole
        # again: that key may then be listed too (only keys with live logs ever are).
        if after != sorted(after) or not (
            set(survivors) | {"new"} <= set(after) <= set(NS_KEYS) | {"new"}
        ):
            failures.append((cut, full[:cut], after))
    assert not failures, (
        f"{len(failures)} of {len(full)} cuts of KEYS break listing the next new key:\n"
        + "\n".join(f"  cut={cut} KEYS={data!r}: list -> {got}" for cut, data, got in failures)
    )


def test_every_cut_of_blob_index(tmp_path):
    root = str(tmp_path / "s")
    store = open_store(root)
    shared = {"shared": "value" * 80}  # >= DEDUP_MIN_BYTES: shared across logs
    store.set("a", shared)
    store.set("b", shared)  # reuses a's blob through the index
    b_entry = read_versions(root, log_path(root, "dag", DAG, "b"))[0].entry
    assert b_entry.blob is not None
    assert b_entry.blob.log, "the second copy should point into a's log"
    store.set("c", VALUES[2])
    saved = snapshot(root)
    shards = sorted(os.path.join(root, p) for p in saved if p.endswith(".idx"))
    assert shards
    for shard in shards:
        full = saved[os.path.relpath(shard, root)]
        for cut in range(len(full)):
            restore(root, saved, **{shard: full[:cut]})
            check_get(root, "a", 1, shared)
            check_get(root, "b", 1, shared)
            check_get(root, "c", 1, VALUES[2])
            listed = open_store(root).list(include_values=True)
            assert [(e.key, e.value) for e in listed.entries] == [
                ("a", shared),
                ("b", shared),
                ("c", VALUES[2]),
            ]
            # Writers still work: the same content again, then new content twice.
            assert open_store(root).set("d", shared).version == 1
            check_get(root, "d", 1, shared)
            fresh = {"fresh": cut, "pad": "p" * 300}  # >= DEDUP_MIN_BYTES: deduplicated
            assert open_store(root).set("e", fresh).version == 1
            assert open_store(root).set("f", fresh).version == 1
            check_get(root, "f", 1, fresh)
            # The index entry appended after the torn bytes is found again (dedup).
            f_entry = read_versions(root, log_path(root, "dag", DAG, "f"))[0].entry
            assert f_entry.blob is not None
            assert f_entry.blob.log == os.path.relpath(
                log_path(root, "dag", DAG, "e"), os.path.join(root, "refs")
            ), (shard, cut)


def test_damaged_version_index(tmp_path):
    # <key-id>.vix is derived (castore/versions.py): any cut or scramble of it must
    # still give every version, before and after the next write.
    root = str(tmp_path / "s")
    build(root, VALUES)
    assert open_store(root).delete(KEY).deleted
    history = [*VALUES, None]
    open_store(root).history(KEY)  # the first reader of old versions builds the index
    vix = log_path(root, "dag", DAG, KEY)[: -len(".log")] + ".vix"
    saved = snapshot(root)
    assert os.path.relpath(vix, root) in saved
    full = saved[os.path.relpath(vix, root)]
    records = [full[i : i + 8] for i in range(0, len(full), 8)]
    variants = {f"cut-{cut}": full[:cut] for cut in range(len(full))}
    variants["reversed"] = b"".join(reversed(records))
    variants["shifted"] = records[-1] + b"".join(records[:-1])
    variants["zeros"] = bytes(len(full))
    variants["past-end"] = (1 << 40).to_bytes(8, "little") * len(records)
    variants["ones"] = b"\xff" * len(full)
    failures = []
    for name, data in variants.items():
        restore(root, saved, **{vix: data})
        try:
            check_versions(root, KEY, history)
            res = open_store(root).set(KEY, name)
            assert res.version == len(history) + 1, name
            check_versions(root, KEY, [*history, name])
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            failures.append(f"  {name} ({data.hex()}): {exc!r}")
    assert not failures, f"{len(failures)} of {len(variants)} damaged .vix files fail:\n" + (
        "\n".join(failures)
    )
    # Records of versions above the newest that the log does not hold where they say (here
    # version 1's frame): what a longer, older copy of the log put back leaves (a review).
    # A cut, never an older version served: refused until check --repair records them lost.
    restore(root, saved, **{vix: full + records[0] * 3})
    with pytest.raises(CorruptionError, match="no longer holds versions up to 8"):
        open_store(root).get(KEY)
    assert open_store(root).check(repair=True).findings
    assert open_store(root).set(KEY, "after").version == len(history) + 4  # never 6 to 8
