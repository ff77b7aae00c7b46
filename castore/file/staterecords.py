"""The records of a namespace's ``STATE`` file (docs/FORMAT.md §5), and this boot's id.

Frames (:mod:`castore.file.frames`) of four kinds: ``T`` (the boot and a
nonce naming the file), ``L`` (a snapshot: rows sorted by key), ``P`` (a key
whose log is about to change) and ``S`` (a key's newest entry). Pure but for
reading the boot id once per process.
"""

from __future__ import annotations

import os
from typing import Final

import msgspec

from castore.file.frames import encode_frame, scan_frames
from castore.file.stateappend import KIND_PENDING, LENGTH, STATE_NAME
from castore.keys import file_id
from castore.records import OP_DAMAGED, Entry
from castore.results import ListEntry

__all__ = [
    "ENCODE",
    "EPOCH",
    "KIND_EPOCH",
    "KIND_PENDING",
    "KIND_SETTLED",
    "KIND_SNAPSHOT",
    "ROWS",
    "SETTLED",
    "STATE_NAME",
    "Known",
    "Row",
    "Settled",
    "boot_id",
    "epoch_frame",
    "in_folder",
    "names_no_key",
    "rows_of",
    "settled_of",
    "whole_file",
]

KIND_EPOCH: Final = ord("T")
KIND_SNAPSHOT: Final = ord("L")
KIND_SETTLED: Final = ord("S")
_BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"


class Row(msgspec.Struct, array_like=True, frozen=True):
    """A key's newest version as ``STATE`` records it; ``hash`` is "" for a delete."""

    key: str
    version: int
    hash: str = ""
    created_at: str = ""
    updated_at: str = ""


class Settled(msgspec.Struct, array_like=True, frozen=True):
    """An ``S`` record: a key's newest entry (times in Unix ns; ``hash`` "" for a delete)."""

    key: str
    version: int
    hash: str = ""
    created_ns: int = 0
    time_ns: int = 0


SETTLED: Final = msgspec.msgpack.Decoder(Settled)
ROWS: Final = msgspec.msgpack.Decoder(list[Row])
# boot id, nonce, then (files written since the twentieth session) scope and namespace
EPOCH: Final = msgspec.msgpack.Decoder(tuple[str, ...])
ENCODE: Final = msgspec.msgpack.Encoder().encode

_boot: list[str] = []


def boot_id() -> str:
    """This machine's boot id ("" where the system has none: then nothing is trusted)."""
    if not _boot:
        try:
            with open(_BOOT_ID_PATH, encoding="ascii") as f:
                _boot.append(f.read().strip())
        except (OSError, ValueError):
            _boot.append("")
    return _boot[0]


def settled_of(key: str, entry: Entry | None) -> Settled | None:
    """The ``S`` record of ``key`` whose newest entry is ``entry`` (None: nothing to say)."""
    if entry is None or entry.op == OP_DAMAGED:
        return None  # nothing to say, or lost versions: the log says why
    if not entry.live:
        return Settled(key, entry.version)
    return Settled(key, entry.version, entry.hash, entry.created_ns, entry.time_ns)


def names_no_key(data: bytes) -> bool:
    """True if ``STATE``'s bytes are whole and name no key: ``T`` frames, empty snapshots.

    Whatever the boot: a ``STATE`` written before a reboot is not trusted for
    its versions, yet a row of it still says a key was written.
    """
    if len(data) < LENGTH.size or LENGTH.unpack_from(data)[0] != len(data):
        return False  # records cut off (the length written at each append says so)
    frames = list(scan_frames(data[LENGTH.size :], LENGTH.size))
    ends = [LENGTH.size, *(f.end for f in frames)]
    if ends[-1] != len(data) or any(
        f.start != end for f, end in zip(frames, ends[:-1], strict=True)
    ):
        return False  # damaged: it may have named keys
    try:
        return all(
            f.kind == KIND_EPOCH or (f.kind == KIND_SNAPSHOT and not ROWS.decode(f.payload))
            for f in frames
        )
    except msgspec.DecodeError:
        return False


Known = dict[str, ListEntry | None]
"""Key -> its list entry, or None for a key whose newest version is a delete."""


def in_folder(path: str, _boot: str, _nonce: str, scope: str, namespace: str) -> bool:
    """Whether the scope and namespace a ``T`` frame names are those of the ``STATE`` at ``path``.

    Another namespace's ``STATE`` copied in would answer for keys not its own.
    """
    folder, ns_id = os.path.split(os.path.dirname(path))
    return os.path.basename(folder) == scope and file_id(namespace) == ns_id


def epoch_frame(me: str, scope: str, namespace: str) -> bytes:
    """The first frame of a new file: this boot's id, a nonce naming the file, its names."""
    return encode_frame(KIND_EPOCH, ENCODE((me, os.urandom(8).hex(), scope, namespace)))


def rows_of(known: Known, versions: dict[str, int]) -> list[Row]:
    """A snapshot's rows, sorted by key: each known key's entry, or its delete's version."""
    rows = [
        Row(k, e.version, e.hash, e.created_at, e.updated_at)
        if e is not None
        else Row(k, versions.get(k, 0))  # a delete's version: evidence (recorded)
        for k, e in known.items()
    ]
    rows.sort(key=lambda r: r.key.encode("utf-8"))
    return rows


def whole_file(body: bytes) -> bytes:
    """A new ``STATE``'s bytes: its length, then ``body``."""
    return LENGTH.pack(LENGTH.size + len(body)) + body
