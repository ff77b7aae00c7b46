"""Confined file operations: every path below the store root, never through a link.

Every file a store touches is reached through a :class:`Tree`: directories one component at
a time with ``O_NOFOLLOW|O_DIRECTORY`` relative to their parent's (cached) descriptor, files
with ``O_NOFOLLOW|O_NONBLOCK`` relative to theirs and only if regular. A link, FIFO or device
planted below the root, even after a directory was checked, is refused (``UnsafePathError``;
docs/RELIABILITY.md, "Security"). What it creates gets exactly its ``Modes``.
"""

from __future__ import annotations

import _thread  # threading's own primitives: a CLI get need not load threading
import contextlib
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator

from castore import exits
from castore.errors import UnsafePathError
from castore.file import fileio
from castore.file.fileio import LOCK_TIMEOUT_SECONDS, SHORT_PAUSES, append, locked, read_at
from castore.file.modes import (
    PRIVATE,
    UNSYNCED,
    Modes,
    create_file,
    makedirs_plain,
    owner_below,
    refused,
    regular,
    set_mode,
)
from castore.file.wholefiles import WholeFiles

__all__ = ["UNCONFINED", "Tree"]


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OUT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO never blocks an open
_NOT_NAMES = frozenset(("", ".", ".."))  # a final component that is no file's name


