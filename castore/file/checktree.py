"""The checks of a store's tree outside the logs: GRAVES, the blob index, planted files.

Part of ``check`` (castore/file/check.py), which passes its checker in: findings
and repairs follow the same rules (docs/FORMAT.md §5, §7).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from typing import TYPE_CHECKING, Final, Protocol

from castore.errors import CastoreError, LockTimeoutError, UnsafePathError
from castore.file.blobindex import decode_loc
from castore.file.frames import Frame, classify, scan_frames
from castore.file.graves import Graveyard, floor_after_damage
from castore.file.putback import put_back
from castore.file.records import (
    KIND_COMPACTED,
    KIND_ENTRY,
    decode_compaction,
    decode_entry,
)
from castore.file.tree import Tree
from castore.keys import file_id
from castore.records import OP_DAMAGED, VersionRanges

if TYPE_CHECKING:
    from castore.file.backend import FileBackend

__all__ = [
    "Checking",
    "check_graves",
    "check_index",
    "frames_of",
    "planted",
]


_RENAME_EXCHANGE: Final = 2  # linux/fs.h


class Checking(Protocol):
    """What these checks need of the checker that runs them."""

    fs: Tree
    backend: FileBackend
    repair: bool
    top: dict[str, int]
    unindexed: int

    def found(
        self, path: str, problem: str, repair: str, repaired: bool = False, severity: str = "error"
    ) -> None:
        """Record one finding."""

    def quarantine(self, path: str) -> str:
        """Where repair keeps the original of ``path``."""


def planted(
    checker: Checking,
    path: str,
    *,
    file: bool = False,
    directory: bool = False,
    replacement: bytes | None = None,
) -> bool:
    """Report (and with repair, remove) what castore never opens, planted in the store.

    A symbolic link, FIFO, socket or device anywhere; with ``file``, also a
    directory where castore reads a file; with ``directory``, anything but
    a directory where castore keeps one. Repair removes a link or special
    file (a link's target is not touched) and moves a directory or regular
    file, whatever it holds, to quarantine; ``replacement``, if given,
    takes the name at once (renamed over a link or special file, so the
    name is never missing).
    """
    try:
        st = checker.fs.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    mode = st.st_mode
    if stat.S_ISREG(mode) and not directory and st.st_nlink > 1:
        return _linked(checker, path, st.st_nlink)
    if (stat.S_ISDIR(mode) and not file) or (stat.S_ISREG(mode) and not directory):
        return False
    if stat.S_ISLNK(mode):
        problem = "a symbolic link planted in the store (castore never follows one)"
        repair = "remove the link (its target is not touched)"
    elif stat.S_ISDIR(mode):
        problem, repair = "a directory in place of a file of the store", "move it to quarantine"
    elif stat.S_ISREG(mode):
        problem, repair = "a file in place of a directory of the store", "move it to quarantine"
    else:
        problem = "a FIFO, socket or device planted in the store (castore never opens one)"
        repair = "remove it"
    if replacement is not None:
        repair += "; write a new GRAVES holding a floor above every version seen here"
    checker.found(path, problem, repair, checker.repair)
    if not checker.repair:
        return True
    kept = stat.S_ISDIR(mode) or stat.S_ISREG(mode)
    if replacement is not None and stat.S_ISDIR(mode):
        _replace_directory(checker, path, replacement)
        return True
    if kept:
        _to_quarantine(checker, path)
    if replacement is not None:
        checker.fs.atomic_write(path, replacement, durable=True)  # renamed over it
    elif not kept:
        checker.fs.unlink(path)
    return True


def _linked(checker: Checking, path: str, links: int) -> bool:
    """Report (and with repair, end) a store file that has other names, maybe outside it.

    Writers refuse such a file (:func:`castore.file.modes.regular`): castore
    must never change a file outside the store through a hard link. Repair
    gives the name a copy of its own, renamed over it; the other names, and
    the file they name, are not touched.
    """
    folder, name = os.path.split(path)
    mine = checker.fs.stat(path)
    for entry in checker.fs.listdir(folder) if links == 2 else []:
        other = os.path.join(folder, entry)
        if entry.startswith(f".{name}.") and entry.endswith(".tmp"):
            with contextlib.suppress(OSError):
                if checker.fs.stat(other).st_ino == mine.st_ino:  # a killed create_once's
                    problem = f"a second name, {entry}, left by a process killed creating it"
                    checker.found(path, problem, "remove that name", checker.repair, "info")
                    if checker.repair:
                        checker.fs.unlink(other)
                    return False
    problem = f"a file with {links} hard links (another name, maybe outside the store, shares it)"
    checker.found(path, problem, "give it a copy of its own", checker.repair)
    if checker.repair:
        checker.fs.atomic_write(path, checker.fs.read_file(path), durable=True)
    return False  # the name still holds what it held: it is checked as usual


def _replace_directory(checker: Checking, path: str, data: bytes) -> None:
    """Put a file holding ``data`` in place of the directory at ``path``, then quarantine it.

    The two swap names in one ``renameat2(RENAME_EXCHANGE)``, so ``path`` is
    never missing (a writer reading ``GRAVES`` meanwhile sees the directory,
    and fails, or the new file). Where the kernel or file system cannot
    exchange, the directory is moved first and the file renamed in after it.
    """
    fs = checker.fs
    folder, name = os.path.split(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    fs.write_new(tmp, data, durable=True)
    if _exchange(fs, folder, os.path.basename(tmp), name):
        _to_quarantine(checker, tmp, like=path)  # the directory, under the temporary name
    else:
        _to_quarantine(checker, path)
        fs.replace(tmp, path)
    fs.fsync_dir(folder)


def _exchange(fs: Tree, folder: str, first: str, second: str) -> bool:
    """Swap the names ``first`` and ``second`` in ``folder`` atomically; False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc 2.28+ or not Linux
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    dfd = fs.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if renameat2(dfd, first.encode(), dfd, second.encode(), _RENAME_EXCHANGE) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err), os.path.join(folder, second))
    finally:
        os.close(dfd)


