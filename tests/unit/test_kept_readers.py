"""Get at a version through the logs a handle keeps open (castore/file/readers.py).

A warm ``get(version=)`` reads through a log descriptor (and its ``.vix``)
that the handle kept from an earlier call. These tests pin down what makes
that safe: a file renamed over the path (compaction, or anything else) is
read instead of the kept one, damage is still found on every call, versions
past the newest or compacted are still not found, descriptors are bounded,
closed by ``close`` and never shared with a forked child, and threads share
the pool.
"""

import os
import random
import shutil
import threading
import weakref
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore import CorruptionError, NotFoundError, Store
from castore.file import blobs, logread, records
from castore.file import readers as kept_readers
from castore.file.frames import encode_frame, frame_at
from castore.file.records import CODEC_ZSTD, KIND_BLOB, KIND_ENTRY, decode_entry
from tests.helpers import file_backend, frames_of, ref_log_path


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store", dag="d", durable=False)
    yield s
    s.close()


def fill(store: Store, key: str, count: int, tag: str = "v") -> None:
    for version in range(1, count + 1):
        store.set(key, {"v": version, "tag": tag})


def readers(store: Store) -> kept_readers.KeptReaders:
    return file_backend(store).kept_readers


def warm(store: Store, key: str, version: int = 1) -> None:
    """Two gets: the first may build the log's index (then the log is opened again)."""
    for _ in range(2):
        assert store.get(key, version=version).found
    assert ref_log_path(store, key) in readers(store)._kept


def kept_paths(store: Store) -> list[str]:
    return sorted(readers(store)._kept)


def open_below(root: str | os.PathLike[str]) -> list[str]:
    """Files and directories below ``root`` this process has descriptors on.

    The root itself is left out: a handle keeps it open until it is dropped.
    """
    real = os.path.realpath(root)
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(real + "/"):
            out.append(target)
    return out


def open_store_files(root: str | os.PathLike[str]) -> list[str]:
    """Logs and version indexes below ``root`` this process has descriptors on."""
    return [path for path in open_below(root) if path.endswith((".log", ".vix"))]


def frames_of_version(path: str, version: int) -> tuple[Any, Any]:
    """The ``E`` frame of ``version`` and its ``B`` frame (None if elsewhere)."""
    frames = frames_of(path)[0]
    for frame in frames:
        if frame.kind == KIND_ENTRY and decode_entry(frame.payload).version == version:
            loc = decode_entry(frame.payload).blob
            blob = next((f for f in frames if loc and f.start == loc.offset), None)
            return frame, blob
    raise AssertionError(f"no version {version} in {path}")


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_warm_gets_read_through_one_kept_log(store, monkeypatch):
    fill(store, "k", 300)
    warm(store, "k", 7)
    kept = readers(store)._kept[ref_log_path(store, "k")]
    opened: list[str] = []
    real_open = file_backend(store).fs.open

    def spying_open(path: str, flags: int) -> int:
        opened.append(path)
        return real_open(path, flags)

    monkeypatch.setattr(file_backend(store).fs, "open", spying_open)
    for version in random.Random(1).sample(range(1, 301), 100):
        assert store.get("k", version=version).value == {"v": version, "tag": "v"}
    assert opened == []
    assert readers(store)._kept[ref_log_path(store, "k")] is kept


def test_a_compaction_between_two_gets_is_seen(tmp_path, store):
    fill(store, "k", 20)
    warm(store, "k", 3)  # kept: the log before compaction
    other = Store(tmp_path / "store", dag="d", durable=False)
    assert other.compact(keep_last=5).versions_dropped == 15
    other.close()
    with pytest.raises(NotFoundError, match="compacted"):
        store.get("k", version=3)
    assert store.get("k", version=18).value["v"] == 18
    with pytest.raises(NotFoundError):
        store.get("k", version=21)


@pytest.mark.parametrize("with_index", [True, False])
def test_another_log_renamed_over_the_path_is_read_and_refused_not_the_kept_one(store, with_index):
    fill(store, "a", 30, tag="a")
    fill(store, "b", 30, tag="b")
    warm(store, "a", 5)
    warm(store, "b")  # b's index exists
    a, b = ref_log_path(store, "a"), ref_log_path(store, "b")
    os.replace(b, a)
    if with_index:
        os.replace(b[: -len(".log")] + ".vix", a[: -len(".log")] + ".vix")
    for version in (5, 1, 30, 17):  # the new file is read, not the kept one: it is b's
        with pytest.raises(CorruptionError, match=r"is the log of dag/d/b"):
            store.get("a", version=version)