class Tree(WholeFiles):
    """The file operations of one store, confined to its root (or to nothing).

    Paths are absolute strings. A path below ``root`` (absolute, or None) is resolved one
    component at a time from the root's descriptor (any link or ``..`` below the root:
    UnsafePathError); paths outside, and every path of :data:`UNCONFINED`, use plain system
    calls. Thread-safe; the root may be a link the user chose, opened on first use (until
    then: no paths). What it creates below the root gets ``modes`` and :attr:`owner`.
    """

    def __init__(self, root: str | None, modes: Modes = PRIVATE) -> None:
        self.root = root
        self.modes = modes
        self.owner: tuple[int, int] | None = None  # what it creates belongs to (owner_below)
        self._lock = _thread.allocate_lock()
        self._dirs: dict[str, int] = {}
        self._retired: list[int] = []  # no longer used; closed by close()
        self._prefix = root.rstrip("/") + "/" if root else "\0"

    def close(self, *, root: bool = False) -> None:
        """Close the cached directory descriptors but the root's (it stays usable).

        ``root``: stop using the root's too, closed later with the rest (a thread may use one).
        """
        with self._lock:
            if root:
                self._retired += self._dirs.values()
                self._dirs.clear()
                return
            keep = self._dirs.pop(self.root.rstrip("/"), None) if self.root else None
            for fd in [*self._dirs.values(), *self._retired]:
                os.close(fd)
            self._dirs.clear()
            self._retired.clear()
            if keep is not None and self.root is not None:
                self._dirs[self.root.rstrip("/")] = keep

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`, through its owner): a new lock."""
        self._lock = _thread.allocate_lock()  # the directories' descriptors hold no lock

    def __del__(self, _exiting: Callable[[], bool] = sys.is_finalizing) -> None:
        if not _exiting():  # at exit the kernel closes them (and modules' globals may be gone)
            for fd in [*getattr(self, "_dirs", {}).values(), *getattr(self, "_retired", [])]:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- resolution -----------------------------------------------------------------

    def held_root(self) -> tuple[int, int] | None:
        """The device and inode of the root directory held open (None: not opened yet)."""
        fd = self._dirs.get(self._prefix[:-1])
        st = os.fstat(fd) if fd is not None else None
        return (st.st_dev, st.st_ino) if st is not None else None

    def _root_fd(self) -> int:
        """The root's descriptor, opened on first use (FileNotFoundError while it is missing)."""
        root = self._prefix[:-1]
        fd = self._dirs.get(root)
        if fd is None:
            opened = os.open(root, _OUT_FLAGS)
            self.owner = owner_below(opened)
            with self._lock:
                fd = self._dirs.setdefault(root, opened)
            if fd != opened:  # another thread opened it first
                os.close(opened)
        return fd

    def _dir_fd(
        self, folder: str, *, create: bool = False, durable: bool = False
    ) -> tuple[int, bool]:
        """A descriptor of ``folder`` (below or at the root) and whether the caller closes it."""
        fd = self._dirs.get(folder)
        if fd is not None:
            return fd, False
        root = self._prefix[:-1]
        if folder == root:
            return self._root_fd(), False
        rel = folder[len(self._prefix) :]
        parent, owned, path = self._root_fd(), False, root
        for part in rel.split("/"):
            path = f"{path}/{part}"
            try:
                if part in ("", ".", ".."):
                    raise UnsafePathError(f"{folder}: not a plain path inside the store")
                child, child_owned = self._dirs.get(path, -1), False
                if child < 0:
                    child = self._open_dir(parent, part, path, create=create, durable=durable)
                    child_owned = not self._cache(path, child)
            finally:  # one past the cache (a missing child too): this call's to close
                if owned:
                    os.close(parent)
            parent, owned = child, child_owned
        return parent, owned

    def _open_dir(self, parent: int, part: str, path: str, *, create: bool, durable: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            raise refused(exc, parent, part, path) from None
        made = True
        try:  # a failed mkdir (a read-only store, a full disk) named by its path too
            try:
                os.mkdir(part, self.modes.dir, dir_fd=parent)
            except FileExistsError:
                made = False
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise refused(exc, parent, part, path) from None
        if made and os.fstat(fd).st_uid == os.geteuid():  # not one put in its place since
            set_mode(fd, self.modes.dir, self.owner)  # exactly, umask or not (setgid too)
            if durable:
                os.fsync(parent)
        return fd

    def drop_stale(self, path: str | None = None) -> list[str]:
        """Stop using cached directories below the root that their paths no longer name.

        A directory replaced under the handle (restored from a copy, moved,
        removed) must not be read as the store's: the descriptors of those on
        the way to ``path`` (None: all) whose path names another directory now,
        or nothing, are retired with their cached descendants (closed by
        :meth:`close`: another thread may be in a call on one). Two system
        calls per cached directory looked at; on the way to ``path``, the
        deepest first, and one found in place vouches for those above it (the
        path was walked afresh to reach it). Returns the paths dropped.
        """
        root = self._prefix[:-1]
        with self._lock:
            cached = sorted((p for p in self._dirs if p != root), key=len)  # parents first
        chain = path is not None
        if path is not None:
            cached = [p for p in cached if path == p or path.startswith(p + "/")][::-1]
        dropped: list[str] = []
        for folder in cached:
            fd = self._dirs.get(folder)
            if fd is None:
                continue
            try:
                now, held = os.stat(folder, follow_symlinks=False), os.fstat(fd)
                same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
            except OSError:
                same = False
            if same and chain:
                break
            if not same:
                dropped.append(folder)
                with self._lock:
                    for p in [p for p in self._dirs if p == folder or p.startswith(folder + "/")]:
                        self._retired.append(self._dirs.pop(p))
        return dropped

    def _cache(self, path: str, fd: int) -> bool:
        with self._lock:
            # at most 256 kept, and 1/16 of the descriptors a process may open; more: per call
            if path in self._dirs or len(self._dirs) >= fileio.descriptor_share(16, 256):
                return False
            self._dirs[path] = fd
            return True

    @exits.contextmanager
    def _at(
        self, path: str, *, create: bool = False, durable: bool = False
    ) -> Iterator[tuple[int | None, str]]:
        """Yield ``(dir_fd, name)`` for ``path`` (``(None, path)`` outside the root)."""
        if not path.startswith(self._prefix):
            yield None, path
            return
        folder, _, name = path.rpartition("/")
        if name in ("", ".", ".."):
            raise UnsafePathError(f"{path}: not a plain path inside the store")
        fd, owned = self._dir_fd(folder, create=create, durable=durable)
        try:
            yield fd, name
        finally:
            if owned:
                os.close(fd)

    def _where(self, path: str) -> tuple[int, str, bool] | None:
        """``(dir_fd, name, caller closes)`` below the root, else None (:meth:`_at`, hot)."""
        if not path.startswith(self._prefix):
            return None
        folder, _, name = path.rpartition("/")
        if name in _NOT_NAMES:
            raise UnsafePathError(f"{path}: not a plain path inside the store")
        fd = self._dirs.get(folder)
        if fd is not None:
            return fd, name, False
        fd, owned = self._dir_fd(folder)
        return fd, name, owned

    def open(self, path: str, flags: int, *, unsynced: bool = False) -> int:
        """``os.open`` that never follows a symbolic link inside the root.

        A file it creates (``O_CREAT``) gets exactly the file mode of :attr:`modes` (with
        ``unsynced``, and the mark of :mod:`castore.file.namesync`). Inside the root,
        opens never block and a FIFO or device is refused (:func:`regular`).
        """
        folder, _, name = path.rpartition("/")
        cached = self._dirs.get(folder)  # only directories at or below the root are cached
        if cached is not None and name not in _NOT_NAMES and not flags & os.O_CREAT:
            try:
                opened = os.open(name, flags | _FILE_FLAGS, dir_fd=cached)
            except OSError as exc:
                raise refused(exc, cached, name, path) from None
            return regular(opened, path, flags, (cached, name))
        where = self._where(path)
        if where is None:
            return self._open_at(None, path, flags | os.O_CLOEXEC, UNSYNCED * unsynced)
        fd, name, owned = where
        try:
            opened = self._open_at(fd, name, flags | _FILE_FLAGS, UNSYNCED * unsynced)
            return regular(opened, path, flags, (fd, name))
        except OSError as exc:
            raise refused(exc, fd, name, path) from None
        finally:
            if owned:
                os.close(fd)

    def _open_at(self, dir_fd: int | None, name: str, flags: int, mark: int = 0) -> int:
        if flags & os.O_CREAT:  # exactly its mode, whatever the umask
            owner = self.owner if dir_fd is not None else None  # outside the root: the process's
            return create_file(dir_fd, name, flags, self.modes.file | mark, owner)
        return os.open(name, flags, dir_fd=dir_fd)

    def read_file(self, path: str, limit: int = -1) -> bytes:
        """The bytes of a regular file (at most ``limit`` when given)."""
        fd = self.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size if limit < 0 else limit
            return read_at(fd, 0, size)
        finally:
            os.close(fd)

    def stat(self, path: str, folder: str | None = None, name: str = "") -> os.stat_result:
        """``lstat``, never following a link; ``folder``, ``name``: ``path.rpartition("/")``."""
        if folder is None:
            folder, _, name = path.rpartition("/")
        cached = self._dirs.get(folder)  # only directories at or below the root are cached
        if cached is not None and name not in _NOT_NAMES:
            return os.stat(name, dir_fd=cached, follow_symlinks=False)
        fd, name, owned = self._where(path) or (None, path, False)
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        finally:
            if owned and fd is not None:
                os.close(fd)

    def names(self, path: str, fd: int) -> os.stat_result | None:
        """``fstat`` of ``fd`` if ``path`` still names that file (a rename may replace it)."""
        try:
            now, mine = self.stat(path), os.fstat(fd)
        except FileNotFoundError:
            return None
        return mine if (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev) else None

    def exists(self, path: str) -> bool:
        """True if ``path`` names anything (a symbolic link included)."""
        with contextlib.suppress(FileNotFoundError):
            return bool(self.stat(path))
        return False

    def isdir(self, path: str) -> bool:
        """True if ``path`` is a directory (not a link to one)."""
        try:
            return stat.S_ISDIR(self.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def listdir(self, path: str) -> list[str]:
        """Names in a directory below the root (never through a link)."""
        if not (path + "/").startswith(self._prefix):
            return os.listdir(path)
        fd, owned = self._dir_fd(path.rstrip("/"))
        try:
            return fileio.listdir_at(fd)
        finally:
            if owned:
                os.close(fd)

    def unlink(self, path: str) -> None:
        """Remove a file (a link itself, never its target)."""
        with self._at(path) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def replace(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` over ``dst`` (both in the same directory tree)."""
        with self._at(src) as (sfd, sname), self._at(dst) as (dfd, dname):
            os.replace(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)

    def link(self, src: str, dst: str) -> None:
        """Hard-link ``src`` as ``dst`` (fails if ``dst`` exists)."""
        with self._at(src) as (sfd, sname), self._at(dst) as (dfd, dname):
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)

    def append(self, fd: int, data: bytes, *, durable: bool) -> None:
        """Write all of ``data`` at the end of ``fd`` (fdatasync'd if ``durable``)."""
        append(fd, data, durable=durable)

    def fsync_dir(self, path: str) -> None:
        """Fsync a directory so that entries created in it survive a power loss."""
        outside = not (path + "/").startswith(self._prefix)  # a link the user chose: followed
        fd, owned = (os.open(path, _OUT_FLAGS), True) if outside else self._dir_fd(path.rstrip("/"))
        try:
            os.fsync(fd)
        finally:
            if owned:
                os.close(fd)

    def makedirs(self, path: str, *, durable: bool) -> None:
        """Create ``path`` and missing parents; fsync each parent of a new directory."""
        if not (path + "/").startswith(self._prefix):
            makedirs_plain(path, self.modes.dir, durable=durable)
            return
        if path.rstrip("/") + "/" == self._prefix:
            return
        fd, owned = self._dir_fd(path.rstrip("/"), create=True, durable=durable)
        if owned:
            os.close(fd)

    @exits.contextmanager
    def open_locked(
        self,
        path: str,
        flags: int,
        *,
        timeout: float = LOCK_TIMEOUT_SECONDS,
        pauses: tuple[float, float] = SHORT_PAUSES,
        shared: bool = False,
        unsynced: bool = False,
    ) -> Iterator[int]:
        """Open ``path``; hold its flock (exclusive unless ``shared``) on the file it names *now*.

        A log may be replaced by rename (compaction, repair, import) while we wait for its
        lock (``pauses``: :func:`~castore.file.fileio.lock`), so with the lock we check that
        the path still names our file (appends to the old one would be lost), else retry;
        LockTimeoutError when the lock is not taken within ``timeout`` seconds.
        """
        deadline, left = time.monotonic() + timeout, timeout  # an error names ``timeout``
        while True:
            fd = self.open(path, flags, unsynced=unsynced)
            try:
                with locked(fd, path, shared=shared, timeout=left, pauses=pauses):
                    if self.names(path, fd):
                        yield fd
                        return
            finally:
                os.close(fd)
            left = max(0.0, deadline - time.monotonic())  # replaced meanwhile: what is left


UNCONFINED = Tree(None)  # file operations on paths outside any store (plain system calls)
