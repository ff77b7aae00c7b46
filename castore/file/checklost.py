"""Check and repair of lost logs: a key's log gone while evidence of its versions remains.

Part of ``check`` (castore/file/check.py). Two kinds of evidence outlive a
log (docs/FORMAT.md §7): its version index (``.vix``), built from the log
only, and the namespace's ``STATE``, whose records a reader took from the
log. Compaction records a removed key's last version in ``GRAVES`` before it
removes the log, so either one recording a version above the key's grave
proves that the log held it. Such a log is reported, and repaired as a log
cut to nothing: one ``damaged`` entry up to the highest version, so versions
never repeat. An index that records nothing more is stale and removed.
The converse, a ``STATE`` whose settled record of a key is below its log's
newest entry, is an older copy of ``STATE`` (FORMAT.md §5): reported, and
repaired with a ``P`` for each such key. A ``STATE`` holding damaged bytes is
reported (information) and started again.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from castore.errors import CorruptionError, UnsafePathError
from castore.file import cuts, versionindex
from castore.file.frames import Frame
from castore.file.records import (
    KIND_COMPACTED,
    KIND_ENTRY,
    KIND_HEADER,
    decode_compaction,
    decode_header,
)
from castore.file.statefile import StateIndex
from castore.file.staterecords import STATE_NAME
from castore.file.tree import Tree
from castore.keys import file_id
from castore.reports import MAX_COUNT

if TYPE_CHECKING:
    from castore.file.checklog import LogChecker

__all__ = ["check_lost_log", "gone_logs", "note_behind", "recorded_logs", "report_behind"]


Recorded = tuple[str, int, bool, bool]  # recorded_logs' answer for one log
UNRECORDED: Recorded = ("", 0, False, False)


def recorded_logs(fs: Tree, nsdir: str, scope: str) -> dict[str, Recorded]:
    """Each log path of ``nsdir`` -> what a trusted ``STATE`` records of its key.

    The key, its highest recorded version, whether that is the key's last
    record (no ``P`` since: its log has not changed, FORMAT.md §5), and
    whether that last record is of a live version (the key was not removed
    since: a delete appends ``P`` first).
    """
    state = StateIndex(os.path.join(nsdir, STATE_NAME), fs, scope, "")
    try:
        settled = state.known() or {}
        return {
            os.path.join(nsdir, file_id(k) + ".log"): (k, v, k in settled, bool(settled.get(k)))
            for k, v in state.recorded().items()
            if v
        }  # settled: key -> a ListEntry (a Struct: true), or None for a delete
    finally:
        state.close()


def note_behind(checker: LogChecker, path: str, newest: int) -> None:
    """Note the key of ``path`` if ``STATE`` settled it below ``newest``, its log's newest entry.

    A change appends ``P`` before it changes the log (FORMAT.md §5), so a
    trusted ``STATE`` whose last record of the key is older than the log
    missed that ``P``: an older copy of the file, or a change by a castore
    from before ``STATE``, which appends none. ``STATE`` is read again
    first (one read), since a writer may have changed the log after the walk
    read it. ``newest`` 0: the log holds no entry (see :func:`report_behind`).
    """
    key, version, settled, _ = checker.recorded.get(path, UNRECORDED)
    if not settled or version >= newest:
        return
    state = StateIndex(os.path.join(os.path.dirname(path), STATE_NAME), checker.fs, "", "")
    try:
        if 0 < state.settled_version(key) < newest:  # one read: still settled, still below
            checker.behind.append(key)
    finally:
        state.close()


def report_behind(checker: LogChecker, nsdir: str) -> None:
    """Report a ``STATE`` that :func:`note_behind` found older; repair: ``P`` for its keys.

    The repair appends ``P`` for each such key, as a writer would have, so
    that ``list`` reads their logs; every other record stays, as evidence of
    the logs this run did not check or repair (FORMAT.md §7). (A key
    compaction removed is no harm: ``list`` asks ``STATE`` only for the keys
    ``KEYS`` lists.)
    """
    _report_damaged(checker, nsdir)
    behind, checker.behind = sorted(set(checker.behind)), []
    if not behind:
        return
    named = ", ".join(behind[:5]) + (f" and {len(behind) - 5} more" if len(behind) > 5 else "")
    problem = (
        f"an older copy of the file, or logs changed by a castore from before STATE "
        f"(2026-12-01): its last records of {named} name versions below "
        "their logs' newest (list answers older versions)"
    )
    repair = "append P for those keys (list reads their logs and records them again)"
    checker.found(os.path.join(nsdir, STATE_NAME), problem, repair, checker.repair)
    if checker.repair:
        state = StateIndex(os.path.join(nsdir, STATE_NAME), checker.fs, "", "")
        try:
            for key in behind:
                state.pending(key)
        finally:
            state.close()


def _report_damaged(checker: LogChecker, nsdir: str) -> None:
    """Report a ``STATE`` holding bytes that are no frame; repair: start it again, empty.

    Derived data (information): a damaged file is never trusted, and the next ``list``
    rewrites it from the logs. The repair keeps its bytes in quarantine.
    """
    path = os.path.join(nsdir, STATE_NAME)
    state = StateIndex(path, checker.fs, "", "")
    try:
        with contextlib.suppress(CorruptionError):  # a FIFO, a link: reported as planted
            state.known()
        if not state.damaged:
            return
        problem = "damaged bytes (derived data, never trusted: the next list rewrites it)"
        repair = "copy to quarantine, start the file again"
        checker.found(path, problem, repair, checker.repair, severity="info")
        if checker.repair:
            keep = checker.quarantine(path)
            checker.fs.makedirs(os.path.dirname(keep), durable=True)
            checker.fs.atomic_write(keep, checker.fs.read_file(path), durable=True)
            state.reset()
    finally:
        state.close()


def own_grave(
    checker: LogChecker,
    path: str,
    frames: list[Frame],
    grave: int,
    vix: bytes | None,
    keys: set[str],
) -> int:
    """Below which the log of ``frames`` can have lost nothing: ``grave`` (``grave_of``), or less.

    The key's own ``GRAVES`` record (or its log's ``C`` frame's last version,
    when above) for a log holding an entry, or whose index
    (``vix``, None: none) records an entry's offset above that record, or whose
    key ``STATE`` last recorded live above it: each is a life of the key
    (compaction marks the versions it drops compacted; a delete appends ``P``
    first), and a repair's floor (where a re-created key starts) would hide
    every version cut or damaged below it. Otherwise ``grave``: the floor
    stands for records the damage took (never below the ``C`` frame's versions,
    which a damaged ``GRAVES`` leaves no record of: not lost but removed).
    """
    key = _key_of(checker, path, frames, keys)
    if key is None:
        return grave
    own = max(checker.graves(os.path.dirname(path)).recorded(key), _compacted(frames))
    _, by_state, _, live = checker.recorded.get(path, UNRECORDED)
    if any(f.kind == KIND_ENTRY for f in frames) or (live and by_state > own):
        return own
    return own if vix is not None and cuts.cut_in(vix, frames) > own else max(grave, own)


def _compacted(frames: list[Frame]) -> int:
    """The highest version a ``C`` frame of ``frames`` names compacted (0: none).

    The versions compaction removed, named still when ``GRAVES`` lost the key's
    record (as readers count them: ``Namespaces.removed_at``).
    """
    return max(
        (
            high
            for f in frames
            if f.kind == KIND_COMPACTED
            for _, high in decode_compaction(f.payload).versions
        ),
        default=0,
    )


def _key_of(checker: LogChecker, path: str, frames: list[Frame], keys: set[str]) -> str | None:
    """The key of the log at ``path``: its header's, else the one ``KEYS`` or ``GRAVES`` names."""
    header = next((f for f in frames if f.kind == KIND_HEADER), None)
    if header is not None:
        return decode_header(header.payload).key
    known = set(keys)
    with contextlib.suppress(UnsafePathError):  # planted in place of GRAVES: reported
        known |= set(checker.graves(os.path.dirname(path)).records())
    return next((k for k in known if file_id(k) + ".log" == os.path.basename(path)), None)


