"""Store statistics: keys, versions, blobs and bytes per scope (docs/CLI.md, stats)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from castore.file.chained import UnchainedError, chained_frames
from castore.file.damage import intact_frames
from castore.file.fileio import read_at
from castore.file.frames import Frame, classify
from castore.file.records import KIND_BLOB, KIND_ENTRY, decode_entry
from castore.reports import ScopeStats, StoreStats

if TYPE_CHECKING:
    from castore.file.backend import FileBackend

__all__ = ["stats"]


def _gaps(size: int, frames: list[Frame]) -> list[tuple[int, int]]:
    gaps, pos = [], 0
    for f in frames:
        if f.start > pos:
            gaps.append((pos, f.start))
        pos = f.end
    if pos < size:
        gaps.append((pos, size))
    return gaps


def _frames(path: str, data: bytes) -> list[Frame]:
    """A log's intact frames (a torn tail is left out: reclaimable).

    Raises:
        CorruptionError: damaged bytes (FORMAT.md §7), as gc: they may hide the key's
            newest versions and the blobs they reference, so no count would be right.
    """
    return intact_frames(classify(data), path, "stats cannot count the versions they held")


class _Counts:
    """What the logs read so far hold: per scope, the live digests, blobs that may be garbage.

    A blob whose digest is live when its log has been read (an entry names it:
    mostly its own log's) stays live, so only the others are kept for the end.
    """

    def __init__(self) -> None:
        self.per: dict[str, ScopeStats] = {}
        self.live: set[bytes] = set()
        self.blob_sizes: list[tuple[str, bytes, int]] = []

    def add_log(self, scope: str, size: int, frames: Iterable[Frame]) -> ScopeStats:
        """Count one log's frames (in file order): its stats, its blobs and live digests noted.

        The frames' gaps (reclaimable bytes) are the caller's: none when they chain.
        """
        st = ScopeStats(stored_bytes=size)
        seen: dict[bytes, int] = {}  # this log's blobs: their sizes
        last = None
        for f in frames:
            if f.kind == KIND_ENTRY:
                last = entry = decode_entry(f.payload)
                st.versions += 1
                st.logical_bytes += entry.size
                if entry.hash:
                    self.live.add(bytes.fromhex(entry.hash))
            elif f.kind == KIND_BLOB:
                st.blobs += 1
                if f.payload[:32] in seen:  # a second copy in one log: gc frees it (_Sweep)
                    st.reclaimable_bytes += f.end - f.start
                    continue
                seen[f.payload[:32]] = f.end - f.start
        self.blob_sizes.extend((scope, d, n) for d, n in seen.items() if d not in self.live)
        if last is not None:
            st.keys += last.live
            st.deleted_keys += not last.live
        return st

    def read_log(self, backend: FileBackend, path: str) -> None:
        """Count one log: read in chunks while its frames chain to its end, else whole.

        Raises:
            CorruptionError: damaged bytes (:func:`_frames`).
        """
        scope = os.path.basename(os.path.dirname(os.path.dirname(path)))
        st = self.per.setdefault(scope, ScopeStats())
        fd = backend.fs.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            try:  # the digests a chain that stops noted live are in the whole log's too
                counted = self.add_log(scope, size, chained_frames(fd, size))
            except UnchainedError:
                data = read_at(fd, 0, size)
                frames = _frames(path, data)
                counted = self.add_log(scope, len(data), frames)
                counted.reclaimable_bytes += sum(e - s for s, e in _gaps(len(data), frames))
        finally:
            os.close(fd)
        for name in ScopeStats.__struct_fields__:  # not structs.fields: it reads annotations
            setattr(st, name, getattr(st, name) + getattr(counted, name))


def stats(backend: FileBackend) -> StoreStats:
    """Keys, versions, blobs, stored / logical / reclaimable bytes per scope (reads everything).

    A log is read in bounded chunks (:mod:`castore.file.chained`) unless its
    frames do not chain to its end (a torn tail, damage): then whole.

    Raises:
        CorruptionError: a log holds damaged bytes (:func:`_frames`).
    """
    counts = _Counts()
    for path in backend.iter_logs():
        counts.read_log(backend, path)
    per = counts.per
    for scope, digest, size in counts.blob_sizes:
        if digest not in counts.live:
            per[scope].reclaimable_bytes += size
    total = ScopeStats()
    for st in per.values():
        for field in msgspec.structs.fields(ScopeStats):
            setattr(total, field.name, getattr(total, field.name) + getattr(st, field.name))
    return StoreStats(scopes=dict(sorted(per.items())), total=total)
