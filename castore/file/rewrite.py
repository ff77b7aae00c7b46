"""Rewriting logs atomically (compaction, gc, repair) and rebuilding the blob index.

A mixin of :class:`castore.filestore.FileBackend`: every rewrite holds the
log's lock, writes the new log to a temporary file, makes the new blob
locations findable in the index first, then renames (docs/FORMAT.md §8).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import msgspec

from castore.errors import CorruptionError
from castore.file import fileio, reflog, versionindex
from castore.file.fileread import FileReader
from castore.file.frames import Frame, LogBytes, encode_frame, scan_frames
from castore.file.records import (
    KIND_BLOB,
    KIND_COMPACTED,
    KIND_ENTRY,
    KIND_HEADER,
    decode_entry,
    encode_record,
)
from castore.file.tree import Tree
from castore.records import BlobLoc

__all__ = ["Rewriter", "Transform", "replace_with", "utc_stamp"]

Transform = Callable[[LogBytes], "list[tuple[int, bytes]] | None"]
"""Given a log's bytes sorted into frames and damage, the frames of its replacement."""


def utc_stamp() -> str:
    """A UTC time for quarantine folder names, to the microsecond."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _relaid(frames: list[tuple[int, bytes]]) -> bytes:
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


def replace_with(fs: Tree, path: str, data: bytes, *, durable: bool) -> None:
    """Write ``<path>.<pid>.<n>.tmp`` (fdatasync), rename it over ``path``; no leftover on failure.

    The caller holds the log's lock and fsyncs the directory afterwards.
    """
    tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fs.write_new(tmp, data, durable=durable)
    try:
        fileio.failpoint("rewrite-before-rename")
        fs.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.unlink(tmp)
        raise


class Rewriter(FileReader):
    """Log rewrites and the index rebuild, on top of the reader's paths and caches."""

    def quarantine_path(self, path: str, stamp: str) -> str:
        """Where ``quarantine/<stamp>/`` keeps a copy of the store file ``path``."""
        return os.path.join(self.root, "quarantine", stamp, os.path.relpath(path, self.root))

    def quarantine_bytes(self, path: str, offset: int, data: bytes) -> str:
        """Keep ``data``, cut from ``path`` at ``offset``, in quarantine (durably); return where.

        One flat folder, ``quarantine/torn/``, named after the log's path, so
        recoveries never multiply directories.
        """
        flat = os.path.relpath(path, self.refs).replace("/", ".")
        keep = os.path.join(self.root, "quarantine", "torn", f"{flat}.{offset}.{utc_stamp()}")
        self.fs.makedirs(os.path.dirname(keep), durable=self.durable)
        self.fs.atomic_write(keep, data, durable=self.durable)
        return keep

    def rewrite(
        self,
        path: str,
        transform: Transform,
        *,
        keep_copy: str | None = None,
    ) -> list[Frame] | None:
        """Atomically replace the log at ``path`` with ``transform(log)``, under its lock.

        ``transform`` gets the log's bytes sorted into intact frames and
        damage (:class:`~castore.frames.LogBytes`) and returns the new
        ``(kind, payload)`` list, or None to leave the log alone; an empty
        list removes the log and its version index. Only a repair
        (``keep_copy`` given) may rewrite a damaged log; a torn tail is
        quarantined before it is dropped. Blob frames that move get
        index entries (fsynced) before the rename, so stale location hints
        in other logs fall back to the index. With ``keep_copy``, the old
        bytes are copied there first (quarantine). Order: write the new log
        to ``<log>.<pid>.tmp``, fsync, rename over the log, fsync the
        directory, rebuild the version index (FORMAT.md §8).

        Returns:
            The new log's frames, or None when nothing was changed.

        Raises:
            CorruptionError: the log is damaged and this is not a repair.
        """
        try:
            with self.fs.open_locked(path, os.O_RDWR, timeout=self.lock_timeout) as fd:
                return self._rewrite_locked(fd, path, transform, keep_copy)
        except FileNotFoundError:
            if self.fs.exists(path):
                raise
            return None

    def _rewrite_locked(
        self,
        fd: int,
        path: str,
        transform: Transform,
        keep_copy: str | None,
    ) -> list[Frame] | None:
        log = reflog.scan(fd)[1]
        if log.damage and keep_copy is None:
            start, end = log.damage[0]
            raise CorruptionError(
                f"{path} has damaged bytes at offset {start} ({end - start} bytes); "
                "left unchanged; run castore check --repair"
            )
        wanted = transform(log)
        if wanted is None:
            return None
        if keep_copy is None and log.torn < log.size:
            torn = fileio.read_at(fd, log.torn, log.size - log.torn)
            self.quarantine_bytes(path, log.torn, torn)
        if keep_copy is not None:
            size = os.fstat(fd).st_size
            self.fs.makedirs(os.path.dirname(keep_copy), durable=self.durable)
            self.fs.atomic_write(keep_copy, fileio.read_at(fd, 0, size), durable=self.durable)
        nsdir = os.path.dirname(path)
        self._cache.pop(path, None)
        if not wanted:
            fileio.failpoint("rewrite-before-remove")
            self.fs.unlink(path)
            with contextlib.suppress(FileNotFoundError):
                self.fs.unlink(versionindex.vix_path(path))
            if self.durable:
                self.fs.fsync_dir(nsdir)
            return []
        own = self.rel(path)
        data = _relaid(wanted)
        # The old version index goes first: one that outlived a crash after the rename
        # would name versions the new log dropped (check reads that as lost bytes).
        with contextlib.suppress(FileNotFoundError):
            self.fs.unlink(versionindex.vix_path(path))
        new = list(scan_frames(data))
        moved = [
            (f.payload[:32], BlobLoc(own, f.start, f.end - f.start))
            for f in new
            if f.kind == KIND_BLOB
        ]
        self._blobs.add_many(moved, durable=self.durable)
        replace_with(self.fs, path, data, durable=self.durable)
        if self.durable:
            self.fs.fsync_dir(nsdir)
        fileio.failpoint("rewrite-after-rename")
        self.fs.atomic_write(versionindex.vix_path(path), versionindex.rebuild(new), durable=False)
        return new

    def rebuild_blob_index(self) -> int:
        """Rewrite the blob index from the blob frames of every log; return their number.

        Each shard is replaced atomically. An entry a writer appends to the old
        shard meanwhile may be lost, which only costs a chance to deduplicate.
        """
        shards: dict[str, list[bytes]] = {}
        count = 0
        for path in self.iter_logs():
            own = self.rel(path)
            try:
                frames = list(scan_frames(self.fs.read_file(path)))
            except FileNotFoundError:
                continue
            for f in frames:
                if f.kind == KIND_BLOB:
                    count += 1
                    payload = self._blobs.payload(
                        f.payload[:32], BlobLoc(own, f.start, f.end - f.start)
                    )
                    shards.setdefault(f"{f.payload[0]:02x}", []).append(payload)
        self.fs.makedirs(self._blobs.dir, durable=False)
        for name in self.fs.listdir(self._blobs.dir):
            if name.endswith(".idx") and name[:-4] not in shards:
                shards[name[:-4]] = []
        for shard, records in shards.items():
            path = os.path.join(self._blobs.dir, shard + ".idx")
            if records:
                self.fs.atomic_write(path, b"".join(records), durable=self.durable)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.unlink(path)
        self._blobs.forget()
        return count
