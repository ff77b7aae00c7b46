"""Version index: ``<key-id>.vix`` maps each version of a ref to its entry frame.

Derived data (docs/FORMAT.md §5): one ``u64le`` per version, version v at
byte ``8 * (v - 1)``. The value is the file offset of the ``E`` frame, or a
marker: :data:`COMPACTED` (the version was dropped by compaction),
:data:`ABSENT` (this log never held that version: an import started higher,
or the key's earlier life was compacted away), or 0 (unknown: look it up by
scanning). Writers never touch it: the first reader that needs a version
the index lacks appends what is missing (:func:`open_caught_up`), without fsync;
rewrites rebuild it whole. A reader verifies every offset it uses (the frame
there must be the ``E`` frame of that version) and falls back to a scan. This makes
get-at-version and history pages cost the same at version 100 and 100,000.

A handle keeps the logs it reads versions of open, each with its index
(:class:`KeptReaders`), so that a warm get at a version costs one ``stat``
and two reads.
"""

from __future__ import annotations

import array
import contextlib
import os
import struct
import sys
import threading
import weakref
from collections.abc import Iterable

from castore.errors import CorruptionError
from castore.file import fileio, logread
from castore.file.frames import Frame, scan_frames
from castore.file.records import KIND_COMPACTED, KIND_ENTRY, decode_compaction, decode_entry
from castore.file.tree import Tree
from castore.records import Entry

__all__ = [
    "ABSENT",
    "COMPACTED",
    "KEPT_READERS_MAX",
    "MAX_INDEXED_VERSION",
    "VIX_RECORD_BYTES",
    "KeptLog",
    "KeptReaders",
    "highest_recorded",
    "lookup",
    "lookup_range",
    "open_caught_up",
    "rebuild",
    "recorded_beyond",
    "vix_path",
]

VIX_RECORD_BYTES = 8  # one u64le per version
COMPACTED = 1  # marker: version dropped by compaction (no frame can start at offset 1)
ABSENT = 2  # marker: this log never held the version
MAX_INDEXED_VERSION = 1 << 24  # 128 MiB of index at most; higher versions are found by a scan
_REC = struct.Struct("<Q")
_MAX_OFFSET = 1 << 62  # larger values are damage (pread takes a signed 64-bit offset)


def vix_path(log_path: str) -> str:
    """The version index next to a ``.log`` file."""
    return log_path[: -len(".log")] + ".vix"


def _value(raw: int) -> int | None:
    return raw if 0 < raw < _MAX_OFFSET else None


def lookup(vix_fd: int, version: int) -> int | None:
    """Offset (or marker) of ``version``, or None when unknown (an offset is a hint)."""
    if not 1 <= version <= MAX_INDEXED_VERSION:
        return None
    raw = os.pread(vix_fd, VIX_RECORD_BYTES, (version - 1) * VIX_RECORD_BYTES)
    if len(raw) != VIX_RECORD_BYTES:
        return None
    return _value(_REC.unpack(raw)[0])


