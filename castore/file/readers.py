"""The logs a handle keeps open for reading versions, with their version indexes.

A get at a version reads through a kept log: one ``stat`` checks the path
still names it, the index gives the entry's offset, one ``pread`` the
entry and blob frames (docs/FORMAT.md §5). A version read and verified is
kept with its log (within a byte budget), so reading it again while the
file is unchanged (same ``stat`` signature) costs the ``stat`` alone.
"""

from __future__ import annotations

import array
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import NamedTuple

from castore import forks
from castore.errors import CorruptionError
from castore.file import fileio, logread
from castore.file.encode import refuse_other
from castore.file.tree import Tree
from castore.file.versionindex import (
    ABSENT,
    MAX_INDEXED_VERSION,
    MAX_OFFSET,
    VIX_RECORD_BYTES,
    vix_path,
)
from castore.keys import Ref
from castore.records import Entry

__all__ = ["KEPT_READERS_MAX", "VERIFIED_MAX_BYTES", "KeptLog", "KeptReaders", "Lookup"]

KEPT_READERS_MAX = 32  # logs a handle keeps open for reading, at most (the oldest makes room)
_PAGE_BITS = 9
_PAGE = 1 << _PAGE_BITS  # index records read and kept at a time (4 KiB)
_PAGES_MAX = 256  # pages kept per log (1 MiB), cleared when full
_NEAR = 8192  # read from the previous version's entry frame when it is this close
_BEFORE = 1024  # else read this much before the entry frame
_AFTER = 768  # and this much from its start (a longer frame is read again, whole)
VERIFIED_MAX_BYTES = 8 << 20  # verified versions a handle keeps (values plus _OVERHEAD each)
_VERIFIED_VALUE_MAX = 64 << 10  # a larger value is read again each time
_OVERHEAD = 512  # what one kept version costs beyond its value (entry, dictionary slot)


class _Dir:
    """A directory open for ``stat`` relative to it, shared by the kept logs in it.

    Only kept logs refer to it (never a weak reference: one could revive it
    while ``__del__`` closes its descriptor).
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self, _exiting: Callable[[], bool] = sys.is_finalizing) -> None:
        if _exiting():  # the kernel closes them at exit; the modules' globals may be gone
            return
        with contextlib.suppress(OSError):
            os.close(self.fd)


Verified = tuple[tuple[int, int, int, int], dict[int, tuple[Entry, bytes | None]]]
"""A kept log's ``stat`` signature and the versions verified while it held (one object)."""


class Lookup(NamedTuple):
    """What :meth:`KeptReaders.entry` found for a version."""

    kept: KeptLog | None  # the log read (None: no log)
    found: tuple[Entry, bytes | None] | None  # entry and blob payload, or (verified) value
    verified: bool  # ``found`` holds the value as verified before (no read was needed)
    state: Verified | None = None  # the kept log's verified versions when it was read


