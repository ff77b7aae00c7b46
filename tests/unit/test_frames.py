import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore.file.frames import (
    FRAME_OVERHEAD,
    encode_frame,
    entry_before,
    frame_at,
    last_frame,
    scan_frames,
)

payloads = st.binary(max_size=300)
kinds = st.sampled_from([ord("H"), ord("B"), ord("E"), ord("I")])


@given(st.lists(st.tuples(kinds, payloads), min_size=1, max_size=8))
def test_scan_and_last_frame_round_trip(items):
    buf = b"".join(encode_frame(k, p) for k, p in items)
    frames = list(scan_frames(buf))
    assert [(f.kind, f.payload) for f in frames] == items
    assert frames[-1].end == len(buf)
    last = last_frame(buf)
    assert last is not None
    assert (last.kind, last.payload) == items[-1]


@given(kinds, payloads, st.data())
def test_every_truncation_is_not_a_frame(kind, payload, data):
    frame = encode_frame(kind, payload)
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert last_frame(frame[:cut]) is None
    assert frame_at(frame[:cut], 0) is None


@given(kinds, payloads, st.data())
def test_any_bit_flip_is_detected(kind, payload, data):
    frame = bytearray(encode_frame(kind, payload))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    assert frame_at(bytes(frame), 0) is None


def test_scan_resynchronises_after_damage():
    good = [encode_frame(ord("E"), b"one"), encode_frame(ord("E"), b"two")]
    damaged = bytearray(good[0])
    damaged[7] ^= 0xFF
    buf = bytes(damaged) + b"\x00garbage" + good[1] + encode_frame(ord("E"), b"three")[:-3]
    assert [f.payload for f in scan_frames(buf)] == [b"two"]


def test_overhead_constant_matches_encoding():
    assert len(encode_frame(ord("E"), b"abc")) == 3 + FRAME_OVERHEAD


@pytest.mark.parametrize("length", [2**32 - 1, 2**26 + 1])
def test_absurd_length_fields_are_rejected(length):
    buf = length.to_bytes(4, "little") + b"E" + b"x" * 40 + length.to_bytes(4, "little")
    assert last_frame(buf) is None
    assert frame_at(buf, 0) is None


def _entry(version: int) -> bytes:
    return encode_frame(ord("E"), b'{"version":%d,"op":"set","time_ns":1}' % version)


@pytest.mark.parametrize("blobs", [0, 1, 5, 16])
def test_an_older_entry_behind_blob_frames_is_found(blobs):
    """An older entry copied after the newest, behind up to 16 blob frames: out of order."""
    log = _entry(3) + encode_frame(ord("B"), b"\0" * 40) * blobs + _entry(1)
    end = len(log) - len(_entry(1))
    assert entry_before(log, 0, end, lambda at, n: log[at : at + n], 1) == 3


def test_a_run_of_kept_blobs_before_the_newest_entry_is_not_walked_whole():
    """A compaction leaves thousands of blob frames before an entry: the walk stays bounded.

    A review measured 40,049 reads for one get after the bound was lifted.
    """
    blob = encode_frame(ord("B"), b"\1" * 200)
    log = encode_frame(ord("H"), b"{}") + blob * 5000 + _entry(7)
    reads: list[int] = []

    def read(at: int, n: int) -> bytes:
        reads.append(n)
        return log[at : at + n]

    end = len(log) - len(_entry(7))
    tail = max(0, len(log) - 4096)
    assert entry_before(log[tail:], tail, end, read, 7) == 0
    assert len(reads) <= 2 * 16 + 2
