"""A value's intact copy anywhere in the store, found by reading every log (for ``check``).

A value whose entry's location hint and blob index records all fail may
still be intact in some log: the index is derived data, and a shard lost,
cut or crowded with records of a killed rewrite no longer leads to it.
Before ``check --repair`` records such a value as lost, it looks here; a
copy found means the index must be rebuilt, never that the value is gone.
The first search reads every log once and remembers where each digest's
blob frames are; each copy is verified (checksum, sha256) when asked for.
"""

from __future__ import annotations

import contextlib
import os

from castore.errors import CastoreError
from castore.file.frames import scan_frames
from castore.file.records import KIND_BLOB, decode_blob
from castore.file.tree import Tree

__all__ = ["BlobSearch"]


class BlobSearch:
    """Where each value's blob frames are, over every log of a store (built on first use)."""

    def __init__(self, fs: Tree, refs: str) -> None:
        self.fs = fs
        self.refs = refs
        self._frames: dict[str, list[tuple[str, bytes]]] | None = None

    def _logs(self) -> list[str]:
        fs, found = self.fs, []
        for scope in sorted(fs.listdir(self.refs)) if fs.isdir(self.refs) else []:
            scope_dir = os.path.join(self.refs, scope)
            for ns in sorted(fs.listdir(scope_dir)) if fs.isdir(scope_dir) else []:
                nsdir = os.path.join(scope_dir, ns)
                names = sorted(fs.listdir(nsdir)) if fs.isdir(nsdir) else []
                found += [os.path.join(nsdir, n) for n in names if n.endswith(".log")]
        return found

    def _index(self) -> dict[str, list[tuple[str, bytes]]]:
        if self._frames is None:
            self._frames = {}
            for path in self._logs():
                with contextlib.suppress(OSError, CastoreError):  # gone, or not a file to read
                    for frame in scan_frames(self.fs.read_file(path)):
                        if frame.kind == KIND_BLOB and len(frame.payload) > 32:
                            digest = frame.payload[:32].hex()
                            self._frames.setdefault(digest, []).append((path, frame.payload))
        return self._frames

    def holder(self, hexdigest: str) -> str | None:
        """A log holding an intact copy of the value ``hexdigest`` names, or None."""
        for path, payload in self._index().get(hexdigest, ()):
            with contextlib.suppress(CastoreError):
                decode_blob(payload, hexdigest)
                return path
        return None
