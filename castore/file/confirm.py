"""A reader's evidence against a log, confirmed under the log's shared lock (FORMAT.md §7).

A reader judges a log's newest entry against a namespace file (``GRAVES``,
``STATE``) without the log's lock, so the two reads are not one state: a
write, a ``list`` or a compaction may run between them. Before it refuses
the log, it reads the newest entry again under the shared lock, on the file
the path still names, and judges that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from castore.file import fileio
from castore.file.logread import newest_in
from castore.file.tree import Tree
from castore.records import Entry

__all__ = ["confirmed"]

T = TypeVar("T")


def confirmed(
    fs: Tree, path: str, fd: int, timeout: float, judge: Callable[[Entry | None], T | None]
) -> T | None:
    """``judge`` of the newest entry of the log on ``fd``, read again under its shared lock.

    None if ``path`` no longer names the file on ``fd`` (rewritten or
    removed since it was read: that read stands), else what ``judge``
    returns (None: no evidence left).
    """
    with fileio.locked(fd, path, shared=True, timeout=timeout):  # no writer in flight
        if fs.names(path, fd) is None:
            return None
        return judge(newest_in(fd))
