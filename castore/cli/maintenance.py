"""The whole-store commands: export/import, ``import-dagu``, gc, compact, check, upgrade, stats.

Each prints its report as one JSON line with ``operation`` first (the tagged
line types below, kept here so that the state commands never load them);
``export`` and ``import-dagu`` stream JSON lines (docs/CLI.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Final

import msgspec

from castore.backends import default_root, upgrade
from castore.cli.errors import UnhealthyError, UsageError
from castore.cli.invocation import Command, Invocation, progress, stdin
from castore.cli.render import encode_line, render_as
from castore.dagu import import_dagu
from castore.errors import InvalidValueError
from castore.keys import SCOPES, go_trim_space
from castore.reports import (
    MAX_SECONDS,
    CheckReport,
    CompactReport,
    GCReport,
    StoreStats,
    UpgradeReport,
)
from castore.transfer import ImportReport, export_lines, import_lines, read_lines

__all__ = ["COMMANDS", "DaguImportSummary"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}  # seconds per unit


class _GCLine(GCReport, frozen=True, kw_only=True, tag_field="operation", tag="gc"):
    """``castore gc``'s line."""


class _CompactLine(CompactReport, frozen=True, kw_only=True, tag_field="operation", tag="compact"):
    """``castore compact``'s line."""


class _CheckLine(CheckReport, frozen=True, kw_only=True, tag_field="operation", tag="check"):
    """``castore check``'s line."""


class _ImportLine(ImportReport, frozen=True, kw_only=True, tag_field="operation", tag="import"):
    """``castore import``'s line."""


class _UpgradeLine(UpgradeReport, frozen=True, kw_only=True, tag_field="operation", tag="upgrade"):
    """``castore upgrade``'s line."""


class _StatsLine(StoreStats, frozen=True, kw_only=True, tag_field="operation", tag="stats"):
    """``castore stats``'s line."""


class DaguImportSummary(msgspec.Struct, frozen=True, tag_field="operation", tag="import-dagu"):
    """The last line of ``castore import-dagu``: how many files were imported and skipped."""

    imported: int
    skipped: int


Report = GCReport | CompactReport | CheckReport | ImportReport | UpgradeReport | StoreStats
_LINE_TYPES: Final[dict[type[msgspec.Struct], type[msgspec.Struct]]] = {
    GCReport: _GCLine,
    CompactReport: _CompactLine,
    CheckReport: _CheckLine,
    ImportReport: _ImportLine,
    UpgradeReport: _UpgradeLine,
    StoreStats: _StatsLine,
}


def render(report: Report) -> bytes:
    """One JSON line (without newline): the report itself, ``operation`` first."""
    return render_as(report, _LINE_TYPES[type(report)])


def _duration(text: str | None, option: str) -> float | None:
    """Seconds from ``90``, ``90s``, ``1.5h``, ``15m``, ``12h``, ``7d`` or ``2w``."""
    if text is None:
        return None
    # ASCII digits: ``\d`` matches every script's, and float reads them (``\u0663`` is 3)
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhdw]?)", text.strip())
    if m is None:
        raise UsageError(f"{option}: bad duration {text!r}: use e.g. 90s, 15m, 12h, 7d, 2w")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds > MAX_SECONDS:
        raise UsageError(f"{option}: {text!r} is longer than {MAX_SECONDS} seconds (292 years)")
    return seconds


def _export(cmd: Invocation) -> Iterator[bytes]:
    with progress("versions") as bar:
        for line in export_lines(
            cmd.store, scope=cmd.filter_scope(), namespace=cmd.filter_namespace()
        ):
            bar.update()
            yield line.rstrip(b"\n")


