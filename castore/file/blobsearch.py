"""A value's intact copy anywhere in the store, found by reading every log (for ``check``).

A value whose entry's location hint and blob index records all fail may
still be intact in some log: the index is derived data, and a shard lost,
cut or crowded with records of a killed rewrite no longer leads to it.
Before ``check --repair`` records such a value as lost, it looks here; a
copy found means the index must be rebuilt, never that the value is gone.
The first search reads every log once (one at a time) and remembers where
each digest's blob frames are (a small record each, never a value); a copy
is read again and verified (checksum, sha256) when asked for.
"""

from __future__ import annotations

import contextlib
import os

from castore.errors import CastoreError
from castore.file import fileio
from castore.file.frames import frame_at, scan_frames
from castore.file.records import KIND_BLOB, decode_blob
from castore.file.tree import Tree
from castore.keys import is_log_name

__all__ = ["BlobSearch"]


class BlobSearch:
    """Where each value's blob frames are, over every log of a store (built on first use)."""

    def __init__(self, fs: Tree, refs: str) -> None:
        self.fs = fs
        self.refs = refs
        self._paths: list[str] = []
        # digest -> (index in _paths, frame start, frame end) of each copy: no payload is kept
        self._frames: dict[bytes, list[tuple[int, int, int]]] | None = None

    def _logs(self) -> list[str]:
        fs, found = self.fs, []
        for scope in sorted(fs.listdir(self.refs)) if fs.isdir(self.refs) else []:
            scope_dir = os.path.join(self.refs, scope)
            for ns in sorted(fs.listdir(scope_dir)) if fs.isdir(scope_dir) else []:
                nsdir = os.path.join(scope_dir, ns)
                names = sorted(fs.listdir(nsdir)) if fs.isdir(nsdir) else []
                # Only what readers and the index would name (a log of this store's shape).
                found += [os.path.join(nsdir, n) for n in names if is_log_name(f"{scope}/{ns}/{n}")]
        return found

    def _index(self) -> dict[bytes, list[tuple[int, int, int]]]:
        if self._frames is None:
            self._frames = {}
            for path in self._logs():
                with contextlib.suppress(OSError, CastoreError):  # gone, or not a file to read
                    self._paths.append(path)
                    number = len(self._paths) - 1
                    for frame in scan_frames(self.fs.read_file(path)):
                        if frame.kind == KIND_BLOB and len(frame.payload) > 32:
                            where = (number, frame.start, frame.end)
                            self._frames.setdefault(frame.payload[:32], []).append(where)
        return self._frames

    def holder(self, hexdigest: str) -> str | None:
        """A log holding an intact copy of the value ``hexdigest`` names, or None."""
        for number, start, end in self._index().get(bytes.fromhex(hexdigest), ()):
            path = self._paths[number]
            with contextlib.suppress(OSError, CastoreError):  # read again, verified now
                fd = self.fs.open(path, os.O_RDONLY)
                try:
                    frame = frame_at(fileio.read_at(fd, start, end - start), 0)
                finally:
                    os.close(fd)
                if frame is not None and frame.kind == KIND_BLOB:
                    decode_blob(frame.payload, hexdigest)
                    return path
        return None
