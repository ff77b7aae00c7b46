"""Names and data made durable before a durable write depends on them (FORMAT.md §6).

An ``fdatasync`` makes a file's data durable, not its name: a new file, or one renamed
into place, survives a power loss only once its directory is fsynced, and a new directory
only once its parent is. A durable write must not depend on a name that may still vanish,
or on data that may, even another process's: a writer killed between its ``fdatasync``
and its directory's fsync, or one that wrote with ``durable=False``, leaves such files.

So two execute bits, which no store file has otherwise, mark what is not known durable:
:data:`~castore.file.modes.UNSYNCED` (the owner's) a log, ``KEYS`` or blob index shard
whose name may not be, from its creation until a durable call has fsynced its directory;
:data:`~castore.file.modes.DATA_UNSYNCED` (the group's) a log holding a value that a
``durable=False`` write indexed. A durable call that depends on a marked file settles it
first: a write its own log's name (and, for a namespace whose ``KEYS`` is marked or
missing, every directory up to the store root's parent), a write pointing into another
log that log's data and name. A mark that cannot be cleared (another user's file) only
costs the same fsyncs again next time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat

from castore.errors import UnsafePathError
from castore.file.modes import DATA_UNSYNCED, UNSYNCED

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from castore.file.tree import Tree

__all__ = [
    "clear",
    "mark_data",
    "marked",
    "settle",
    "settle_answered",
    "settle_log",
    "settle_namespace",
    "settle_other",
    "sync_file",
    "synced",
]


def marked(st_mode: int) -> bool:
    """True if a file of this mode may have a name that is not durable yet."""
    return bool(st_mode & UNSYNCED)


def clear(fd: int, st_mode: int, marks: int = UNSYNCED) -> None:
    """Take ``marks`` off the file open on ``fd`` (of mode ``st_mode``): they are durable now.

    Not off a file with another name: a hard link planted in the store may name a file
    outside it, whose mode castore never changes (the marks stay: settled again later).
    """
    if st_mode & marks and _one_name(fd):
        with contextlib.suppress(PermissionError):  # another user's file: settled again later
            os.fchmod(fd, stat.S_IMODE(st_mode) & ~marks)


def _one_name(fd: int) -> bool:
    return os.fstat(fd).st_nlink == 1


def mark_data(fd: int, st_mode: int) -> bool:
    """Mark a log whose new values a ``durable=False`` write indexes; False if it cannot.

    The blob index names only values that are durable or in a log so marked: a durable
    write that points at one fdatasyncs that log first (:func:`settle_other`).
    """
    if st_mode & DATA_UNSYNCED:
        return True
    if not _one_name(fd):  # as in clear; the writer's own log has one (it refuses more)
        return False
    try:
        os.fchmod(fd, stat.S_IMODE(st_mode) | DATA_UNSYNCED)
    except PermissionError:  # another user's file: its values are not indexed
        return False
    return True


def settle_other(fs: Tree, path: str) -> None:
    """Make another log, which a durable write is about to point into, durable if marked.

    Its data is fdatasynced if marked (the mark stays: that log's writers may append
    again meanwhile), its name settled if marked; first its ``KEYS`` (and the namespace's
    directories, if ``KEYS`` is marked): a log made durable never lacks its key's line.
    """
    fd = fs.open(path, os.O_RDONLY)
    try:
        mode = os.fstat(fd).st_mode
        if mode & (DATA_UNSYNCED | UNSYNCED):
            settle_log(fs, path, fs.root or "/", keys_synced=False, name=False)
        if mode & DATA_UNSYNCED:
            os.fdatasync(fd)
        if mode & UNSYNCED:
            settle(fs, fd, path, data=False)
    finally:
        os.close(fd)


def _above(folder: str, root: str) -> list[str]:
    """The directories from ``folder``'s parent up to ``root``, then ``root``'s parent."""
    root = root.rstrip("/")
    out = []
    while folder.startswith(root + "/"):
        folder = os.path.dirname(folder)
        out.append(folder)
    return [*out, os.path.dirname(root) or "/"]


def settle(fs: Tree, fd: int, path: str, *, data: bool = True) -> None:
    """Make the file open on ``fd`` durable, then clear its name's mark if its lock is free.

    Its data (unless ``data`` is False: the caller just fdatasynced it), then its name.
    The caller does not hold the file's lock: the mark is cleared under it, from the mode
    read then (a writer holding it may be marking the data), or left for another time.
    """
    if data:
        os.fdatasync(fd)
    fs.fsync_dir(os.path.dirname(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    try:
        clear(fd, os.fstat(fd).st_mode)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def sync_file(fs: Tree, path: str) -> None:
    """Fdatasync the file at ``path`` (``KEYS``, for a write that could not mark its log)."""
    fd = fs.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def settle_namespace(fs: Tree, folder: str, root: str) -> None:
    """Fsync a namespace directory and every directory above it, up to the root's parent.

    For a namespace another process may have made and not yet fsynced into its parent
    (two first writers racing, or a first write with ``durable=False``).
    """
    fs.fsync_dir(folder)
    *inside, parent = _above(folder, root)
    for above in inside:
        fs.fsync_dir(above)
    with contextlib.suppress(PermissionError):  # above the store, unreadable by its user (0711):
        fs.fsync_dir(parent)  # nothing castore can sync there; whoever made the store did


_SYNCED: dict[tuple[int, int], tuple[int, int, int]] = {}  # (dev, ino): (size, m/ctime) synced
_SYNCED_MAX = 4096


def _fdatasync_once(fd: int, st: os.stat_result) -> None:
    """Fdatasync ``fd`` unless this process did so since it last changed (``KEYS``).

    A compaction makes each log's ``KEYS`` durable before its rename: an fdatasync
    per log (a device cache flush each) made a 600-key compaction 74% slower. ``KEYS``
    only grows by appends or is replaced by a rename, so an unchanged size and times
    mean unchanged data; a new file that got a synced one's inode number, size and
    times within one clock tick could be skipped, and would then read as a lost
    ``KEYS`` after a power loss (its keys listed from the logs, none hidden).
    """
    if _SYNCED.get((st.st_dev, st.st_ino)) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        return
    os.fdatasync(fd)
    synced(st)


def synced(st: os.stat_result) -> None:
    """Remember that the file of ``st`` (as it is) was fdatasynced by this process."""
    if len(_SYNCED) >= _SYNCED_MAX:
        _SYNCED.clear()
    _SYNCED[st.st_dev, st.st_ino] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settle_log(fs: Tree, path: str, root: str, *, keys_synced: bool, name: bool) -> None:
    """Make what a marked log depends on durable before a durable write appends to it.

    The log's data is the write's own ``fdatasync``, after which the writer clears its
    marks. ``KEYS`` (which lists the key) is fdatasynced unless this write just did
    (``keys_synced``); when ``KEYS`` is marked or missing, the namespace's directories are
    fsynced up to the root's parent (:func:`settle_namespace`), else with ``name`` (the log's
    name is marked) the log's directory.
    """
    folder = os.path.dirname(path)
    keys = os.path.join(folder, "KEYS")
    try:
        keys_fd: int | None = fs.open(keys, os.O_RDONLY)
    except (FileNotFoundError, UnsafePathError):  # not a file: check reports it; as missing
        keys_fd = None
    try:
        st = os.fstat(keys_fd) if keys_fd is not None else None
        keys_mode = st.st_mode if st is not None else UNSYNCED
        if keys_fd is not None and st is not None and not keys_synced:
            _fdatasync_once(keys_fd, st)
        if marked(keys_mode):
            settle_namespace(fs, folder, root)
            if keys_fd is not None:
                clear(keys_fd, keys_mode)
        elif name:
            fs.fsync_dir(folder)
    finally:
        if keys_fd is not None:
            os.close(keys_fd)


def settle_answered(fs: Tree, fd: int, path: str, root: str, mode: int, other: str) -> None:
    """Make a locked log durable as it is: a durable call answers from it, writing nothing.

    A durable ``delete`` that finds the key deleted, or ``diff`` that finds the value
    stored, reports what the log holds: frames a ``durable=False`` write (or a durable one
    killed before its fdatasync) left unsynced, and unmarked. So the log is settled as a
    durable write would settle it (its ``KEYS`` and name if marked), its data fdatasynced
    unless this process did so since it last changed, its marks cleared (the caller
    holds its lock), and ``other``, the log holding the newest version's value if not
    this one (a path, or ""), settled as for a write pointing into it.
    """
    if other:
        settle_other(fs, other)
    name = marked(mode)
    if name or mode & DATA_UNSYNCED:
        settle_log(fs, path, root, keys_synced=False, name=name)
    _fdatasync_once(fd, os.fstat(fd))
    if mode & (UNSYNCED | DATA_UNSYNCED):
        clear(fd, mode, UNSYNCED | DATA_UNSYNCED)
        synced(os.fstat(fd))  # as cleared (a new ctime): the next answer syncs nothing again
