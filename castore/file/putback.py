"""An older copy of a removed key's log, put back: evidence in ``GRAVES`` (FORMAT.md §7).

Compaction records a removed key's last version (its tombstone) in the
namespace's ``GRAVES`` under the log's lock, then rewrites the log without
entries (gc removes it). A log at that path whose newest entry is at or
below the grave, other than that very tombstone, is a copy from before the
removal: serving it would answer an older version as current, and writing
to it would give the tombstone's version again.

A reader's tail read and its ``GRAVES`` read are not one state: a delete and
a compaction may run between them. So a reader that sees the evidence
confirms it under the log's shared lock, on the file the path still names
(:func:`refuse_put_back`); the writer holds the lock already.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from castore.errors import CastoreError, CorruptionError
from castore.file.confirm import confirmed
from castore.file.damage import REPAIR_HINT
from castore.file.graves import Graveyard
from castore.file.logread import newest_in
from castore.file.tree import Tree
from castore.file.versionindex import COMPACTED, lookup, vix_path
from castore.keys import Ref
from castore.records import Entry

__all__ = ["marked_compacted", "newest_in", "put_back", "refuse_put_back"]


def put_back(
    newest: Entry | None, grave: int, compacted: Callable[[int], bool] | None = None
) -> bool:
    """True if a log ending with ``newest`` is an older copy of one its key's grave removed.

    The log may still end with the grave's own tombstone (a compaction
    stopped between ``GRAVES`` and its rewrite); a re-created key's log
    ends above it. A log ending anywhere else at or below the grave was put
    back from before the removal; so was one ending with that tombstone if
    its version index marks the tombstone dropped by compaction
    (``compacted``: asked only then), which only a completed removal does.
    """
    if newest is None or newest.version > grave:
        return False
    if newest.version < grave or newest.live:
        return True
    return compacted is not None and compacted(grave)


def marked_compacted(fs: Tree, path: str, version: int) -> bool:
    """Whether the version index of the log at ``path`` marks ``version`` compacted."""
    try:
        fd = fs.open(vix_path(path), os.O_RDONLY)
    except (FileNotFoundError, CastoreError):  # none, or something planted: no evidence
        return False
    try:
        return lookup(fd, version) == COMPACTED
    finally:
        os.close(fd)


def refuse_put_back(
    graves: Graveyard, fs: Tree, ref: Ref, path: str, newest: Entry | None, fd: int, timeout: float
) -> None:
    """Raise if ``ref``'s log at ``path``, ending with ``newest``, is an older copy put back.

    ``graves``: its namespace's; ``fd``: the log read (-1: the caller holds
    its lock, so the two reads are one state). One ``stat`` of ``GRAVES``
    when nothing changed; only evidence costs more.

    Raises:
        CorruptionError: the log is older than its key's removal.
    """
    if newest is None:  # no entry: nothing put back (a lost log is judged apart)
        return
    grave = graves.recorded(ref.key)
    if not grave:  # the common case: no grave names the key
        return
    compacted = functools.partial(marked_compacted, fs, path)
    if not put_back(newest, grave, compacted):
        return
    if fd >= 0:

        def still(again: Entry | None) -> tuple[Entry | None, int] | None:
            now = graves.recorded(ref.key)
            return (again, now) if put_back(again, now, compacted) else None

        found = confirmed(fs, path, fd, timeout, still)
        if found is None:
            return
        newest, grave = found
    version = newest.version if newest is not None else 0  # put_back(): never None
    raise CorruptionError(
        f"{ref}: {path} ends with version {version}, but compaction removed the key "
        f"after version {grave} (GRAVES): an older copy of the log was put back; {REPAIR_HINT}"
    )