def _import(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    with contextlib.ExitStack() as stack:
        path = a.file
        if path != "-" and os.path.isdir(path):
            raise UsageError(f"{path} is a directory: give an export file (or - for stdin)")
        if not path:
            raise UsageError("no export file given: give its path (or - for stdin)")
        if path != "-" and not os.path.exists(path):
            raise UsageError(f"no such file: {path}")
        if path == "-" or not os.path.isfile(path):  # stdin, a pipe such as <(…): read once
            source = (
                stdin("give the export file's path instead of -")
                if path == "-"
                else stack.enter_context(open(path, "rb"))  # closed by the stack
            )
            spool = stack.enter_context(tempfile.TemporaryFile(prefix="castore-import-"))
            read = _spooled(source, spool)
        else:  # one descriptor for both passes: a file renamed over the path is not read
            fh = stack.enter_context(open(path, "rb"))
            read = functools.partial(_unchanged, fh, path, _signature(fh))
        bar = stack.enter_context(progress("versions"))
        report = import_lines(cmd.store, read, on_conflict=a.on_conflict, progress=bar.update)
    yield render(report)


def _spooled(source: IO[bytes], spool: IO[bytes]) -> Callable[[], Iterator[bytes]]:
    """Two passes over a stream read once: the first copies what it validates to ``spool``.

    So a stream that is no export is refused at its first bad line, not read whole
    first; the copy has no name (nothing is left behind by a kill).
    """
    passes = [0]

    def read() -> Iterator[bytes]:
        passes[0] += 1
        if passes[0] == 1:
            for line in read_lines(source):  # bounded: a long line is refused
                spool.write(line)
                yield line
            return
        spool.flush()
        spool.seek(0)
        yield from read_lines(spool)

    return read


def _signature(fh: IO[bytes]) -> tuple[int, int]:
    """Size and modification time (not ctime: renaming the path away changes it)."""
    st = os.fstat(fh.fileno())
    return (st.st_size, st.st_mtime_ns)


def _unchanged(fh: IO[bytes], path: str, seen: tuple[int, int]) -> Iterator[bytes]:
    """The file's lines from its start, each read while the file is still as first seen.

    The first pass validates what the second writes: a file written to in between
    (its size or modification time change) stops the import at the next line, naming it.
    """
    fh.seek(0)
    for number, line in enumerate(read_lines(fh), start=1):
        if _signature(fh) != seen:
            raise InvalidValueError(
                f"{path} changed while it was imported (line {number}): stopped; what was "
                "written before stays; import a copy that nothing writes to"
            )
        yield line


def _import_dagu(cmd: Invocation) -> Iterator[bytes]:
    directory = cmd.args.directory
    if not os.path.exists(directory):
        raise UsageError(f"no such directory: {directory!r}")
    if not os.path.isdir(directory):
        raise UsageError(f"not a directory: {directory}")
    if not any(os.path.isdir(os.path.join(directory, d)) for d in ("v1", *SCOPES)):
        raise UsageError(  # e.g. Dagu's data directory: a "migration" importing nothing
            f"{directory}: not a Dagu dag-state directory (no v1/ in it): "
            "give Dagu's paths.dag_state_dir"
        )
    counts = {"imported": 0, "skipped": 0}
    problems = 0
    with progress("files") as bar:
        for outcome in import_dagu(cmd.store, directory):
            bar.update()
            counts[outcome.status] += 1
            problems += outcome.problem
            yield encode_line(outcome)
    yield encode_line(DaguImportSummary(imported=counts["imported"], skipped=counts["skipped"]))
    if problems:  # exit 1, as check's problems: a migration script must notice
        raise UnhealthyError(
            f"{problems} record(s) not imported (corrupt, a hash mismatch, unreadable, not a "
            "regular file, a symbolic link, too large or in conflict); see the skipped lines"
        )


def _gc(cmd: Invocation) -> Iterator[bytes]:
    grace = _duration(cmd.args.grace, "--grace")
    with progress("logs") as bar:
        report = cmd.store.gc(
            grace_seconds=grace or 0.0, dry_run=cmd.args.dry_run, progress=bar.update
        )
    yield render(report)


def _compact(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    if a.keep_last is None and a.keep_within is None:
        raise UsageError("compact needs a policy: --keep-last N and/or --keep-within DURATION")
    with progress("keys") as bar:
        report = cmd.store.compact(
            keep_last=a.keep_last,
            keep_within_seconds=_duration(a.keep_within, "--keep-within"),
            keep_within_text=(a.keep_within or "").strip(),
            scope=cmd.filter_scope(),
            namespace=cmd.filter_namespace(),
            prefix=go_trim_space(a.prefix),
            dry_run=a.dry_run,
            progress=bar.update,
        )
    yield render(report)


def _check(cmd: Invocation) -> Iterator[bytes]:
    with progress("logs") as bar:
        report = cmd.store.check(repair=cmd.args.repair, progress=bar.update)
    yield render(report)
    if not report.ok:
        left = [f for f in report.findings if not f.repaired and f.severity != "info"]
        raise UnhealthyError(f"{len(left)} problem(s) found; see the report")


def _upgrade(cmd: Invocation) -> Iterator[bytes]:
    report = upgrade(cmd.location or default_root(), cmd.mode)
    yield render(report)
    if report.graves_damaged:
        raise UnhealthyError(
            f"{len(report.graves_damaged)} GRAVES file(s) held damage, carried over: "
            "run `castore check --repair`"
        )


def _stats(cmd: Invocation) -> Iterator[bytes]:
    yield render(cmd.store.stats())


COMMANDS: Final[dict[str, Command]] = {
    "export": _export,
    "import": _import,
    "import-dagu": _import_dagu,
    "gc": _gc,
    "compact": _compact,
    "check": _check,
    "upgrade": _upgrade,
    "stats": _stats,
}