def _to_quarantine(checker: Checking, path: str, *, like: str | None = None) -> None:
    """Move ``path`` (a file or a directory) to this run's quarantine folder.

    Named after ``like`` (default: ``path``) plus ``.planted`` there: a
    repair of the same run may keep a copy of the file castore writes at
    that path under the plain name.
    """
    fs = checker.fs
    kept = checker.quarantine(like or path) + ".planted"
    folder = os.path.join(checker.backend.root, "quarantine")
    if path == folder:  # ``quarantine`` itself is not a directory: set it aside first
        aside = f"{folder}.{os.getpid()}.tmp"
        fs.replace(path, aside)
        fs.makedirs(os.path.dirname(kept), durable=True)
        fs.replace(aside, kept)
    else:
        fs.makedirs(os.path.dirname(kept), durable=True)
        fs.replace(path, kept)
    fs.fsync_dir(os.path.dirname(path))


def frames_of(fs: Tree, path: str) -> tuple[bytes, list[Frame]]:
    """A file's bytes and its intact frames."""
    data = fs.read_file(path)
    return data, list(scan_frames(data))


def check_graves(checker: Checking, nsdir: str) -> None:
    """GRAVES records must be intact (or covered by their twin); a repair sets a floor.

    Call after the namespace's logs were checked (``checker.top`` then holds
    the highest version seen in it).
    """
    path = os.path.join(nsdir, "GRAVES")
    if planted_graves(checker, nsdir):
        return
    graves = Graveyard(path, checker.fs)
    damage = graves.damage()
    if graves.floor:
        checker.found(
            path,
            f"a damaged grave record was replaced by a floor: keys re-created here "
            f"start above version {graves.floor}",
            "none: nothing left to recover",
            severity="info",
        )
    check_graves_against_logs(checker, nsdir, graves.records())
    if not damage:
        return
    start, end = damage[0]
    checker.found(
        path,
        f"damaged bytes: {end - start} bytes at offset {start} (last versions of removed keys)",
        "copy to quarantine, keep the intact records, add a floor above every version",
        checker.repair,
    )
    if checker.repair:
        data = checker.fs.read_file(path)
        known = max(graves.highest(), checker.top.get(nsdir, 0))
        damaged = b"".join(data[s:e] for s, e in damage)
        graves.repair(floor_after_damage(known, damaged), checker.quarantine(path), durable=True)


