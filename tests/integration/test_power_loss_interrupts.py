"""Power losses after a write interrupted between its append and its fdatasync."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

from castore.file import fileio
from castore.file.frames import scan_frames
from castore.file.records import KIND_ENTRY, decode_entry
from tests.helpers import ref_log_path
from tests.integration.powerloss import Expect, Handles, newest
from tests.integration.test_power_loss import BIG, SMALL, Step, call, overwrite, put, scripted


def interrupted_put(key: str, value: object, dag: str = "d", *, killed: bool = False) -> Step:
    """A durable ``set`` whose ``KeyboardInterrupt`` came as its last ``write(2)`` returned.

    Its frames may stay in the log (FORMAT.md §6 step 7): acknowledged as a ``durable=False``
    write's (they may be lost or kept), whatever the handle. ``killed``: a SIGKILL there
    instead, which leaves the frames whole and unsynced (no ``fdatasync`` on the way out).
    """

    def step(handles: Handles, expect: Expect) -> None:
        real = fileio.append
        monkeypatch = pytest.MonkeyPatch()
        if killed:
            monkeypatch.setattr(fileio, "_whole", lambda fd, end, durable: True)

        def append(fd: int, data: bytes, *, durable: bool) -> None:
            if sys._getframe(1).f_code is not fileio.commit.__code__:
                return real(fd, data, durable=durable)  # KEYS, the blob index
            real(fd, data, durable=False)
            raise KeyboardInterrupt

        fileio.append = append
        try:
            with pytest.raises(KeyboardInterrupt):
                handles[dag, True].set(key, value)
        finally:
            fileio.append = real
            monkeypatch.undo()
        version, _ = newest(handles[dag, True], key)  # it may have written: as durable=False
        expect.ack((dag, key), version, value, False)  # did (may be lost or kept)

    return step


def test_an_index_rebuilt_over_an_interrupted_write_points_only_at_durable_values(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the interrupted set's frames stood unsynced in k0's unmarked log; gc's rebuild
    indexed its blob, k1's durable set pointed at it, and a power loss broke k1's v1."""
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", SMALL[0], True),
            interrupted_put("k0", BIG[0]),  # an unmarked log: its data was synced
            call(lambda h: h["d", True].gc(grace_seconds=0)),  # rebuilds the blob index
            put("k1", BIG[0], True),  # deduplicated onto k0's frames by the index
        ],
    )
    assert not problems, problems


def test_an_index_rebuilt_over_a_killed_write_points_only_at_durable_values(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: a durable set killed between its write and its fdatasync left unsynced frames in
    an unmarked log (older than the interrupt's case: a kill runs no cleanup); gc's rebuild
    indexed their blob, k1's durable set pointed at it, and a power loss broke k1's v1.
    The rebuild now makes every log it indexes durable (found by the review of the
    interrupt fixes, thirty-eighth session)."""
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", SMALL[0], True),
            interrupted_put("k0", BIG[0], killed=True),  # whole, unsynced, unmarked
            call(lambda h: h["d", True].gc(grace_seconds=0)),  # rebuilds the blob index
            put("k1", BIG[0], True),  # deduplicated onto k0's frames by the index
        ],
    )
    assert not problems, problems


def _garble_index(handles: Handles) -> None:
    """Append bytes that are no frame to every blob index shard: ``check`` finds it stale."""
    log = ref_log_path(handles["d", True], "k0")
    folder = os.path.join(log[: log.index(os.sep + "refs" + os.sep)], "index")
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "ab") as f:
            f.write(b"garbage")


_REPAIR: list[Step] = [  # check --repair rebuilds the index (as gc's, every log made durable)
    call(_garble_index),
    call(lambda h: h["d", True].check(repair=True)),
]


def _k1_points_into_k0(handles: Handles, expect: Expect) -> None:
    """k1's newest entry names k0's log: the sequence tests what it means to."""
    data = pathlib.Path(ref_log_path(handles["d", True], "k1")).read_bytes()
    entry = [decode_entry(f.payload) for f in scan_frames(data) if f.kind == KIND_ENTRY][-1]
    k0 = ref_log_path(handles["d", True], "k0")
    assert entry.blob is not None
    assert k0.endswith(os.sep + entry.blob.log), entry


_POINTED_INTO = {  # what makes k1's durable set of BIG[0] point at k0's log
    "check --repair": _REPAIR,
    "compact": [call(lambda h: h["d", True].compact(keep_last=1))],  # relaid, then indexed
    "import --overwrite": [overwrite("k0", SMALL[1], True)],  # blobs carried, then indexed
}


@pytest.mark.parametrize("how", sorted(_POINTED_INTO))
def test_a_value_a_killed_write_left_is_durable_before_another_key_points_at_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The other paths (besides gc's rebuild) that lead a durable write into the log of a
    killed one: check --repair's index rebuild (failed before gc's rebuild made every log
    it indexes durable), and a rewrite of that log (its new file is synced before its
    blobs are indexed at their new places)."""
    steps = [put("k0", SMALL[0], True), put("k0", SMALL[2], True), put("k2", BIG[1], True)]
    steps.append(interrupted_put("k0", BIG[0], killed=True))  # whole, unsynced, unmarked
    steps += [*_POINTED_INTO[how], put("k1", BIG[0], True), _k1_points_into_k0]
    problems = scripted(tmp_path, monkeypatch, steps)
    assert not problems, problems