def gone_logs(checker: LogChecker, keys: set[str]) -> list[tuple[str, str]]:
    """The logs ``STATE`` records above their key's grave, missing with their index.

    (path, key) each. A missing log whose index remains is found by the walk
    (``check_lost_log``); a key compaction removed is not lost.
    """
    fs, gone = checker.fs, []
    for path, (key, version, _, _) in sorted(checker.recorded.items()):
        if fs.exists(path) or fs.exists(versionindex.vix_path(path)):
            continue
        if version > _missing_grave(checker, path, None, keys | {key}):
            gone.append((path, key))
    return gone


def _missing_grave(checker: LogChecker, path: str, index: bytes | None, keys: set[str]) -> int:
    """:func:`own_grave` of a missing log whose index is ``index`` (None: none).

    While ``GRAVES`` holds damage no twin covers, a key with no life of its own
    there (only ``STATE``'s record, not of a live version) may be one whose
    record the damage took: its grave is above anything until this run's floor
    stands for it (a review found such a key judged lost by a record older than
    its delete, and its tombstone's version given again).
    """
    grave = checker.grave_of(path, [], keys)
    with contextlib.suppress(UnsafePathError):  # planted: reported by the walk
        if checker.graves(os.path.dirname(path)).damage():
            grave = MAX_COUNT
    return own_grave(checker, path, [], grave, index, keys)


def check_lost_log(checker: LogChecker, path: str, scope: str, keys: set[str]) -> None:
    """A log that is missing while its version index or ``STATE`` is not (``path``: the log's).

    Versions the evidence records above the key's grave were acknowledged
    and lost with the log: reported, and repaired as a log cut to nothing.
    An index that records nothing more is stale and removed.
    """
    vix, index = versionindex.vix_path(path), checker.vix_bytes(path)
    lost, why = checker.lost_evidence(path, index, [], _missing_grave(checker, path, index, keys))
    if not lost:
        checker.found(vix, "version index without its log", "remove it", checker.repair, "info")
        if checker.repair:
            with contextlib.suppress(FileNotFoundError):
                checker.fs.unlink(vix)
        return
    problem = f"missing, but {why} (lost)"
    repair = "record the lost versions as one damaged entry"
    known = checker.recover_header(path, scope, keys) is not None  # else nothing to rewrite
    if not checker.repair or not known:
        checker.found(path, problem, repair if known else "none: the log's key is unknown")
        return
    with contextlib.suppress(FileNotFoundError):  # the evidence, kept with the repair
        keep = checker.quarantine(vix)
        checker.fs.makedirs(os.path.dirname(keep), durable=True)
        checker.fs.atomic_write(keep, checker.fs.read_file(vix), durable=True)
    with contextlib.suppress(FileExistsError):  # then repaired as a log cut to nothing
        os.close(checker.fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    try:
        checker.check_log(path, scope, keys)
    except FileNotFoundError:  # a writer refused by the evidence removed it meanwhile
        checker.found(path, problem, f"{repair} (run again)")