class KeptLog:
    """A log a handle keeps open for reading, with its index as it was then (-1: none).

    Shared by threads: the descriptors are only read with ``pread`` (no file
    offset, never locked). The index is a hint (every offset is checked
    against the log), so an index replaced since costs a slow call, not a
    wrong answer. The descriptors are closed when the object goes: no call
    can then be using them (a call holds a reference while it reads).
    """

    __slots__ = (
        "dir",
        "fd",
        "folder",
        "ident",
        "judged",
        "name",
        "pages",
        "path",
        "verified",
        "vix_fd",
    )

    def __init__(self, fd: int, path: str, folder: _Dir) -> None:
        self.fd = fd
        self.vix_fd = -1
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        self.path = path
        self.folder, _, self.name = path.rpartition("/")
        self.dir = folder  # open on ``self.folder``
        self.pages: dict[int, array.array[int]] = {}  # pages of the index read so far
        # Replaced whole (one attribute) when the file changes: threads never mix states.
        self.verified: Verified = ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), {})
        # The state (``verified``, by identity) under which the file was judged not an
        # older copy of a removed key's log: judged again once the file changes.
        self.judged: Verified | None = None

    def __del__(self, _exiting: Callable[[], bool] = sys.is_finalizing) -> None:
        if _exiting():  # the kernel closes them at exit; the modules' globals may be gone
            return
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
        if not ABSENT < offset < MAX_OFFSET:
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
    soon as no call uses it. A forked child starts empty (:meth:`after_fork_in_child`).
    """

    def __init__(self) -> None:
        self._kept: dict[str, KeptLog] = {}
        self._guard = threading.Lock()  # adding (and making room); reads need none
        self._verified_bytes = 0  # kept by every kept log's ``verified`` (approximately)
        forks.track(self)

    def close(self) -> None:
        """Let go of every kept log (closed now, or when the call using it ends)."""
        self._kept = {}

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`): a new lock, no kept logs.

        The parent's may have been held; a child never reads through its parent's
        descriptors (its copies are closed as the kept logs go).
        """
        self._guard = threading.Lock()
        self._kept, self._verified_bytes = {}, 0

    def entry(self, fs: Tree, path: str, version: int, ref: Ref) -> Lookup:
        """The log at ``path`` and the entry of ``version``, as verified before or via its index.

        When the kept index does not give the version, the log leaves the
        pool: the caller asks the log (:meth:`RefLog.entry_of`), which may
        extend the index, and the next call opens both again.
        """
        kept = self._kept.get(path)
        if kept is not None:  # does the path still name it? (_ident_in, inline: the hot path)
            try:
                st = os.stat(kept.name, dir_fd=kept.dir.fd, follow_symlinks=False)
            except FileNotFoundError:
                kept = None
            else:
                sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                state = kept.verified
                if (st.st_dev, st.st_ino) != kept.ident:
                    kept = None  # another file now
                elif sig == state[0]:  # the file as it was when they were verified
                    hit = state[1].get(version)
                    if hit is not None:
                        return Lookup(kept, hit, True)
                else:  # written since (an append, or damage): verify again
                    kept.verified = (sig, {})
        if kept is None:
            kept = self._open(fs, path, ref)
        if kept is None:
            return Lookup(None, None, False)
        state = kept.verified  # taken before the read: what it is verified under
        found = kept.entry(version)
        if found is None:
            with self._guard:
                if self._kept.get(path) is kept:
                    del self._kept[path]
        return Lookup(kept, found, False, state)

    def verified(self, found: Lookup, version: int, entry: Entry, value: bytes | None) -> None:
        """Keep ``version``'s entry and value, just verified, with its log (within the budget).

        They are used while the log's ``stat`` (inode, size, mtime, ctime) is
        what it was when they were read: any write to the file since (an
        append, or damage) makes the next call read and verify again, as the
        newest-entry cache does. They go into the state the read was made
        under (``found.state``), which a thread that saw the file change has
        already replaced. Over :data:`VERIFIED_MAX_BYTES`, every kept log
        forgets its versions.
        """
        size = (len(value) if value is not None else 0) + _OVERHEAD
        if found.kept is None or found.state is None or size > _VERIFIED_VALUE_MAX:
            return
        self._verified_bytes += size
        if self._verified_bytes > VERIFIED_MAX_BYTES:
            for other in [*self._kept.values(), found.kept]:
                other.verified = (other.verified[0], {})
            self._verified_bytes = size
            if found.kept.verified[0] == found.state[0]:
                found.kept.verified[1][version] = (entry, value)
            return
        found.state[1][version] = (entry, value)

    def _open(self, fs: Tree, path: str, ref: Ref) -> KeptLog | None:
        """Open the log at ``path`` and its index, and keep them (the oldest kept goes).

        Raises:
            CorruptionError: the log's header names another ref than ``ref``.
        """
        folder = path.rpartition("/")[0]
        with self._guard:
            shared = next((k.dir for k in self._kept.values() if k.folder == folder), None)
        try:
            where = shared or _open_dir(fs, folder)
            kept = KeptLog(fs.open(path, os.O_RDONLY), path, where)
            refuse_other(kept.fd, ref, path)  # KeptLog closes it when collected
            if shared is not None and _ident_in(shared, kept.name) != kept.ident:
                kept.dir = _open_dir(fs, folder)  # not the directory it was: replaced
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError, CorruptionError):  # no index yet: the log decides
            kept.vix_fd = fs.open(vix_path(path), os.O_RDONLY)
        with self._guard:
            kept_now = self._kept
            kept_now.pop(path, None)
            most = fileio.descriptor_share(32, KEPT_READERS_MAX)  # up to 3 descriptors each
            while len(kept_now) >= most:
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
