"""A namespace's keys and name as its logs' headers give them, for a ``KEYS`` lost or damaged.

``KEYS`` lists a namespace's keys and names the namespace (FORMAT.md §5); it is
made before the namespace's first log, and every key is listed before its log is
made. So a namespace directory whose ``KEYS`` is missing or empty while it holds
logs lost it (damage), as did one whose ``KEYS`` names no namespace or another one:
the logs' header frames then say which keys and which namespace, so that damage to
``KEYS`` never hides a key (``list``, ``export``, ``compact``) or the namespace.
And, for ``check``, whether ``KEYS`` lists a key, read under its log's lock.
"""

from __future__ import annotations

import contextlib
import os

from castore.errors import CastoreError, UnsafePathError
from castore.file import logread
from castore.file.keyindex import KeyIndex
from castore.file.tree import Tree
from castore.keys import file_id

__all__ = ["keys_from_logs", "keys_lost", "listed_now", "namespace_from_logs"]


def keys_lost(fs: Tree, nsdir: str) -> bool:
    """True if a namespace directory exists with its ``KEYS`` missing or empty (lost: damage).

    A namespace's first write makes ``KEYS`` before its log and lists its key in it
    first, so such a directory holds no key, or lost them; its logs' headers then say
    which (a listing being made at this moment costs one directory read too many).
    """
    try:
        return not fs.stat(os.path.join(nsdir, "KEYS")).st_size
    except FileNotFoundError:
        return fs.isdir(nsdir)


def keys_from_logs(fs: Tree, nsdir: str, namespace: str, prefix: str) -> set[str]:
    """Keys named by the header frames of a namespace's logs (a full directory read).

    Not a key compaction removed, whose log (a ``C`` frame, waiting for gc)
    ends without an entry: ``KEYS`` no longer lists it either.
    """
    try:
        names = fs.listdir(nsdir)
    except FileNotFoundError:
        return set()
    out = set()
    for name in names:
        if not name.endswith(".log"):
            continue
        try:
            fd = fs.open(os.path.join(nsdir, name), os.O_RDONLY)
        except OSError:
            continue
        try:
            head = logread.header_of(fd)
            if head is not None and logread.compaction_of(fd) is not None:
                tail = logread.read_tail(fd, os.fstat(fd).st_size)
                head = head if tail is not None and tail.entry is not None else None
        finally:
            os.close(fd)
        if (
            head is not None
            and head.namespace == namespace
            and file_id(head.key) + ".log" == name
            and head.key.startswith(prefix)
        ):
            out.add(head.key)
    return out


def namespace_from_logs(fs: Tree, nsdir: str) -> str | None:
    """The namespace the first log header in ``nsdir`` names that matches its name."""
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(fs.listdir(nsdir)):
            if name.endswith(".log"):
                with contextlib.suppress(OSError, CastoreError):
                    fd = fs.open(os.path.join(nsdir, name), os.O_RDONLY)
                    try:
                        head = logread.header_of(fd)
                    finally:
                        os.close(fd)
                    if head is not None and file_id(head.namespace) == os.path.basename(nsdir):
                        return head.namespace
    return None


def listed_now(fs: Tree, log_path: str, key: str, timeout: float, file: tuple[int, int]) -> bool:
    """True if the ``KEYS`` beside ``log_path`` lists ``key``, read under the log's shared lock.

    For ``check``, whose copy of ``KEYS`` may predate a key (a write lists it
    before its commit point): under the lock no compaction is between removing
    the line and replacing the log. True if the path no longer names ``file``
    (the ``(device, inode)`` check read: a compaction replaced or removed it
    since, so what check read is no longer the key's state).
    """
    keys_file = os.path.join(os.path.dirname(log_path), "KEYS")
    try:
        with fs.open_locked(log_path, os.O_RDONLY, timeout=timeout, shared=True) as fd:
            st = os.fstat(fd)
            return (st.st_dev, st.st_ino) != file or key in KeyIndex(keys_file, fs)
    except FileNotFoundError:
        return True
    except UnsafePathError:
        return False  # KEYS is not a file (check reports it apart)
