"""Store statistics: keys, versions, blobs and bytes per scope (docs/CLI.md, stats)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import msgspec

from castore.file.damage import intact_frames
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


def stats(backend: FileBackend) -> StoreStats:
    """Keys, versions, blobs, stored / logical / reclaimable bytes per scope (reads everything).

    Raises:
        CorruptionError: a log holds damaged bytes (:func:`_frames`).
    """
    per: dict[str, ScopeStats] = {}
    live: set[bytes] = set()
    blob_sizes: list[tuple[str, bytes, int]] = []
    for path in backend.iter_logs():
        scope = os.path.basename(os.path.dirname(os.path.dirname(path)))
        st = per.setdefault(scope, ScopeStats())
        data = backend.fs.read_file(path)
        frames = _frames(path, data)
        st.stored_bytes += len(data)
        entries = [decode_entry(f.payload) for f in frames if f.kind == KIND_ENTRY]
        st.versions += len(entries)
        st.logical_bytes += sum(e.size for e in entries)
        if entries:
            st.keys += entries[-1].live
            st.deleted_keys += not entries[-1].live
        live.update(bytes.fromhex(e.hash) for e in entries if e.hash)
        seen: set[bytes] = set()
        for f in frames:
            if f.kind == KIND_BLOB:
                st.blobs += 1
                if f.payload[:32] in seen:  # a second copy in one log: gc frees it (_Sweep)
                    st.reclaimable_bytes += f.end - f.start
                    continue
                seen.add(f.payload[:32])
                blob_sizes.append((scope, f.payload[:32], f.end - f.start))
        st.reclaimable_bytes += sum(end - start for start, end in _gaps(len(data), frames))
    for scope, digest, size in blob_sizes:
        if digest not in live:
            per[scope].reclaimable_bytes += size
    total = ScopeStats()
    for st in per.values():
        for field in msgspec.structs.fields(ScopeStats):
            setattr(total, field.name, getattr(total, field.name) + getattr(st, field.name))
    return StoreStats(scopes=dict(sorted(per.items())), total=total)
