"""``GRAVES`` read with each twinned record checked once sorts its bytes as ``classify`` does.

A command that creates a key reads every grave of its namespace; the
reader checks the checksum of the first of two identical frames only
(``castore.file.frames.classify_twinned``). The oracle is :func:`classify`, the
reader of every other file: on any bytes (a file as written, then flipped,
cut, zeroed, with bytes put in or a record written once), both must give
the same frames, damage, torn tail and size.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from castore.file.frames import classify, classify_twinned, encode_frame
from castore.file.graves import twinned
from castore.file.records import KIND_GRAVE, Grave, encode_record

_KEYS = st.text(min_size=1, max_size=12)
_RECORDS = st.lists(
    st.tuples(st.one_of(st.none(), _KEYS), st.integers(min_value=1, max_value=2**40)),
    max_size=12,
)


def _file(
    records: list[tuple[str | None, int]], single: int | None, both: tuple[int, int, int] | None
) -> bytes:
    payloads = [encode_record(Grave(key=k, version=v)) for k, v in records]
    frames = [encode_frame(KIND_GRAVE, p) for p in payloads]
    if both is not None and frames:  # one record damaged alike in both copies
        which, at, xor = both
        frame = frames[which % len(frames)]
        at %= len(frame)
        frames[which % len(frames)] = frame[:at] + bytes([frame[at] ^ xor]) + frame[at + 1 :]
    data = b"".join(f + f for f in frames)
    assert both is not None or data == twinned(payloads)  # as castore writes them
    if single is not None and payloads:  # one record written once (not as castore writes)
        cut = len(twinned(payloads[: single % len(payloads)]))
        data = data[:cut] + encode_frame(KIND_GRAVE, payloads[0]) + data[cut:]
    return data


@st.composite
def _damaged(draw: st.DrawFn) -> tuple[bytes, int]:
    both = st.tuples(st.integers(0, 20), st.integers(0, 200), st.integers(1, 255))
    data = _file(
        draw(_RECORDS),
        draw(st.one_of(st.none(), st.integers(0, 100))),
        draw(st.one_of(st.none(), both)),
    )
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "cut", "zero", "insert", "copy"]))
        if how == "flip":
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif how == "cut":
            data = data[:at]
        elif how == "zero":
            end = min(len(data), at + draw(st.integers(1, 200)))
            data = data[:at] + bytes(end - at) + data[end:]
        elif how == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=30)) + data[at:]
        else:  # a range written again further on (a twin of the wrong size)
            end = min(len(data), at + draw(st.integers(1, 120)))
            data = data + data[at:end]
    return data, draw(st.sampled_from([0, 64, 4096]))


@given(_damaged())
def test_twins_checked_once_sort_a_graves_file_as_classify_does(case: tuple[bytes, int]) -> None:
    data, base = case
    assert classify_twinned(data, base) == classify(data, base)
