"""Reading blobs: verified values at their location hints, else via the blob index.

A value is found by its digest (docs/FORMAT.md §3): the entry's location hint
first, then every location the blob index records, each frame verified
(kind, digest field, checksum, sha256). Only names that have the shape of a
log of this store are ever opened.
"""

from __future__ import annotations

import os

from castore.backend import lost_error
from castore.errors import CorruptionError
from castore.file import fileio
from castore.file.blobindex import BlobIndex
from castore.file.frames import BLOB_FRAME_MAX, frame_at
from castore.file.records import KIND_BLOB, decode_blob
from castore.file.tree import Tree
from castore.keys import Ref, is_log_name
from castore.records import OP_DAMAGED, BlobLoc, Entry

__all__ = ["BlobReader"]

_READ_ROUNDS = 2  # blob lookups: a second round, from a re-read shard, sees what raced the first


class BlobReader:
    """Finds and verifies the blob of an entry, in a store's logs. Thread-safe.

    Args:
        fs: the store's confined file tree.
        refs: the store's ``refs/`` directory.
        index: the store's blob index.
    """

    def __init__(self, fs: Tree, refs: str, index: BlobIndex) -> None:
        self.fs = fs
        self.refs = refs
        self.index = index

    def value_of(self, ref: Ref, entry: Entry | None, blob: bytes | None, fd: int) -> bytes | None:
        """The verified value of ``entry`` (None for a tombstone or no entry).

        ``blob`` is the payload of its ``B`` frame when the caller already
        read it; ``fd`` is the entry's own log.

        Raises:
            CorruptionError: no intact copy, or the version was lost to damage.
        """
        if entry is None or not entry.live:
            return None
        if entry.op == OP_DAMAGED:
            raise lost_error(ref, entry)
        try:
            if blob is not None:
                try:
                    return decode_blob(blob, entry.hash)
                except CorruptionError:
                    pass  # damaged in place: another copy may exist
            return self.read(entry, fd)
        except CorruptionError as exc:
            raise CorruptionError(f"{ref} version {entry.version}: {exc.detail}") from exc

    def read(self, entry: Entry, fd: int) -> bytes:
        """Read and verify the blob of ``entry``: at its location hint, else via the index.

        Every recorded location of one log is tried on *one* open descriptor:
        a rewrite (compaction, gc, repair) may rename a new log over the old
        one at any moment, and the index holds the locations of both, so the
        file that was opened always matches one of them. A rewrite that both
        recorded and renamed between the lookup and the open, or a shard
        rebuilt since this handle cached it, is caught by a second round
        that re-reads the shard whole (:meth:`BlobIndex.lookup`, ``fresh``).
        A last round tries every location the shard ever recorded
        (:meth:`BlobIndex.every_location`): a log holding several copies of
        the value records as many new locations when it is rewritten, and
        they can push the one still good out of the newest few.

        Raises:
            CorruptionError: no intact copy was found.
        """
        damage = ""
        own = entry.blob
        if own is not None and not own.log and fd >= 0:  # the common case: no index lookup
            try:
                data = self._frame_blob(fd, own, entry.hash)
            except CorruptionError as exc:
                data, damage = None, f" ({exc.detail})"
            if data is not None:
                return data
        tried: set[BlobLoc] = set()
        for round_ in range(_READ_ROUNDS + 1):
            groups: dict[str, list[BlobLoc]] = {}
            digest = bytes.fromhex(entry.hash)
            if round_ < _READ_ROUNDS:
                found = self.index.lookup(digest, fresh=round_ > 0)
            else:  # newer records may all name a rewrite's file not (yet) renamed in
                found = [loc for loc in self.index.every_location(digest) if loc not in tried]
            for loc in [entry.blob, *found]:
                if loc is not None:
                    groups.setdefault(loc.log, []).append(loc)
                    tried.add(loc)
            for log, locs in groups.items():
                try:
                    data = self._read_in_log(log, locs, fd, entry.hash)
                except CorruptionError as exc:
                    damage = f" ({exc.detail})"
                    continue
                if data is not None:
                    return data
        raise CorruptionError(f"blob {entry.hash} is missing or damaged{damage}")

    def _read_in_log(self, log: str, locs: list[BlobLoc], fd: int, hexdigest: str) -> bytes | None:
        """The blob at the first of ``locs`` (all in ``log``; "" = ``fd``) that holds it.

        Raises:
            CorruptionError: an intact frame there fails verification.
        """
        if not log:  # the entry's own log, already open
            for loc in locs if fd >= 0 else ():
                data = self._frame_blob(fd, loc, hexdigest)
                if data is not None:
                    return data
            return None
        if not is_log_name(log):
            return None  # stored data never names a path: only a log of this store
        try:
            other = self.fs.open(os.path.join(self.refs, log), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            for loc in locs:
                data = self._frame_blob(other, loc, hexdigest)
                if data is not None:
                    return data
            return None
        finally:
            os.close(other)

    def read_at(self, loc: BlobLoc, fd: int, hexdigest: str) -> bytes | None:
        """The blob at ``loc`` if a valid ``B`` frame is there, else None.

        Raises:
            CorruptionError: when the frame is intact but its data fails verification.
        """
        return self._read_in_log(loc.log, [loc], fd, hexdigest)

    @staticmethod
    def _frame_blob(fd: int, loc: BlobLoc, hexdigest: str) -> bytes | None:
        if not loc.offset >= 0 or not 0 < loc.length <= BLOB_FRAME_MAX:
            return None  # no frame castore writes: never read gigabytes for a stored hint
        buf = fileio.read_at(fd, loc.offset, loc.length)
        frame = frame_at(buf, 0)
        if frame is None or frame.kind != KIND_BLOB or frame.payload[:32].hex() != hexdigest:
            return None
        return decode_blob(frame.payload, hexdigest)
