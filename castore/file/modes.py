"""The permission bits of what a store creates, set exactly whatever the umask.

``private`` (the default): files 0600, directories 0700. ``group``: files
0660, directories 2770 (setgid, so everything below keeps the directory's
group), for a team that shares a store through a group. A store without a
chosen mode follows its root directory: ``group`` when the root is setgid
and group-writable, else ``private`` (docs/FORMAT.md §1). Each file or
directory castore creates is ``fchmod``-ed on its own descriptor right after
it was made, so the umask never widens or narrows it, and nothing castore
did not create is ever changed. And the other half of a mode: a store's files
are regular files (:func:`regular`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import stat
import time

from castore.errors import FormatVersionError, UnsafePathError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Final, NamedTuple

    class _ModesFields(NamedTuple):
        file: int
        dir: int

else:  # the same tuple type, without loading typing at run time
    _ModesFields = collections.namedtuple("_ModesFields", ("file", "dir"))

__all__ = [
    "DATA_UNSYNCED",
    "MODES",
    "PRIVATE",
    "UNSYNCED",
    "Modes",
    "create_file",
    "makedirs_plain",
    "modes_of_dir",
    "owner_below",
    "refused",
    "regular",
    "set_mode",
]


class Modes(_ModesFields):
    """The permission bits of the files and directories a store creates: (file, dir)."""

    __slots__ = ()


PRIVATE: Final = Modes(0o600, 0o700)
# Execute bits, which no store file has otherwise, mark a file whose name (owner's) or data
# (group's) may not be durable yet (castore/file/namesync.py, docs/FORMAT.md §6, "Names").
UNSYNCED: Final = stat.S_IXUSR
DATA_UNSYNCED: Final = stat.S_IXGRP
MODES: Final = {  # by name: Store(mode=), --mode, $CASTORE_MODE
    "private": PRIVATE,
    "group": Modes(0o660, 0o2770),
}
_CREATE_ATTEMPTS = 8  # open-or-create rounds while other processes create and remove a file


def modes_of_dir(st_mode: int) -> Modes:
    """The modes of a store whose root has ``st_mode`` and no chosen mode."""
    shared = st_mode & stat.S_ISGID and st_mode & stat.S_IWGRP
    return MODES["group"] if shared else PRIVATE


def owner_below(root_fd: int) -> tuple[int, int] | None:
    """Whom what castore creates below the store root open on ``root_fd`` must belong to.

    None (the process's own user) but for the superuser writing a store whose
    root another user owns (an administrator's ``check --repair``, say): then
    the root's owner and group, so that the store stays its owner's to write.
    """
    if os.geteuid() != 0:
        return None
    info = os.fstat(root_fd)
    return None if info.st_uid == 0 else (info.st_uid, info.st_gid)


def set_mode(fd: int, mode: int, owner: tuple[int, int] | None = None) -> None:
    """``fchmod`` (and ``fchown`` to ``owner``) what this process just created.

    ``fd`` is closed if that fails. The owner is changed first: a change of
    owner may clear a setgid bit.
    """
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def create_file(
    dir_fd: int | None, name: str, flags: int, mode: int, owner: tuple[int, int] | None = None
) -> int:
    """``os.open`` with ``O_CREAT``: a file this call creates gets ``mode`` (and ``owner``).

    An existing file is opened without ``O_CREAT`` (its mode is left alone);
    a missing one is created with ``O_EXCL``, so this call knows it made it.
    With ``O_EXCL`` in ``flags``, an existing file raises FileExistsError.
    """
    for _ in range(_CREATE_ATTEMPTS):
        if not flags & os.O_EXCL:
            try:
                return os.open(name, flags & ~os.O_CREAT, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        try:
            fd = os.open(name, flags | os.O_EXCL, mode, dir_fd=dir_fd)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            continue  # another process made it just now: open theirs
        set_mode(fd, mode, owner)
        return fd
    return os.open(name, flags & ~os.O_CREAT, dir_fd=dir_fd)


def makedirs_plain(path: str, mode: int, *, durable: bool) -> None:
    """``mkdir -p`` outside any store (the store directory the user chose, its parents).

    Each directory it makes gets ``mode`` exactly; with ``durable``, its
    parent is fsynced.

    Raises:
        FormatVersionError: a name on the way is a symbolic link to nothing (it
            would be followed into wherever it points, once that is made).
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    makedirs_plain(parent, mode, durable=durable)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if os.path.islink(path) and not os.path.exists(path):
            raise FormatVersionError(
                f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist: "
                "not a castore store (make the directory it names, or give another path)"
            ) from None
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    set_mode(fd, mode)
    os.close(fd)
    if durable:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def regular(fd: int, path: str, flags: int, where: tuple[int, str] | None = None) -> int:
    """``fd`` if it is a regular file (or anything opened with ``O_DIRECTORY``).

    Else it is closed and refused: a FIFO, socket or device planted in a store
    is never waited on or read, and a directory in place of a file is named
    as such rather than failing later with a bare EISDIR. A file opened for
    writing must have no other name: a hard link planted in a store may name
    a file outside it, which castore must never change. castore's own second
    name for a file lasts microseconds (:meth:`Tree.create_once` links a
    finished file into place, then removes its temporary name), so a file
    with more names is looked at again for up to :data:`_LINK_WAIT` seconds,
    and one whose second name is such a temporary name a crash left in its
    directory (``where``: its descriptor and the file's name) loses that name.

    Raises:
        UnsafePathError: a FIFO, socket, device or directory; a file opened for
            writing that has another name.
    """
    if flags & os.O_DIRECTORY:
        return fd
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and (info.st_nlink <= 1 or not flags & _WRITES):
        return fd
    if stat.S_ISREG(info.st_mode) and (
        _one_name_soon(fd) or (where is not None and _drop_own_temp(*where, info))
    ):
        return fd
    os.close(fd)
    if stat.S_ISREG(info.st_mode):
        raise UnsafePathError(
            f"{path} has {info.st_nlink} hard links; castore writes only files it alone names"
        )
    raise UnsafePathError(f"{path} is not a regular file; castore opens only files")


_WRITES = os.O_WRONLY | os.O_RDWR
_LINK_WAIT = 0.05  # seconds: far longer than Tree.create_once keeps its temporary name


def _drop_own_temp(dir_fd: int, name: str, info: os.stat_result) -> bool:
    """Remove the hidden temporary name ``.<name>.*.tmp`` a killed ``create_once`` left.

    True if the file then has one name. Only a second name in the same
    directory, of castore's own shape, is removed; never the file's own name.
    """
    if info.st_nlink != 2:
        return False
    own = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:  # not os.listdir(dir_fd): it shares the cached descriptor's position (fileio.listdir_at)
        names = os.listdir(own)
    finally:
        os.close(own)
    for entry in names:
        if entry.startswith(f".{name}.") and entry.endswith(".tmp"):
            with contextlib.suppress(OSError):
                other = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
                if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                    os.unlink(entry, dir_fd=dir_fd)
                    return True
    return False


def _one_name_soon(fd: int) -> bool:
    """True once the file open on ``fd`` has one name, within :data:`_LINK_WAIT`."""
    pause, waited = 0.001, 0.0
    while waited < _LINK_WAIT:
        time.sleep(pause)
        waited += pause
        if os.fstat(fd).st_nlink <= 1:
            return True
        pause *= 2
    return False


def refused(exc: OSError, parent: int, name: str, path: str) -> Exception:
    """What an open of ``name`` (in directory ``parent``; ``path`` for errors) that failed means.

    UnsafePathError for a symbolic link (ELOOP/ENOTDIR), a FIFO, device or
    directory opened as a file, and a file where a directory should be;
    else ``exc`` itself, naming ``path`` (not the name relative to ``parent``).
    """
    if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EISDIR):  # FIFO, device, directory
        return UnsafePathError(f"{path} is not a regular file; castore opens only files")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        with contextlib.suppress(OSError):
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                return UnsafePathError(f"{path} is a symbolic link; castore never follows one")
            if exc.errno == errno.ENOTDIR and not stat.S_ISDIR(mode):
                return UnsafePathError(
                    f"{path} is not a directory; castore keeps a directory there"
                )
    if exc.filename == name:  # "Permission denied: FORMAT" says neither store nor path
        exc.filename = path
    return exc
