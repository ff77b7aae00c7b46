"""Integrity check and repair of a whole file store: the walk and its report.

``check`` walks every scope and namespace directory: each log is checked by
a :class:`~castore.file.checklog.LogChecker` (checksums and framing, blobs
against their digests, every live value findable and verified, headers
naming the refs their file names encode, versions increasing, the version
index in step), then the files outside the logs (``GRAVES``, ``KEYS``
headers, the blob index; castore/file/checktree.py). Each problem is a
:class:`~castore.reports.Finding` naming the file, what is wrong and what
repair does. ``repair=True`` truncates torn tails, moves damaged logs'
original bytes to ``quarantine/<time>/`` before rewriting them with only
their intact frames (never deleting anything silently), records the
versions they may have held as lost, and rebuilds derived files. A value
whose every copy is damaged cannot be repaired: its version stays in the
history and reading it keeps failing with a clear error.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from castore.backend import Progress
from castore.errors import LockTimeoutError, RecordError
from castore.file.checkkeys import check_keys_header
from castore.file.checklog import LogChecker
from castore.file.checklost import check_lost_log, gone_logs, recorded_logs, report_behind
from castore.file.checktree import check_graves, check_index, planted
from castore.file.keyindex import KeyIndex
from castore.reports import CheckReport

if TYPE_CHECKING:
    from castore.file.backend import FileBackend

__all__ = ["check"]

_FIRST_OR_LAST = ("KEYS", "STATE", "GRAVES")  # checked before the logs (GRAVES: after)
IN_FLIGHT_SECONDS = 60.0  # a temporary file changed this recently may be a write in flight


def _read_as_file(name: str) -> bool:
    """True for the names of a namespace directory that castore opens as files."""
    return name == "STATE" or name.endswith((".log", ".vix", ".tmp"))


def _checked(checker: LogChecker, path: str, run: Callable[..., None], *args: object) -> bool:
    """Check ``path`` with ``run(*args)``; False if it was removed meanwhile (not checked).

    A file compaction or gc removed since the directory was listed is
    skipped. A lock held past the lock timeout (a stopped process holds it),
    or a file this user may not read, is a finding, and no repair of ``path``
    found before it counts as done.
    """
    start = len(checker.findings)
    try:
        run(*args)
    except FileNotFoundError:
        if checker.fs.exists(path):
            raise  # another file went missing: not for this function to excuse
        return False
    except RecordError as exc:  # an intact frame whose record does not decode: not repairable
        found = checker.findings[start:]
        checker.findings[start:] = [msgspec.structs.replace(f, repaired=False) for f in found]
        checker.found(path, f"a record does not decode: {exc}", "none: restore it from a backup")
    except PermissionError as exc:  # the user check runs as may not read it: the rest is checked
        found = checker.findings[start:]
        checker.findings[start:] = [msgspec.structs.replace(f, repaired=False) for f in found]
        other = exc.filename not in (None, path)
        checker.found(
            path,
            f"{checker.rel(exc.filename) + ' ' if other else ''}cannot be read "
            f"({exc.strerror or exc}): not checked",
            "none: let the user castore runs as read it (owner, mode), then run check again",
        )
    except LockTimeoutError as exc:
        found = checker.findings[start:]
        checker.findings[start:] = [msgspec.structs.replace(f, repaired=False) for f in found]
        which = "" if exc.path == path else f"{checker.rel(exc.path)} "
        checker.found(
            path,
            f"{which}locked by another process for {checker.timeout:g} s: "
            + ("not repaired" if found else "not checked"),
            "none: run check again once that process ends",
        )
    return True


def check(
    backend: FileBackend, *, repair: bool = False, progress: Progress | None = None
) -> CheckReport:
    """Verify the whole store; with ``repair``, fix what can be fixed (see module docstring).

    Safe while other processes read and write: each log is read (and
    repaired) under its lock. A file that stays locked for the lock timeout
    (a stopped process holds it) is reported as not checked, an error, and
    the walk goes on; one that compaction or gc removes meanwhile is skipped.
    """
    checker = LogChecker(backend, repair)
    fs = backend.fs
    logs = 0
    for name in ("FORMAT", "gc.lock"):
        planted(checker, os.path.join(backend.root, name), file=True)
    for name in ("index", "refs"):
        planted(checker, os.path.join(backend.root, name), directory=True)
    quarantine = os.path.join(backend.root, "quarantine")
    if not planted(checker, quarantine, directory=True):  # torn/: where writers copy torn tails
        planted(checker, os.path.join(quarantine, "torn"), directory=True)
    for scope in sorted(fs.listdir(backend.refs)) if fs.isdir(backend.refs) else []:
        scope_dir = os.path.join(backend.refs, scope)
        if planted(checker, scope_dir, directory=True) or not fs.isdir(scope_dir):
            continue
        for name in sorted(fs.listdir(scope_dir)):
            nsdir = os.path.join(scope_dir, name)
            if planted(checker, nsdir, directory=True) or not fs.isdir(nsdir):
                continue
            logs += _check_namespace(checker, scope, nsdir, progress)
    check_index(checker)
    return CheckReport(
        ok=all(f.repaired or f.severity == "info" for f in checker.findings),
        logs=logs,
        entries=checker.entries,
        blobs=checker.blobs,
        findings=checker.findings,
    )


def _check_namespace(checker: LogChecker, scope: str, nsdir: str, progress: Progress | None) -> int:
    """Check one namespace directory (its files, logs, lost logs, ``GRAVES``); the logs checked."""
    fs = checker.fs
    logs = 0
    keys_file = os.path.join(nsdir, "KEYS")
    keys: set[str] = set()
    try:  # before its repair: a KEYS that is missing (or planted) names no key
        checker.keys_kept = stat.S_ISREG(fs.stat(keys_file).st_mode)
    except FileNotFoundError:
        checker.keys_kept = False
    if not planted(checker, keys_file, file=True):
        keys = set(KeyIndex(keys_file, fs).keys(""))
        _checked(checker, keys_file, check_keys_header, checker, scope, nsdir)
    if not planted(checker, os.path.join(nsdir, "STATE"), file=True):  # before repairs
        checker.recorded = recorded_logs(fs, nsdir, scope)  # append to it
    for file in sorted(fs.listdir(nsdir)):
        path = os.path.join(nsdir, file)
        if file in _FIRST_OR_LAST or planted(checker, path, file=_read_as_file(file)):
            continue
        if file.endswith(".log"):
            logs += _checked(checker, path, checker.check_log, path, scope, keys)
            if progress is not None:
                progress(1)
        elif file.endswith(".vix") and not fs.exists(path[:-4] + ".log"):  # lost, or
            # a planted object in its place that this repair removed
            _checked(checker, path, check_lost_log, checker, path[:-4] + ".log", scope, keys)
        elif file.endswith(".tmp"):
            _leftover(checker, path)
    for path, key in gone_logs(checker, keys):  # missing with their index: STATE tells
        _checked(checker, path, check_lost_log, checker, path, scope, keys | {key})
    _checked(checker, os.path.join(nsdir, "STATE"), report_behind, checker, nsdir)
    checker.recorded = {}
    check_graves(checker, nsdir)
    return logs


def _leftover(checker: LogChecker, path: str) -> None:
    """Report a temporary file a crash left (info: gc removes it after its grace period).

    One changed within :data:`IN_FLIGHT_SECONDS` may be a write in flight
    (a ``STATE`` snapshot, a rewrite), renamed into place a moment later:
    not reported.
    """
    try:
        age = time.time() - checker.fs.stat(path).st_mtime
    except FileNotFoundError:
        return  # renamed into place or removed since the listing: a write finished
    if age >= IN_FLIGHT_SECONDS:
        checker.found(path, "leftover temporary file", "gc removes it", severity="info")