def test_a_same_size_same_mtime_replacement_is_told_apart_by_its_inode(tmp_path):
    """Only the inode tells the two files apart: size and times are made equal."""
    logs = []
    for tag in ("x", "y"):
        s = Store(tmp_path / tag, dag="d", durable=False)
        fill(s, "k", 10, tag=tag)
        logs.append(ref_log_path(s, "k"))
        s.close()
    if os.path.getsize(logs[0]) != os.path.getsize(logs[1]):
        pytest.skip("the two logs differ in size (entries' times encode differently)")
    reader = Store(tmp_path / "x", dag="d", durable=False)
    warm(reader, "k", 4)
    assert reader.get("k", version=4).value["tag"] == "x"
    before = os.stat(logs[0])
    shutil.copyfile(logs[1], logs[0] + ".tmp")
    os.utime(logs[0] + ".tmp", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(logs[0] + ".tmp", logs[0])
    assert reader.get("k", version=4).value == {"v": 4, "tag": "y"}
    reader.close()


def test_damage_after_a_warm_get_is_found_on_the_next(store):
    fill(store, "k", 10)
    path = ref_log_path(store, "k")
    warm(store, "k", 4)
    blob = frames_of_version(path, 4)[1]
    flip(path, blob.end - 30)  # in the value's bytes: its sha256 fails
    with pytest.raises(CorruptionError):
        store.get("k", version=4)
    assert store.get("k", version=6).value["v"] == 6
    flip(path, frames_of_version(path, 6)[0].start + 40)  # in the entry frame
    with pytest.raises(CorruptionError):
        store.get("k", version=6)
    assert store.get("k", version=7).value["v"] == 7


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The blob payloads handed to ``decode_blob`` (zstd runs there)."""
    seen: list[bytes] = []
    real = records.decode_blob

    def spy(payload: bytes, expected_hex: str) -> bytes:
        seen.append(payload)
        return real(payload, expected_hex)

    monkeypatch.setattr(blobs, "decode_blob", spy)  # the name blobs.py calls
    return seen


def test_a_damaged_codec_byte_is_caught_by_the_frame_checksum(store, decoded):
    fill(store, "k", 3)
    path = ref_log_path(store, "k")
    warm(store, "k", 2)
    blob = frames_of_version(path, 2)[1]
    flip(path, blob.start + 5 + 32)  # raw (0) becomes zstd (1): checked before zstd runs
    decoded.clear()
    with pytest.raises(CorruptionError):
        store.get("k", version=2)
    assert decoded == []


def test_compressed_values_are_read_and_their_damage_found(store, decoded):
    big = [{"v": v, "text": "abc" * 300 + str(v)} for v in range(1, 6)]
    for value in big:
        store.set("k", value)
    path = ref_log_path(store, "k")
    for version in (3, 1, 5, 3):
        assert store.get("k", version=version).value == big[version - 1]
    blob = frames_of_version(path, 3)[1]
    assert blob.payload[32] == CODEC_ZSTD
    flip(path, blob.start + 5 + 40)  # inside the zstd data: zstd never reads it
    decoded.clear()
    with pytest.raises(CorruptionError):
        store.get("k", version=3)
    assert decoded == []


def test_large_values_outside_the_read_window_are_read_whole(store):
    values = [{"v": v, "text": os.urandom(size).hex()} for v, size in ((1, 6000), (2, 20000))]
    values.append({"v": 3, "text": "short"})
    for value in values:
        store.set("k", value)
    for version in (2, 1, 3, 2):
        assert store.get("k", version=version).value == values[version - 1]


def test_long_entry_frames_are_read_whole(store):
    for version in range(1, 5):
        store.set("k", {"v": version}, reason="r" * 300 * version)  # entries up to 1.2 KB
    warm(store, "k")
    for version in (4, 1, 3, 2):
        result = store.get("k", version=version)
        assert result.value == {"v": version}
        assert store.history("k", before_version=version + 1, limit=1).entries[0].reason == (
            "r" * 300 * version
        )


def test_versions_past_the_newest_are_not_found_until_written(store):
    fill(store, "k", 5)
    warm(store, "k", 5)
    with pytest.raises(NotFoundError):
        store.get("k", version=6)
    store.set("k", {"v": 6, "tag": "v"})
    assert store.get("k", version=6).value["v"] == 6
    with pytest.raises(NotFoundError):
        store.get("k", version=7)


def test_a_kept_index_page_is_read_again_once_it_grew(tmp_path, store):
    fill(store, "k", 5)
    warm(store, "k", 5)
    kept = readers(store)._kept[ref_log_path(store, "k")]
    other = Store(tmp_path / "store", dag="d", durable=False)
    other.set("k", {"v": 6, "tag": "v"})
    assert other.get("k", version=6).found  # extends the index
    other.close()
    assert store.get("k", version=6).value["v"] == 6
    assert readers(store)._kept[ref_log_path(store, "k")] is kept  # no reopening


def test_tombstones_read_as_deletes(store):
    fill(store, "k", 2)
    store.delete("k")
    store.set("k", {"v": 4})
    assert not store.get("k", version=3).found
    with pytest.raises(NotFoundError, match="is a delete"):
        store.get("k", version=3, required=True)
    assert store.get("k", version=4).value == {"v": 4}


def test_close_closes_the_kept_descriptors(tmp_path):
    writer = Store(tmp_path / "store", dag="d", durable=False)
    fill(writer, "a", 3)
    fill(writer, "b", 3)
    writer.close()
    reader = Store(tmp_path / "store", dag="d", durable=False)
    warm(reader, "a", 2)
    warm(reader, "b")
    assert len(open_store_files(tmp_path / "store")) == 4  # two logs, two indexes
    reader.close()
    assert open_below(tmp_path / "store") == []
    assert reader.get("a", version=3).value["v"] == 3  # still usable: opened again
    reader.close()
    assert open_below(tmp_path / "store") == []


def test_kept_logs_and_directories_cannot_be_revived_by_a_weak_reference(tmp_path, store):
    """Only strong references reach what holds kept descriptors.

    CPython runs ``__del__`` before it clears weak references, and ``os.close``
    lets other threads run: a weak reference could hand out an object whose
    descriptor is being closed (its number then reused by another file).
    """
    fill(store, "k", 2)
    warm(store, "k")
    kept = readers(store)._kept[ref_log_path(store, "k")]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    folder = kept_readers._Dir(fd)
    for holder in (kept, kept.dir, folder):
        with pytest.raises(TypeError):
            weakref.ref(holder)
    del folder, holder  # the last reference
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_a_kept_log_in_use_is_closed_only_when_its_call_ends(store):
    fill(store, "k", 3)
    warm(store, "k")
    in_use = readers(store)._kept[ref_log_path(store, "k")]  # as a call holds it
    fds = (in_use.fd, in_use.vix_fd)
    store.close()
    for fd in fds:
        os.fstat(fd)  # still open: the call may still read through it
    del in_use  # the call ends: nothing opens a file before the checks below
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


def test_at_most_32_logs_are_kept(tmp_path):
    writer = Store(tmp_path / "store", dag="d", durable=False)
    for i in range(40):
        writer.set(f"k{i}", {"i": i})
    writer.close()
    reader = Store(tmp_path / "store", dag="d", durable=False)
    for _ in range(2):
        for i in range(40):
            assert reader.get(f"k{i}", version=1).value == {"i": i}
    assert len(kept_paths(reader)) == kept_readers.KEPT_READERS_MAX
    assert len(open_store_files(tmp_path / "store")) == 2 * kept_readers.KEPT_READERS_MAX
    reader.close()


def test_a_forked_child_drops_the_kept_logs_and_sees_the_same_store(tmp_path, store):
    fill(store, "k", 10)
    warm(store, "k", 2)
    inherited = readers(store)._kept[ref_log_path(store, "k")]
    pid = os.fork()
    if pid == 0:  # the child: exit status says what went wrong
        code = 0
        try:
            if readers(store)._kept:
                code = 2
            elif store.get("k", version=2).value["v"] != 2:
                code = 3
            elif store.compact(keep_last=3).versions_dropped != 7:
                code = 4
        except BaseException:  # noqa: BLE001 - the child must exit, never return
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert readers(store)._kept[ref_log_path(store, "k")] is inherited
    os.fstat(inherited.fd)  # the child closed its copy only
    with pytest.raises(NotFoundError, match="compacted"):
        store.get("k", version=2)
    assert store.get("k", version=9).value["v"] == 9


@pytest.mark.parametrize("others", [0, 40])
def test_threads_share_the_kept_logs_while_the_log_is_rewritten(tmp_path, store, others):
    """Reads of one key being compacted, alone or mixed with reads of others (the pool churns)."""
    fill(store, "k", 200)
    for i in range(others):
        store.set(f"o{i}", {"i": i})
    stop = threading.Event()
    failures: list[BaseException] = []

    def read(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            version, other = rng.randint(1, 260), rng.randrange(others) if others else -1
            try:
                if other >= 0 and store.get(f"o{other}", version=1).value != {"i": other}:
                    failures.append(AssertionError(f"o{other}"))
                result = store.get("k", version=version)
                if result.value != {"v": version, "tag": "v"}:
                    failures.append(AssertionError(f"{version}: {result.value}"))
            except NotFoundError:
                pass  # compacted, or not written yet
            except BaseException as exc:  # noqa: BLE001 - reported after the join
                failures.append(exc)

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    maintainer = Store(tmp_path / "store", dag="d", durable=False)
    try:
        for version in range(201, 261):
            maintainer.set("k", {"v": version, "tag": "v"})
            if version % 5 == 0:
                maintainer.compact(keep_last=150)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        maintainer.close()
    assert failures == []
    assert len(kept_paths(store)) <= kept_readers.KEPT_READERS_MAX
    with pytest.raises(NotFoundError, match="compacted"):
        store.get("k", version=100)
    assert store.get("k", version=250).value["v"] == 250


@given(
    payload=st.binary(max_size=300),
    kind=st.sampled_from([KIND_BLOB, KIND_ENTRY]),
    before=st.binary(max_size=20),
    damage=st.one_of(st.none(), st.integers(min_value=0, max_value=400)),
    cut=st.integers(min_value=0, max_value=30),
)
def test_frame_in_accepts_exactly_what_frame_at_accepts(payload, kind, before, damage, cut):
    buf = bytearray(before + encode_frame(kind, payload))
    if damage is not None and damage < len(buf):
        buf[damage] ^= 0x40
    data = bytes(buf[: len(buf) - cut]) if cut else bytes(buf)
    expected = frame_at(data, len(before))
    found = logread._frame_in(data, len(before))
    if expected is None:
        assert found is None
    else:
        assert found == (expected.kind, expected.payload, expected.end)


def test_frame_in_is_not_misled_by_a_hash_left_half_done():
    frame = encode_frame(KIND_ENTRY, b'{"version":1}')
    assert logread._frame_in(frame, 0) is not None
    logread._hashers.blake3.update(b"an interrupted call's bytes")
    assert logread._frame_in(frame, 0) == (KIND_ENTRY, b'{"version":1}', len(frame))


@pytest.fixture
def frame_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The versions a kept log reads from its file (``logread.entry_and_blob``)."""
    seen: list[int] = []
    real = logread.entry_and_blob

    def spy(fd: int, offset: int, version: int, start: int, end: int) -> Any:
        seen.append(version)
        return real(fd, offset, version, start, end)

    monkeypatch.setattr(logread, "entry_and_blob", spy)
    return seen


def test_a_version_read_again_is_served_verified_without_a_read(store, frame_reads):
    fill(store, "k", 50)
    warm(store, "k", 7)
    frame_reads.clear()
    first = store.get("k", version=7).value
    first["v"] = "changed by the caller"  # a caller's copy: never the kept one
    for _ in range(3):
        assert store.get("k", version=7).value == {"v": 7, "tag": "v"}
    assert frame_reads == []
    assert store.get("k", version=8).value == {"v": 8, "tag": "v"}
    assert frame_reads == [8]


def test_a_write_to_the_log_makes_kept_versions_read_again(store, frame_reads):
    fill(store, "k", 20)
    warm(store, "k", 5)
    store.set("k", {"v": 21, "tag": "v"})  # an append: the file's stat changes
    frame_reads.clear()
    assert store.get("k", version=5).value == {"v": 5, "tag": "v"}
    assert frame_reads == [5]  # read and verified again, then kept for the new state
    assert store.get("k", version=5).value == {"v": 5, "tag": "v"}
    assert frame_reads == [5]


def test_kept_versions_stay_within_the_byte_budget(store, monkeypatch, frame_reads):
    budget = 20 * 1024
    monkeypatch.setattr(kept_readers, "VERIFIED_MAX_BYTES", budget)
    keys = ["a", "b", "c"]  # the budget is the handle's, across its kept logs
    for key in keys:
        fill(store, key, 100, tag=key)
        warm(store, key, 1)
    reader = readers(store)
    for version in range(1, 101):
        for key in keys:
            assert store.get(key, version=version).value == {"v": version, "tag": key}
            held = sum(
                len(v or b"") + kept_readers._OVERHEAD
                for kept in reader._kept.values()
                for _, v in kept.verified[1].values()
            )
            assert held <= budget, (key, version, held)
    frame_reads.clear()
    assert store.get("c", version=100).value == {"v": 100, "tag": "c"}
    assert frame_reads == []  # the newest kept survive a reset


def test_damage_written_in_place_after_a_verified_read_is_found(store):
    """Same size, same inode: the write still changes the file's stat, so it is read again."""
    fill(store, "k", 10)
    warm(store, "k", 4)
    assert store.get("k", version=4).value == {"v": 4, "tag": "v"}  # kept verified
    path = ref_log_path(store, "k")
    flip(path, frames_of_version(path, 4)[1].end - 30)
    with pytest.raises(CorruptionError):
        store.get("k", version=4)
