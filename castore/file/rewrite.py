"""The pieces of an atomic log rewrite (compaction, gc, repair, an import's overwrite).

:func:`castore.file.logrewrite.rewrite` holds the log's lock, lays the
new log out (:func:`relaid`), makes the new blob locations findable in the
index, then writes a temporary file and renames it over the log
(:func:`replace_with`, docs/FORMAT.md §8).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import msgspec

from castore.file import fileio, namesync
from castore.file.frames import Frame, LogBytes, encode_frame
from castore.file.records import (
    EARLIER_RUNS,
    KIND_BLOB,
    KIND_COMPACTED,
    KIND_ENTRY,
    KIND_HEADER,
    Compaction,
    decode_compaction,
    decode_entry,
    encode_record,
)
from castore.file.tree import Tree
from castore.records import BlobLoc, merged_ranges

__all__ = ["Transform", "next_compaction", "relaid", "removed_log", "replace_with", "utc_stamp"]

Transform = Callable[[LogBytes], "list[tuple[int, bytes]] | None"]
"""Given a log's bytes sorted into frames and damage, the frames of its replacement."""


def utc_stamp() -> str:
    """A UTC time for quarantine folder names, to the microsecond."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def relaid(frames: list[tuple[int, bytes]]) -> bytes:
    """Lay out a rewritten log: header and compaction frames, blob frames, then entries.

    Blob frames move, so every entry that points at a blob frame of this log
    is re-encoded with the frame's new offset: location hints stay exact and
    nothing depends on the (unsynced) blob index to find them. The newest
    entry stays last, where readers look for it.
    """
    first = [encode_frame(k, p) for k, p in frames if k in (KIND_HEADER, KIND_COMPACTED)]
    offset = sum(map(len, first))
    blobs: list[bytes] = []
    where: dict[str, BlobLoc] = {}
    for kind, payload in frames:
        if kind == KIND_BLOB:
            raw = encode_frame(kind, payload)
            where.setdefault(payload[:32].hex(), BlobLoc("", offset, len(raw)))
            blobs.append(raw)
            offset += len(raw)
    rest = []
    for kind, payload in frames:
        if kind == KIND_ENTRY:
            entry = decode_entry(payload)
            if entry.blob is not None and not entry.blob.log and entry.hash in where:
                moved = msgspec.structs.replace(entry, blob=where[entry.hash])
                rest.append(encode_frame(kind, encode_record(moved)))
                continue
        if kind not in (KIND_HEADER, KIND_COMPACTED, KIND_BLOB):
            rest.append(encode_frame(kind, payload))
    return b"".join(first + blobs + rest)


def replace_with(fs: Tree, path: str, data: bytes, *, data_mark: bool, sync: bool = True) -> int:
    """Write ``<path>.<pid>.<n>.tmp`` (fdatasync), rename it over ``path``; no leftover on failure.

    Returns a descriptor of the new file (the caller closes it). The file is marked
    (``castore.file.namesync``: its name, and its data too with ``data_mark``, carried
    over from the file it replaces), and its data is made durable even without
    ``durable``: a rename may outlive a power loss that its file's data does not, and
    the log it replaces held versions that were durable. The caller holds the log's
    lock, fsyncs the directory afterwards and then clears the name's mark. Without
    ``sync`` (a ``durable=False`` import's history in place of an empty log, which held
    nothing), the data is not synced: the file keeps its marks instead.
    """
    tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, unsynced=True)
    try:
        if data_mark:
            namesync.mark_data(fd, os.fstat(fd).st_mode)
        fileio.append(fd, data, durable=sync)
        fileio.failpoint("rewrite-before-rename")
        fs.replace(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            fs.unlink(tmp)
        raise
    return fd


def next_compaction(frames: list[Frame], dropped: list[tuple[int, int]], policy: str) -> Compaction:
    """The ``C`` frame of a compaction by ``policy`` of the log of ``frames``, dropping ``dropped``.

    It names every version dropped, by this compaction and by those the log's own
    ``C`` frames name, and remembers each of those by its policy and time (FORMAT.md
    §3), so that a reader names the compaction that dropped a version.
    """
    done = [decode_compaction(f.payload) for f in frames if f.kind == KIND_COMPACTED]
    earlier = [run for old in done for run in (*old.earlier, old.run())]
    every = [r for old in done for r in old.versions] + dropped
    return Compaction(
        versions=merged_ranges(every),
        policy=policy,
        time_ns=time.time_ns(),
        earlier=earlier[-EARLIER_RUNS:],
    )


def removed_log(
    frames: list[Frame], versions: list[tuple[int, int]], policy: str
) -> list[tuple[int, bytes]]:
    """The frames compaction leaves of a removed key's log (FORMAT.md §6, "Compaction").

    Its header, a ``C`` frame naming ``versions`` and those the log's own
    ``C`` frames name (a second record of the key's last version, besides
    ``GRAVES``), and its blob frames: another log may point at one, so the
    log stays until gc removes it.
    """
    marker = next_compaction(frames, versions, policy)
    head = [(f.kind, f.payload) for f in frames if f.kind == KIND_HEADER]
    blobs = [(f.kind, f.payload) for f in frames if f.kind == KIND_BLOB]
    return [*head, (KIND_COMPACTED, encode_record(marker)), *blobs]
