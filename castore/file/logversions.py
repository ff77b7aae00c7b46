"""Every version of one ref log, oldest first, with its verified value (an export's read).

A proven cut raises rather than yield an earlier state: one the log's
version index records, or one the reading handle saw (its read cache held a
newer version: docs/FORMAT.md §7).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from castore.backend import Current
from castore.file import logread
from castore.file.blobs import BlobReader
from castore.file.damage import damaged_error
from castore.file.namespaces import Namespaces
from castore.file.records import KIND_BLOB, KIND_ENTRY, decode_entry
from castore.file.reflog import RefLog
from castore.keys import Ref
from castore.records import OP_DAMAGED, Entry

__all__ = ["iter_versions"]


def iter_versions(
    ref: Ref, log: RefLog, names: Namespaces, reader: BlobReader, known: Current | None
) -> Iterator[tuple[Entry, bytes | None]]:
    """Every entry of ``ref``'s ``log``, oldest first, with its verified value (None: tombstone).

    ``known``: the log's newest entry as the handle's read cache held it
    before the log was opened (None: not held).

    Raises:
        CorruptionError: a value fails verification, or versions were cut off the
            log (its version index proves it, or ``known`` is newer).
    """
    try:
        fd = log.open()
    except FileNotFoundError:
        names.not_lost(ref, log.path)
        names.not_below(ref, log.path, known, None, 0)
        return
    try:
        tail = log.settled_tail(fd)  # a proven cut raises: never an earlier state
        if tail.entry is None:
            names.not_lost(ref, log.path, (os.fstat(fd).st_ino, tail.size))
        names.not_below(ref, log.path, known, tail.entry, tail.valid_end, fd)
        scanned = logread.scan(fd)[1]
        if scanned.damage:
            raise damaged_error(log.path, *scanned.damage[0], str(ref))
        blobs = {f.start: f.payload for f in scanned.frames if f.kind == KIND_BLOB}
        for frame in scanned.frames:
            if frame.kind != KIND_ENTRY:
                continue
            entry = decode_entry(frame.payload)
            if entry.op == OP_DAMAGED:
                yield entry, None  # versions a repair recorded as lost: no value
                continue
            own = blobs.get(entry.blob.offset) if entry.blob and not entry.blob.log else None
            yield entry, reader.value_of(ref, entry, own, fd)
    finally:
        os.close(fd)
