"""The graveyard ``refs/<scope>/<ns-id>/GRAVES``: last versions of removed keys (FORMAT.md §5).

``G`` frames, each record twice, fdatasynced before compaction removes a
key's log; not derived (with the removed log's ``C`` frame, it is what keeps
versions from repeating). Cached per handle and refreshed incrementally.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable

from castore import forks
from castore.errors import CorruptionError, UnsafePathError
from castore.file import fileio
from castore.file.frames import classify, classify_twinned, encode_frame
from castore.file.records import (
    KIND_GRAVE,
    Grave,
    decode_grave,
    encode_record,
    grave_key_bytes,
)
from castore.file.tree import Tree
from castore.reports import MAX_COUNT

__all__ = ["Graveyard", "floor_after_damage", "twinned"]


def _covered(damage: tuple[int, int], extents: set[tuple[int, int]]) -> bool:
    """True if an intact twin of the same size sits right before or after ``damage``."""
    start, end = damage
    size = end - start
    return (start - size, start) in extents or (end, end + size) in extents


def floor_after_damage(known: int, damaged: bytes) -> int:
    """A version above every version a lost grave record may have held (both copies damaged).

    The damaged bytes may still show digits; ``known`` is the highest version
    seen anywhere in the namespace. Without redundancy the true value cannot
    be known, so the floor is generous (docs/FORMAT.md §7).
    """
    digits = [int(run) for run in re.findall(rb"[0-9]{1,19}", damaged)]
    top = max([known, *(d for d in digits if d <= MAX_COUNT)])  # longer runs: no version
    return min(top * 2 + 1_000_000, max(top, MAX_COUNT - 1_000_000))  # never past a bigint


def twinned(payloads: Iterable[bytes]) -> bytes:
    """``G`` frames of ``payloads``, each written twice in a row (one covers the other)."""
    return b"".join(frame + frame for frame in (encode_frame(KIND_GRAVE, p) for p in payloads))


_HEAD_BYTES = 64  # the first bytes of GRAVES a handle compares before reading on
_UNPARSED_LOOKUPS = 64  # keys a handle looks up by the file's bytes before it parses it


class Graveyard:
    """Last versions of keys whose logs compaction removed: ``GRAVES`` in a namespace dir.

    ``G`` frames (:class:`~castore.records.Grave`), each record written twice
    in one append and fdatasynced before the log is removed, so a re-created
    key continues after its old versions (versions never repeat) and one
    damaged copy is covered by its twin. Cached and read incrementally.
    Damage that no twin covers makes :meth:`version_of` raise until
    ``check --repair`` has replaced it by a floor (FORMAT.md §5, §7).
    A handle remembers the records it read after the file loses them
    (graves only rise), and reads on from where it stopped when the file
    grew; without ``remember`` it answers from the file as it is at each call
    (gc: a record lost since is no record), reading it whole again whenever
    it changed (a record zeroed in place is then no record either).
    """

    def __init__(self, path: str, fs: Tree, *, remember: bool = True) -> None:
        self.path = path
        self.fs = fs
        self._remember = remember
        self._lock = threading.RLock()
        self._seen: dict[str, int] = {}  # what this handle read, kept when the file changes
        self._seen_floor = 0
        self._unparsed: tuple[tuple[int, int, int, int], bytes] | None = None  # (sig, bytes)
        self._lookups = 0
        self._forget(0)
        forks.track(self)

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`): a new lock; the file read again.

        A parent's thread may have been reading it (its signature taken, not all its
        records): what it had read is kept as seen, as when the file changes.
        """
        self._lock = threading.RLock()
        self._forget(0)

    def _forget(self, ino: int) -> None:
        # Graves only rise (a repair keeps every record, with a floor above): a file that
        # lost what this handle read (removed, or an older copy put back) never lowers it.
        if self._remember:
            for key, version in getattr(self, "_versions", {}).items():
                self._seen[key] = max(self._seen.get(key, 0), version)
            self._seen_floor = max(self._seen_floor, getattr(self, "_floor", 0))
        self._ino = ino
        self._sig: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._head = b""  # the first bytes of the file parsed
        self._pos = 0
        self._versions: dict[str, int] = {}
        self._floor = 0
        self._extents: set[tuple[int, int]] = set()
        self._damage: list[tuple[int, int]] = []

    def _refresh(self) -> None:
        with self._lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        try:
            st = self.fs.stat(self.path)  # one call when nothing changed (every new key)
        except FileNotFoundError:
            if self._ino:  # it was there: keep what it held as seen (else: nothing to forget)
                self._forget(0)
            return
        sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if sig == self._sig:
            return
        # Read on from where this handle stopped only when the file grew (an append);
        # changed in place (damage), or for gc (which answers from the file as it is, a
        # record lost meanwhile no record), it is read whole again.
        appended = self._remember and st.st_size > self._sig[1]
        if st.st_ino != self._ino or st.st_size < self._pos or not appended:
            self._forget(st.st_ino)
        fd = self.fs.open(self.path, os.O_RDONLY)
        try:
            # A repair renames a new file over this one, and the new file may get the
            # inode number of the one parsed (numbers are reused at once): its first
            # bytes tell them apart.
            if self._head and fileio.read_at(fd, 0, len(self._head)) != self._head:
                self._forget(st.st_ino)
            size = os.fstat(fd).st_size
            buf = fileio.read_at(fd, self._pos, size - self._pos)
            if not self._pos:
                self._head = buf[:_HEAD_BYTES]
        finally:
            os.close(fd)
        if self._unparsed is not None and self._unparsed[0] == sig:
            self._unparsed = None  # the bytes just parsed: nothing to keep apart
        self._keep_unparsed()
        self._sig = sig
        log = classify_twinned(buf, self._pos)
        last = None
        for frame in log.frames:
            self._extents.add((frame.start, frame.end))
            if frame.kind != KIND_GRAVE or frame.payload is last:
                continue  # a twin (the same bytes): the same record
            last = frame.payload
            grave = decode_grave(frame.payload)
            if grave.key is None:
                self._floor = max(self._floor, grave.version)
            else:
                self._versions[grave.key] = max(self._versions.get(grave.key, 0), grave.version)
        self._damage.extend(log.damage)
        self._pos = log.torn  # a torn record is re-read once its writer finishes

    def damage(self) -> list[tuple[int, int]]:
        """Damaged byte ranges that no intact twin covers (re-read first)."""
        with self._lock:
            self._refresh_locked()
            return [d for d in self._damage if not _covered(d, self._extents)]

    @property
    def floor(self) -> int:
        """The floor a repair recorded (0 if none)."""
        self._refresh()
        return self._floor

    def records(self) -> dict[str, int]:
        """Every removed key's last version (re-read first)."""
        with self._lock:
            self._refresh_locked()
            return dict(self._versions)

    def highest(self) -> int:
        """The highest version recorded for any key, or as the floor."""
        with self._lock:
            self._refresh_locked()
            return max([self._floor, *self._versions.values()])

    def version_of(self, key: str) -> int:
        """The last version ``key`` had before its log was removed (0 if never).

        Raises:
            CorruptionError: a record no twin covers is damaged, so the
                answer is unknown until ``check --repair``.
        """
        with self._lock:
            damage = self.damage()
            if damage:
                start, end = damage[0]
                raise CorruptionError(
                    f"{self.path}: damaged bytes at offset {start} ({end - start} bytes): "
                    "the last versions of removed keys are unknown; run castore check --repair"
                )
            seen = max(self._seen_floor, self._seen.get(key, 0))  # before the file changed
            return max(self._floor, self._versions.get(key, 0), seen)

    def recorded(self, key: str) -> int:
        """The last version ``key`` had before compaction removed its log: its own record.

        Unlike :meth:`version_of`, no floor (a repair's floor is where a
        re-created key starts, not a version the key had) and no refusal for
        damage or for something planted in place of the file (either only
        hides a grave, and ``check`` reports it): what can be read, and what
        this handle read before. 0 if no record names it.
        """
        with self._lock:
            with contextlib.suppress(UnsafePathError):
                if not self._names_none(key):
                    self._refresh_locked()
            return max(self._versions.get(key, 0), self._seen.get(key, 0))

    def _names_none(self, key: str) -> bool:
        """True if the file, not yet parsed by this handle, holds no record of ``key``.

        Found by the record's bytes (:func:`~castore.file.records.grave_key_bytes`):
        a command's first read of a key in a namespace of 20,000 removed keys
        parsed them all (60 ms) to learn that none was this key. A handle parses
        the file after :data:`_UNPARSED_LOOKUPS` such lookups (then it reads on).
        """
        pattern = grave_key_bytes(key)
        if pattern is None or self._pos or self._versions or self._lookups >= _UNPARSED_LOOKUPS:
            return False
        try:
            st = self.fs.stat(self.path)
        except FileNotFoundError:
            self._keep_unparsed()
            return False  # the parse's case: what was seen stays seen
        sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._unparsed is None or self._unparsed[0] != sig:
            self._keep_unparsed()
            fd = self.fs.open(self.path, os.O_RDONLY)
            try:
                st = os.fstat(fd)
                data = fileio.read_at(fd, 0, st.st_size)
            finally:
                os.close(fd)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            self._unparsed = (sig, data)
        self._lookups += 1
        return pattern not in self._unparsed[1]

    def _keep_unparsed(self) -> None:
        """Keep the records of the bytes :meth:`_names_none` read as seen, before they go.

        A handle remembers what the file held when it looked (``remember``), as when
        it parsed at each look: a record the file loses later (truncated, an older copy
        put back, removed) still counts for this handle.
        """
        if self._unparsed is None:
            return
        data, self._unparsed = self._unparsed[1], None
        if not self._remember:
            return  # gc: the file as it is at each call
        log = classify_twinned(data)
        for grave in (decode_grave(f.payload) for f in log.frames if f.kind == KIND_GRAVE):
            if grave.key is None:
                self._seen_floor = max(self._seen_floor, grave.version)
            else:
                self._seen[grave.key] = max(self._seen.get(grave.key, 0), grave.version)

    @staticmethod
    def floor_bytes(floor: int) -> bytes:
        """A whole GRAVES file holding only ``floor`` (twice)."""
        return twinned([encode_record(Grave(version=floor))])

    def bury(self, items: list[tuple[str, int]]) -> None:
        """Record the last version of each removed key, twice; durable whatever the handle.

        The removal it allows (the log's unlink) becomes durable with any later fsync of
        the directory, a durable write's included: without the record, the key's
        versions would start again after a power loss (FORMAT.md §6, "Names").
        """
        records = twinned([encode_record(Grave(key=k, version=v)) for k, v in items])
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        with self.fs.open_locked(self.path, flags) as fd:
            new = os.fstat(fd).st_size == 0
            fileio.append(fd, records, durable=True)
        if new:
            self.fs.fsync_dir(os.path.dirname(self.path))

    def repair(self, floor: int, keep_copy: str, *, durable: bool) -> None:
        """Rewrite the file with its intact records and a ``floor``; keep the old bytes.

        The original is first copied to ``keep_copy`` (quarantine).
        """
        with self.fs.open_locked(self.path, os.O_RDWR) as fd:
            data = fileio.read_at(fd, 0, os.fstat(fd).st_size)
            self.fs.makedirs(os.path.dirname(keep_copy), durable=durable)
            self.fs.atomic_write(keep_copy, data, durable=durable)
            records = [f.payload for f in classify(data).frames if f.kind == KIND_GRAVE]
            records.append(encode_record(Grave(version=floor)))
            self.fs.atomic_write(self.path, twinned(dict.fromkeys(records)), durable=durable)
        with self._lock:
            self._forget(0)
