"""The bytes one write appends: header, blob and entry frames (docs/FORMAT.md §3, §6).

Pure except for the lookup it is given: :func:`encode_versions` turns the
:class:`~castore.backend.NewVersion` list a decision returned into frames
laid out after the log's current end, reusing a blob frame that already
holds the value where one is known.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import NamedTuple

from castore.backend import NewVersion, changed_since, next_entry, overwrite_refusal
from castore.file import logread
from castore.file.frames import FORMAT_VERSION, LogBytes, encode_frame
from castore.file.records import (
    KIND_BLOB,
    KIND_ENTRY,
    KIND_HEADER,
    Header,
    decode_entry,
    encode_blob,
    encode_record,
)
from castore.keys import Ref
from castore.records import BlobLoc, Entry

__all__ = ["DEDUP_MIN_BYTES", "Encoded", "carried", "encode_versions", "refuse_lower"]

DEDUP_MIN_BYTES = 256  # smaller values are not deduplicated across logs (FORMAT.md §5)

FindBlob = Callable[[NewVersion], "BlobLoc | None"]
"""A verified blob frame already holding a new version's value, if any."""


class Encoded(NamedTuple):
    """The frames of one write, the entries they hold and where those start."""

    data: bytes
    entries: list[Entry]
    starts: list[int]
    new_blobs: list[tuple[str, BlobLoc]]  # digest hex -> frame, for values worth indexing


def header_frame(ref: Ref) -> bytes:
    """The ``H`` frame that starts ``ref``'s log."""
    header = Header(format=FORMAT_VERSION, scope=ref.scope, namespace=ref.namespace, key=ref.key)
    return encode_frame(KIND_HEADER, encode_record(header))


_HEADERS = functools.lru_cache(maxsize=4096)(header_frame)  # each write and log open asks


def refuse_other(fd: int, ref: Ref, path: str) -> None:
    """Refuse the log on ``fd`` if its header names another ref (:func:`logread.refuse_other`).

    The common case is one short ``pread`` equal to the header castore writes
    for ``ref``; only a log that does not start so (another format version,
    damage, another key's) has its header decoded.

    Raises:
        CorruptionError: naming the ref the header names.
    """
    expected = _HEADERS(ref)
    if os.pread(fd, len(expected), 0) != expected:
        logread.refuse_other(fd, ref, path)


def carried(ref: Ref, old: LogBytes) -> tuple[bytes, list[tuple[bytes, BlobLoc]]]:
    """A replacement log's start: a header, then every blob frame of the old log.

    Other logs may point at those blobs. Returns the bytes and each blob's
    digest with its new location in this log.
    """
    parts = [header_frame(ref)]
    offset = len(parts[0])
    moved: list[tuple[bytes, BlobLoc]] = []
    for frame in old.frames:
        if frame.kind == KIND_BLOB:
            raw = encode_frame(KIND_BLOB, frame.payload)
            moved.append((frame.payload[:32], BlobLoc("", offset, len(raw))))
            parts.append(raw)
            offset += len(raw)
    return b"".join(parts), moved


def refuse_lower(
    ref: Ref, old: LogBytes, new_versions: list[NewVersion], seen: Entry | None
) -> None:
    """Refuse an overwrite that gives versions again, or finds the history changed.

    :func:`overwrite_refusal`; :func:`changed_since` (``seen``: what the import read).

    Raises:
        ConflictError: the replacement's newest version is below the old one's, or
            is the old one's with another value; or the newest entry is not ``seen``.
    """
    entries = [decode_entry(f.payload) for f in old.frames if f.kind == KIND_ENTRY]
    newest = max(entries, key=lambda e: e.version, default=None)
    why = changed_since(ref, newest, seen) or overwrite_refusal(ref, newest, new_versions)
    if why is not None:
        raise why


def encode_versions(
    ref: Ref,
    size: int,
    previous: Entry | None,
    new_versions: list[NewVersion],
    find: FindBlob,
    *,
    now: int,
    base: int = 0,
    known: dict[str, BlobLoc] | None = None,
) -> Encoded:
    """The frames that append ``new_versions`` to a log of ``size`` bytes (0: a new log).

    Args:
        ref: the log's ref (for its header and errors).
        size: where the frames will start.
        previous: the log's newest entry.
        new_versions: what the decision returned.
        find: an existing blob frame holding a value, tried after ``known``.
        now: the time of this write (nanoseconds).
        base: the version a key without entries continues after.
        known: blob frames already in the bytes before ``size`` (an overwrite).

    Raises:
        ConflictError: an explicit version would repeat a version.
    """
    parts: list[bytes] = [header_frame(ref)] if size == 0 else []
    offset = size + sum(map(len, parts))
    out = Encoded(b"", [], [], [])
    written: dict[str, BlobLoc] = dict(known or {})
    for new in new_versions:
        blob = None
        if new.normalized is not None:
            blob = written.get(new.digest_hex) or find(new)
            if blob is None:
                payload = encode_blob(bytes.fromhex(new.digest_hex), new.normalized)
                parts.append(encode_frame(KIND_BLOB, payload))
                blob = BlobLoc("", offset, len(parts[-1]))
                offset += len(parts[-1])
                written[new.digest_hex] = blob
                if len(new.normalized) >= DEDUP_MIN_BYTES:
                    out.new_blobs.append((new.digest_hex, blob))
        entry = next_entry(ref, new, previous, base, now, blob)
        parts.append(encode_frame(KIND_ENTRY, encode_record(entry)))
        out.starts.append(offset)
        offset += len(parts[-1])
        out.entries.append(entry)
        previous = entry
    return out._replace(data=b"".join(parts))
