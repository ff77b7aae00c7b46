"""Entries out of order: how a reader sees one, and what a repair keeps (FORMAT.md §7)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from castore.file.damage import Window, marker_time, out_of_order
from castore.file.frames import BEFORE_UNKNOWN, encode_frame, entry_before
from castore.records import Entry

_E, _B, _H = ord("E"), ord("B"), ord("H")

items = st.lists(
    st.one_of(
        st.tuples(st.just(_E), st.integers(1, 10**12)),
        st.tuples(st.just(_B), st.integers(0, 9000)),  # a blob of that many bytes
    ),
    min_size=1,
    max_size=24,  # past the 16 blobs the walk passes
)


def _payload(kind: int, n: int) -> bytes:
    if kind == _E:
        return b'{"version":%d,"op":"set","time_ns":0}' % n
    return bytes(n)


@given(items, st.data())
def test_entry_before_finds_the_entry_past_at_most_sixteen_blobs(frames, data):
    log = encode_frame(_H, b"{}")
    starts = []
    for kind, n in frames:
        starts.append(len(log))
        log += encode_frame(kind, _payload(kind, n))
    which = data.draw(st.integers(0, len(frames) - 1))
    end = starts[which]
    expected = 0
    for passed, (kind, n) in enumerate(reversed(frames[:which])):  # the brute-force answer
        if passed > 16:
            break
        if kind == _E:
            expected = n
            break
    base = data.draw(st.integers(0, len(log)))  # the bytes at hand start anywhere
    reads: list[tuple[int, int]] = []

    def read(at: int, length: int) -> bytes:
        reads.append((at, length))
        return log[at : at + length]

    at_least = data.draw(st.integers(1, 10**12))
    found = entry_before(log[base:], base, end, read, at_least)
    assert found == (expected if expected >= at_least else 0)
    assert entry_before(log[base:], base, end, read, 1) == expected
    assert all(length <= 1 << 20 for _, length in reads)
    assert len(reads) <= 2 * (2 * 16 + 4)  # two calls: two reads per blob, the entry's


def test_entry_before_calls_a_damaged_entry_unknown():
    """Damage may have held any version: only a scan of the whole log can tell."""
    log = encode_frame(_H, b"{}")
    first = encode_frame(_E, _payload(_E, 7))
    log += first[:-8] + bytes(4) + first[-4:]  # its checksum damaged
    end = len(log)
    assert entry_before(log, 0, end, lambda at, n: log[at : at + n], 1) == BEFORE_UNKNOWN
    garbled = encode_frame(_H, b"{}") + b"\xff" * 40  # not a frame at all
    read = lambda at, n: garbled[at : at + n]  # noqa: E731
    assert entry_before(garbled, 0, len(garbled), read, 1) == BEFORE_UNKNOWN
    lower = encode_frame(_H, b"{}") + first[:-8] + bytes(4) + first[-4:]
    read = lambda at, n: lower[at : at + n]  # noqa: E731
    # its version reads as lower, but damage may have changed it ("12" reads "02")
    assert entry_before(lower, 0, len(lower), read, 8) == BEFORE_UNKNOWN
    kind = bytearray(encode_frame(_H, b"{}") + first)
    kind[-len(first) + 4] ^= 0x01  # 'E' reads 'D', a kind of frame not read before
    read = lambda at, n: bytes(kind[at : at + n])  # noqa: E731
    assert entry_before(bytes(kind), 0, len(kind), read, 8) == BEFORE_UNKNOWN
    copy = encode_frame(_H, b"{}") + encode_frame(_H, b"{}")  # a header not at 0
    read = lambda at, n: copy[at : at + n]  # noqa: E731
    assert entry_before(copy, 0, len(copy), read, 1) == BEFORE_UNKNOWN
    assert entry_before(copy, 0, len(copy) // 2, read, 1) == 0  # the header


@given(st.lists(st.integers(1, 9), max_size=9))
def test_a_repair_keeps_the_longest_increasing_run_with_the_highest_versions(versions):
    dropped = out_of_order(versions)
    kept = [v for i, v in enumerate(versions) if i not in dropped]
    assert all(a < b for a, b in itertools.pairwise(kept))
    runs = [
        [versions[i] for i in chosen]
        for r in range(len(versions) + 1)
        for chosen in itertools.combinations(range(len(versions)), r)
        if all(versions[a] < versions[b] for a, b in itertools.pairwise(chosen))
    ]
    longest = max(len(run) for run in runs)
    assert len(kept) == longest
    # Of equally long runs, none has higher versions from the newest down.
    assert kept[::-1] == max(run[::-1] for run in runs if len(run) == longest)


def test_a_replayed_entry_at_the_end_is_what_goes():
    assert out_of_order([1, 2, 3, 1]) == {3}
    assert out_of_order([1, 4, 2, 3]) == {1}
    assert out_of_order([1, 2, 3]) == set()


def test_a_lost_ranges_time_is_never_taken_from_an_entry_out_of_order():
    """Noticed by the review of this session's changes: a copy of version 1 planted before
    a damaged range gave its marker version 1's time, older than version 3 before it."""
    placed = [(at, Entry(version=v, op="set", time_ns=t)) for at, v, t in _PLACED]
    window = Window(start=400, end=450, low=4, high=4)
    assert marker_time(placed, window, 0) == 300  # version 3's (observed: 100, the copy's)
    assert marker_time(placed, Window(600, 650, 6, None), 0) == 500  # after the newest
    assert marker_time([], window, 7) == 7  # no entry: the default


_PLACED = [(0, 1, 100), (100, 2, 200), (200, 3, 300), (300, 1, 100), (500, 5, 500)]
