"""A log that ends below the version its namespace's ``STATE`` records (FORMAT.md §7).

``list`` records each key's newest version in ``STATE``, read under the
log's shared lock, and a writer marks its key pending there before it
changes the log; a later pending mark never lowers what was recorded. A
key's newest version only grows (an import's overwrite may not take
versions back; compaction that removes a key records its last version in
``GRAVES`` first), and ``STATE`` is trusted only within the boot that wrote
it. So a log that ends below the version ``STATE`` records, above the key's
grave, lost acknowledged bytes: cut short, or an older copy of the log
(with its ``.vix``) put back. Serving it would answer an older version as
current, and writing to it would give versions again; ``check --repair``
records the versions it lost.

A reader's tail read and its ``STATE`` read are not one state: a write and
a ``list`` may run between them. So a reader that sees the evidence
confirms it under the log's shared lock, on the file the path still names;
a writer holds the lock already.
"""

from __future__ import annotations

from castore.errors import CorruptionError
from castore.file.confirm import confirmed
from castore.file.damage import REPAIR_HINT
from castore.file.graves import Graveyard
from castore.file.statefile import StateIndex
from castore.file.tree import Tree
from castore.keys import Ref
from castore.records import Entry

__all__ = ["refuse_behind_state"]


def _behind(state: StateIndex, graves: Graveyard, key: str, newest: Entry) -> int:
    """The version ``STATE`` records of ``key`` if above ``newest`` and its grave, else 0.

    The key's own grave: a log holding an entry is that key's own life, and a
    repair's floor (where a re-created key starts) would cover every cut below it.
    """
    top = state.recorded().get(key, 0)
    if top <= newest.version or top <= graves.recorded(key):
        return 0
    return top


def refuse_behind_state(
    state: StateIndex,
    graves: Graveyard,
    fs: Tree,
    ref: Ref,
    path: str,
    newest: Entry | None,
    fd: int,
    timeout: float,
) -> None:
    """Raise if ``ref``'s log at ``path``, ending with ``newest``, is behind ``STATE``.

    ``fd``: the log read (-1: the caller holds its lock, so the two reads
    are one state). A log without entries is judged apart (a lost log). One
    look at the handle's parsed ``STATE`` when nothing changed; only
    evidence costs more.

    Raises:
        CorruptionError: ``STATE`` records a version the log no longer holds.
    """
    if newest is None:
        return
    top = _behind(state, graves, ref.key, newest)
    if not top:
        return
    if fd >= 0:

        def still(again: Entry | None) -> tuple[Entry, int] | None:
            top = _behind(state, graves, ref.key, again) if again is not None else 0
            return (again, top) if again is not None and top else None

        found = confirmed(fs, path, fd, timeout, still)
        if found is None:
            return
        newest, top = found
    raise CorruptionError(
        f"{ref}: {path} ends with version {newest.version}, but the namespace's STATE "
        f"records version {top} (acknowledged bytes were cut off, or an older copy of "
        f"the log was put back); {REPAIR_HINT}"
    )