def planted_graves(checker: Checking, nsdir: str) -> bool:
    """Report something other than a file in place of GRAVES; repair puts a floor there.

    What it held is unknown, so the new GRAVES holds a generous floor above
    every version seen in the namespace: a key re-created there starts above
    it and never repeats a version of a removed life (docs/FORMAT.md §7).
    """
    path = os.path.join(nsdir, "GRAVES")
    floor = floor_after_damage(checker.top.get(nsdir, 0), b"")
    return planted(checker, path, file=True, replacement=Graveyard.floor_bytes(floor))


def check_graves_against_logs(checker: Checking, nsdir: str, records: dict[str, int]) -> None:
    """A re-created key's versions must all be above its grave (versions never repeat).

    Versions at or below the grave are fine only as the removed life itself,
    still in the log when compaction stopped between GRAVES and the rewrite
    (its tombstone is the grave version); one that the log's ``C`` frame
    names as dropped is always a repeat.
    """
    for key, last in sorted(records.items()):
        path = os.path.join(nsdir, file_id(key) + ".log")
        try:
            _, frames = frames_of(checker.fs, path)
        except (FileNotFoundError, UnsafePathError):
            continue
        entries = [
            e
            for e in (decode_entry(f.payload) for f in frames if f.kind == KIND_ENTRY)
            if e.op != OP_DAMAGED  # a lost range is a bound, not a stored version
        ]
        dropped = VersionRanges(
            (low, high)
            for f in frames
            if f.kind == KIND_COMPACTED
            for low, high in decode_compaction(f.payload).versions
        )
        if entries and put_back(entries[-1], last):
            continue  # an older copy of the log: reported with it (castore.file.checkremoved)
        old_life = any(e.version == last and not e.live for e in entries)
        repeats = [
            e.version
            for e in entries
            if e.version in dropped or (e.version <= last and not old_life)
        ]
        if repeats:
            checker.found(
                path,
                f"version {repeats[0]} repeats a version of the key's removed life "
                f"(GRAVES: {last})",
                "none: the versions are already stored",
            )


def check_index(checker: Checking) -> None:
    """The newest index record of each digest must point at a valid copy.

    Older records that a later one supersedes (after a log rewrite) are
    harmless hints and are not reported.
    """
    backend = checker.backend
    stale = 0
    folder = os.path.join(checker.backend.root, "index")
    fs = checker.fs
    for name in sorted(fs.listdir(folder)) if fs.isdir(folder) else []:
        if not name.endswith(".idx") or planted(checker, os.path.join(folder, name), file=True):
            continue
        try:
            shard = classify(fs.read_file(os.path.join(folder, name)))
        except FileNotFoundError:
            continue  # gc replaced the index meanwhile (it rebuilds it whole)
        frames = shard.frames
        stale += bool(shard.damage) or shard.torn < shard.size
        newest = {f.payload[:32]: f.payload for f in frames}
        for digest, payload in newest.items():
            try:
                ok = backend.blob_reader.read_at(decode_loc(payload), -1, digest.hex()) is not None
            except CastoreError:
                ok = False
            except PermissionError:  # a log this user may not read: reported with that log
                ok = True
            stale += not ok
    rebuilt = False
    if checker.repair and (stale or checker.unindexed):
        try:  # holding gc.lock exclusively: no rewrite moves blobs meanwhile (FORMAT.md §8)
            backend.rebuild_blob_index()
            rebuilt = True
        except LockTimeoutError:
            checker.found(
                backend.layout.gc_lock,
                f"locked by another process for {backend.lock_timeout:g} s: "
                "the blob index was not rebuilt",
                "none: run check --repair again once that process ends",
            )
        except PermissionError as exc:  # a log this user may not read (reported with it)
            checker.found(
                folder,
                f"{os.path.relpath(exc.filename or folder, backend.root)} cannot be read "
                f"({exc.strerror}): the blob index was not rebuilt",
                "none: let the user castore runs as read it, then run check --repair again",
            )
    if stale:
        # Harmless (every location is verified before use; a stale one only costs a
        # chance to deduplicate), so reported as information.
        checker.found(
            folder,
            f"{stale} stale or damaged blob index records",
            "rebuild the index",
            rebuilt,
            severity="info",
        )
    if checker.unindexed:  # values it does not lead to: reads of them fail until rebuilt
        problem = f"the blob index does not lead to {checker.unindexed} intact value(s)"
        checker.found(folder, problem, "rebuild the index", rebuilt)