def lookup_range(vix_fd: int, low: int, high: int) -> dict[int, int]:
    """Offsets (or markers) of versions ``low..high`` (inclusive) that are known, in one read."""
    low, high = max(low, 1), min(high, MAX_INDEXED_VERSION)
    if high < low:
        return {}
    raw = fileio.read_at(vix_fd, (low - 1) * VIX_RECORD_BYTES, (high - low + 1) * VIX_RECORD_BYTES)
    out = {}
    for i in range(len(raw) // VIX_RECORD_BYTES):
        value = _value(_REC.unpack_from(raw, i * VIX_RECORD_BYTES)[0])
        if value is not None:
            out[low + i] = value
    return out


def highest_recorded(data: bytes) -> int:
    """The highest version an index's bytes give an entry offset for (0 if none)."""
    for version in range(len(data) // VIX_RECORD_BYTES, 0, -1):
        value = _value(_REC.unpack_from(data, (version - 1) * VIX_RECORD_BYTES)[0])
        if value is not None and value not in (COMPACTED, ABSENT):
            return version
    return 0


def lost_log(fs: Tree, log_path: str, grave: int) -> int:
    """For a log that does not exist: the highest version its index records above ``grave``.

    The index is built from the log only, and compaction removes both
    (recording the last version in ``grave`` first), so such a version was
    in a log that was lost. 0: no index, or nothing above ``grave``.
    """
    try:
        data = fs.read_file(vix_path(log_path))
    except FileNotFoundError:
        return 0
    top = highest_recorded(data)
    return top if top > grave and not fs.exists(log_path) else 0  # not created meanwhile


def rebuild(frames: Iterable[Frame]) -> bytes:
    """The whole index content for a log's frames (from :func:`castore.file.logread.scan`)."""
    offsets: dict[int, int] = {}
    for frame in frames:
        if frame.kind == KIND_ENTRY:
            version = decode_entry(frame.payload).version
            if 1 <= version <= MAX_INDEXED_VERSION:
                offsets[version] = frame.start
        elif frame.kind == KIND_COMPACTED:
            for low, high in decode_compaction(frame.payload).versions:
                for version in range(max(low, 1), min(high, MAX_INDEXED_VERSION) + 1):
                    offsets.setdefault(version, COMPACTED)
    if not offsets:
        return b""
    top = max(offsets)
    return b"".join(_REC.pack(offsets.get(v, ABSENT)) for v in range(1, top + 1))


def open_caught_up(fs: Tree, vix: str, log_fd: int, want: int) -> int:
    """Open the index, extended if needed so that it covers version ``want``; return its fd.

    Writers never touch the index; the first reader that needs a version it
    lacks scans only the log bytes after the last indexed entry (or the whole
    log if the index does not match it) and appends the missing records, under
    the index file's lock. An index that already covers ``want`` costs one
    ``open`` and one ``fstat``. The caller closes the descriptor.

    Raises:
        OSError: the index cannot be opened or written (a read-only store).
    """
    want = min(want, MAX_INDEXED_VERSION)
    fd = fs.open(vix, os.O_RDWR | os.O_CREAT)
    try:
        if os.fstat(fd).st_size // VIX_RECORD_BYTES < want:
            with fileio.locked(fd, vix):
                _extend(fd, log_fd, want)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _extend(fd: int, log_fd: int, want: int) -> None:
    top = os.fstat(fd).st_size // VIX_RECORD_BYTES
    if top >= want:
        return  # another reader extended it while we waited for the lock
    start = -1
    offset = lookup(fd, top) if top else None
    if offset is not None and offset not in (COMPACTED, ABSENT):
        found = logread.entry_at(log_fd, offset)
        if found is not None and found[0].version == top:
            start = found[1]
    if start < 0 and top:
        # Out of step with the log: leave it for check, which reads an index that names
        # versions the log lost as evidence of a cut (FORMAT.md §7); lookups scan.
        return
    if start < 0:  # empty: build it from a full scan
        os.pwrite(fd, rebuild(logread.scan(log_fd)[1].frames), 0)
        return
    size = os.fstat(log_fd).st_size
    table = bytearray()
    last = top
    for frame in scan_frames(fileio.read_at(log_fd, start, size - start), start):
        if frame.kind != KIND_ENTRY:
            continue
        version = decode_entry(frame.payload).version
        if last < version <= MAX_INDEXED_VERSION:
            table += _REC.pack(ABSENT) * (version - last - 1) + _REC.pack(frame.start)
            last = version
    if table:
        os.pwrite(fd, bytes(table), top * VIX_RECORD_BYTES)


def recorded_beyond(actual: bytes, frames: list[Frame]) -> int:
    """The highest version index content ``actual`` records beyond the log's ``frames``, or 0.

    Only an index that starts with what the frames give and goes on counts.
    """
    expected = rebuild(frames)
    if len(actual) <= len(expected) or not actual.startswith(expected):
        return 0
    tail = actual[len(expected) :]
    recorded = [
        len(expected) // 8 + 1 + i
        for i in range(len(tail) // 8)
        if int.from_bytes(tail[8 * i : 8 * i + 8], "little") > ABSENT
    ]
    return max(recorded, default=0)


KEPT_READERS_MAX = 32  # logs a handle keeps open for reading (the oldest kept makes room)
_PAGE_BITS = 9
_PAGE = 1 << _PAGE_BITS  # index records read and kept at a time (4 KiB)
_PAGES_MAX = 256  # pages kept per log (1 MiB), cleared when full
_NEAR = 8192  # read from the previous version's entry frame when it is this close
_BEFORE = 1024  # else read this much before the entry frame
_AFTER = 768  # and this much from its start (a longer frame is read again, whole)


class _Dir:
    """A directory open for ``stat`` relative to it, shared by the kept logs in it.

    Only kept logs refer to it (never a weak reference: one could revive it
    while ``__del__`` closes its descriptor).
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class KeptLog:
    """A log a handle keeps open for reading, with its index as it was then (-1: none).

    Shared by threads: the descriptors are only read with ``pread`` (no file
    offset, never locked). The index is a hint (every offset is checked
    against the log), so an index replaced since costs a slow call, not a
    wrong answer. The descriptors are closed when the object goes: no call
    can then be using them (a call holds a reference while it reads).
    """

    __slots__ = ("dir", "fd", "folder", "ident", "name", "pages", "path", "vix_fd")

    def __init__(self, fd: int, path: str, folder: _Dir) -> None:
        self.fd = fd
        self.vix_fd = -1
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        self.path = path
        self.folder, _, self.name = path.rpartition("/")
        self.dir = folder  # open on ``self.folder``
        self.pages: dict[int, array.array[int]] = {}  # pages of the index read so far

    def __del__(self) -> None:
        for fd in (self.fd, self.vix_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def entry(self, version: int) -> tuple[Entry, bytes | None] | None:
        """The entry of ``version`` and its blob's payload, via the index; None: ask the log."""
        if self.vix_fd < 0 or not 1 <= version <= MAX_INDEXED_VERSION:
            return None
        number, i = (version - 1) >> _PAGE_BITS, (version - 1) & (_PAGE - 1)
        page = self.pages.get(number)
        if page is None or i >= len(page):  # not read yet, or read before it grew
            page = self._page(number)
            if i >= len(page):
                return None
        offset = page[i]
        if not ABSENT < offset < _MAX_OFFSET:
            return None  # unknown, or a marker (confirmed by the log)
        # The blob frame of a version follows the previous version's entry frame.
        before = page[i - 1] if i else 0
        near = ABSENT < before < offset <= before + _NEAR
        start = before if near else offset - _BEFORE if offset > _BEFORE else 0
        return logread.entry_and_blob(self.fd, offset, version, start, offset + _AFTER)

    def _page(self, number: int) -> array.array[int]:
        """Read a page of the index and keep it (the last one may grow: read again then).

        Readers only ever append to an index, so what was read stays as it was.
        """
        raw = os.pread(self.vix_fd, _PAGE * VIX_RECORD_BYTES, number * _PAGE * VIX_RECORD_BYTES)
        page = array.array("Q", raw[: len(raw) - len(raw) % VIX_RECORD_BYTES])
        if sys.byteorder != "little":
            page.byteswap()
        if len(self.pages) >= _PAGES_MAX:
            self.pages.clear()
        self.pages[number] = page
        return page


class KeptReaders:
    """The logs one handle keeps open for lock-free reads, at most :data:`KEPT_READERS_MAX`.

    A kept log serves a call only if its path still names it: every call
    ``stat``s the path and compares device and inode with the kept
    descriptor's. As the descriptor stays open, its inode stays in use, so
    no file renamed over the path (a rewrite: compaction, gc, repair) can
    carry that number meanwhile. A kept log that no longer matches, or whose
    index lacked a version, leaves the pool; its descriptors are closed as
    soon as no call uses it. A forked child starts empty (:func:`_forget_in_child`).
    """

    def __init__(self) -> None:
        self._kept: dict[str, KeptLog] = {}
        self._guard = threading.Lock()  # adding (and making room); reads need none
        _ALL_READERS.add(self)

    def close(self) -> None:
        """Let go of every kept log (closed now, or when the call using it ends)."""
        self._kept = {}

    def _forget(self) -> None:
        """In a forked child: a new lock (the parent's may have been held), no kept logs."""
        self._guard = threading.Lock()
        self._kept = {}

    def entry(
        self, fs: Tree, path: str, version: int
    ) -> tuple[KeptLog | None, tuple[Entry, bytes | None] | None]:
        """The log at ``path`` (None: no log) and :meth:`KeptLog.entry` of ``version``.

        When the kept index does not give the version, the log leaves the
        pool: the caller asks the log (:meth:`RefLog.entry_of`), which may
        extend the index, and the next call opens both again.
        """
        kept = self._kept.get(path)
        if kept is not None:  # does the path still name it? (_ident_in, inline: the hot path)
            try:
                st = os.stat(kept.name, dir_fd=kept.dir.fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) != kept.ident:
                    kept = None  # another file now
            except FileNotFoundError:
                kept = None
        if kept is None:
            kept = self._open(fs, path)
        found = kept.entry(version) if kept is not None else None
        if kept is not None and found is None:
            with self._guard:
                if self._kept.get(path) is kept:
                    del self._kept[path]
        return kept, found

    def _open(self, fs: Tree, path: str) -> KeptLog | None:
        """Open the log at ``path`` and its index, and keep them (the oldest kept goes)."""
        folder = path.rpartition("/")[0]
        with self._guard:
            shared = next((k.dir for k in self._kept.values() if k.folder == folder), None)
        try:
            where = shared or _open_dir(fs, folder)
            kept = KeptLog(fs.open(path, os.O_RDONLY), path, where)
            if shared is not None and _ident_in(shared, kept.name) != kept.ident:
                kept.dir = _open_dir(fs, folder)  # not the directory it was: replaced
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError, CorruptionError):  # no index yet: the log decides
            kept.vix_fd = fs.open(vix_path(path), os.O_RDONLY)
        with self._guard:
            kept_now = self._kept
            kept_now.pop(path, None)
            while len(kept_now) >= KEPT_READERS_MAX:
                del kept_now[next(iter(kept_now))]  # the oldest kept
            kept_now[path] = kept
        return kept


def _open_dir(fs: Tree, folder: str) -> _Dir:
    return _Dir(fs.open(folder, os.O_RDONLY | os.O_DIRECTORY))


def _ident_in(folder: _Dir, name: str) -> tuple[int, int] | None:
    """(device, inode) of what ``name`` names in ``folder`` (None: nothing)."""
    try:
        st = os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


_ALL_READERS: weakref.WeakSet[KeptReaders] = weakref.WeakSet()


def _forget_in_child() -> None:
    # A child never reads through its parent's descriptors: it drops its copies.
    for readers in list(_ALL_READERS):
        readers._forget()


os.register_at_fork(after_in_child=_forget_in_child)
