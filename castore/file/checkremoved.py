"""Check and repair of the logs of keys that compaction removed (docs/FORMAT.md §5, §7).

Part of ``check`` (castore/file/check.py). Compaction records a removed
key's last version (its tombstone) in the namespace's ``GRAVES`` first, then
rewrites the log to its header, a ``C`` frame naming every version and its
blob frames, which gc removes. Two things can then be wrong:

* ``GRAVES`` lacks the version the ``C`` frame names (lost or older): the
  record is written again, so a re-created key continues above it;
* the log holds entries again, all at or below the grave and not ending
  with the grave's own tombstone (:func:`~castore.file.putback.put_back`):
  an older copy of the log was put back. Readers and writers refuse it; the
  repair keeps the original in quarantine and rewrites the log as compaction
  left it, so the key reads as removed and continues above its grave (with
  the versions of a later life the copy hides recorded as lost).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from castore.backend import lost_marker
from castore.errors import UnsafePathError
from castore.file.frames import Frame, LogBytes
from castore.file.graves import floor_after_damage
from castore.file.putback import marked_compacted, newest_in, put_back
from castore.file.records import (
    KIND_COMPACTED,
    KIND_ENTRY,
    KIND_HEADER,
    Header,
    decode_compaction,
    decode_entry,
    encode_record,
)
from castore.file.rewrite import removed_log
from castore.keys import Ref, file_id
from castore.records import Entry

if TYPE_CHECKING:
    from castore.file.checklog import LogChecker

__all__ = ["check_put_back", "check_removed", "names_path"]

_POLICY = "check --repair: an older copy of a removed key's log"


def check_removed(
    checker: LogChecker, path: str, header: Header, frames: list[Frame], grave: int
) -> None:
    """A log compaction emptied names the key's versions: GRAVES must hold the last one."""
    done = next((f for f in frames if f.kind == KIND_COMPACTED), None)
    if done is None:
        return
    top = max((high for _, high in decode_compaction(done.payload).versions), default=0)
    if top <= grave:
        return
    ref = f"{header.scope}/{header.namespace}/{header.key}"
    checker.found(
        path,
        f"GRAVES lacks the last version ({top}) of {ref}, which compaction removed",
        "record it in GRAVES",
        checker.repair,
    )
    nsdir = os.path.dirname(path)
    checker.top[nsdir] = max(checker.top.get(nsdir, 0), top)  # for a floor, if GRAVES needs one
    if checker.repair:
        with contextlib.suppress(UnsafePathError):  # planted: replaced by a floor above top
            checker.backend.graveyard(header.scope, header.namespace).bury([(header.key, top)])


def names_path(refs: str, path: str, scope: str, h: Header) -> bool:
    """True if header ``h`` names the ref whose log is at ``path`` (``scope``, below ``refs``)."""
    expected = os.path.join(refs, h.scope, file_id(h.namespace), file_id(h.key))
    return h.scope == scope and expected + ".log" == path


def check_put_back(
    checker: LogChecker,
    path: str,
    scope: str,
    header: Header | None,
    entries: list[Entry],
    lost: int,
    keys: set[str],
) -> bool:
    """Report (and repair) an older copy of a removed key's log; True if this log is one.

    ``header``: the log's (or the one recovered for it; None: unknown);
    another key's log in this one's place is reported apart, never repaired
    as a copy. ``entries``: its intact entries, the newest last (damage or a
    torn tail after them goes with the copy); ``lost``: the highest version its ``.vix`` or
    ``STATE`` records that it no longer holds; ``keys``: the namespace's
    ``KEYS``. The copy hides any life the key had after its grave: one is
    proven by such evidence above the grave, and suspected when ``KEYS``
    lists the key (compaction took it out) or is missing. Its versions are
    then lost, and how many there were is unknown, so the repair records
    them as lost up to a generous bound (as for a lost ``GRAVES``).
    """
    if header is None or not entries or not names_path(checker.backend.refs, path, scope, header):
        return False
    newest = entries[-1]
    grave = checker.graves(os.path.dirname(path)).recorded(header.key)
    compacted = functools.partial(marked_compacted, checker.fs, path)
    if not put_back(newest, grave, compacted) or not _still(checker, path, grave, compacted):
        return False
    ref = f"{header.scope}/{header.namespace}/{header.key}"
    nsdir = os.path.dirname(path)
    _, recorded, _, _ = checker.recorded.get(path, ("", 0, False, False))
    listed = header.key in keys or not checker.keys_kept
    lived = max(lost, recorded) > grave or listed
    known = max(grave, lost, recorded, checker.top.get(nsdir, 0))
    bound = floor_after_damage(known, b"") if lived else 0
    problem = (
        f"the log of {ref} ends with version {newest.version}, but compaction removed the "
        f"key after version {grave} (GRAVES): an older copy of the log was put back"
    )
    repair = "copy the log to quarantine, rewrite it as compaction leaves a removed key's log"
    if lived:
        problem += "; the key lived again after its grave (KEYS, STATE or its index), so "
        problem += "the versions of that life are lost"
        repair += f", with versions {grave + 1} to {bound} recorded as lost"
    checker.found(path, problem, repair, checker.repair)
    if not checker.repair:
        return True
    _repair_put_back(checker, path, header, grave, bound, compacted)
    return True


def _repair_put_back(
    checker: LogChecker,
    path: str,
    header: Header,
    grave: int,
    bound: int,
    compacted: Callable[[int], bool],
) -> None:
    """Rewrite the copy as compaction leaves a removed key's log (original in quarantine).

    With ``bound``, versions above the grave up to it are recorded as lost
    (the key lived again), and ``KEYS`` lists the key.
    """
    reason = f"an older copy of the log was put back; {checker.rel(checker.quarantine(path))}"

    def transform(log: LogBytes) -> list[tuple[int, bytes]] | None:
        entries = [decode_entry(f.payload) for f in log.frames if f.kind == KIND_ENTRY]
        if not entries or not put_back(max(entries, key=lambda e: e.version), grave, compacted):
            return None  # changed since it was read: the next check looks again
        frames = removed_log(log.frames, [(1, grave)], _POLICY)
        if not frames or frames[0][0] != KIND_HEADER:  # damaged: the one recovered
            frames.insert(0, (KIND_HEADER, encode_record(header)))
        if bound:
            marker = lost_marker(grave + 1, bound, time.time_ns(), reason)
            frames.append((KIND_ENTRY, encode_record(marker)))
        return frames

    try:
        new = checker.backend.rewrite(path, transform, keep_copy=checker.quarantine(path))
    except UnsafePathError as exc:  # a link planted under quarantine/: this log only
        checker.unrepaired(path, f"not repaired: {exc.detail}")
        return
    if new and bound:  # lost versions: the key exists
        ref = Ref(header.scope, header.namespace, header.key)
        checker.backend.names.list_key(ref, durable=True)


def _still(checker: LogChecker, path: str, grave: int, compacted: Callable[[int], bool]) -> bool:
    """Whether the log's tail, read now under its shared lock, still ends below ``grave``.

    Check read the log before ``GRAVES``: a delete and a compaction may have
    run between (the key's grave, then the log rewritten without entries).
    ``GRAVES`` then the log, each read after the other, are one state.
    """
    try:
        with checker.fs.open_locked(path, os.O_RDONLY, timeout=checker.timeout, shared=True) as fd:
            return put_back(newest_in(fd), grave, compacted)
    except FileNotFoundError:
        return False
