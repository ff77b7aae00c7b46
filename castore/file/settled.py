"""Keys' newest versions recorded in their namespace's ``STATE`` after a list read them.

A ``list`` that read logs ``STATE`` did not vouch for records their newest
entries, so the next one reads one file (docs/FORMAT.md §5, ``STATE``). Only
a log no writer holds is recorded, read under its shared lock on the file
its path still names (device and inode: overlayfs), and never one that is
damaged or an older copy put back.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable

from castore.errors import CorruptionError
from castore.file import fileio
from castore.file.namespaces import Namespaces
from castore.file.readcache import ReadCache, stat_sig
from castore.file.reflog import RefLog
from castore.keys import Ref

__all__ = ["remember"]


def remember(
    names: Namespaces, log_of: Callable[[Ref], RefLog], cache: ReadCache, at: Ref, keys: list[str]
) -> None:
    """Record in ``STATE`` the newest versions of ``keys`` of ``at``'s namespace.

    A key whose log a writer holds, is damaged or put back is left out.
    """
    state = names.state(at.scope, at.namespace)
    if state.known() is None:
        return
    for key in keys:
        ref = Ref(at.scope, at.namespace, key)
        log = log_of(ref)
        with contextlib.suppress(OSError, CorruptionError):
            fd = log.open()
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # no writer in flight
                if (st := log.layout.fs.names(log.path, fd)) is None:  # device and inode
                    continue  # replaced since it was opened: that lock excludes no writer
                hit = cache.get(log.path)  # list's read, if nothing changed since
                seen = hit[1] if hit is not None and hit[0] == stat_sig(st) else None
                entry = seen.entry if seen else log.settled_tail(fd, locked=True).entry
                names.not_put_back(ref, log.path, entry)
                state.settled(key, entry)
            finally:
                fileio.unlock_and_close(fd)  # a child forked meanwhile has fd: unlocked
