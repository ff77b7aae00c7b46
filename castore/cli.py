"""The ``castore`` command line: a thin layer over :class:`castore.Store` and its tools.

Dagu's five operations and castore's own single-key commands print exactly
one line of JSON on stdout; ``audit``, ``export`` and ``import-dagu`` stream
JSON lines. Errors print one line ``castore: <what was wrong>`` on stderr,
nothing on stdout, and exit with a code from :data:`EXIT_CODES` (mirrored in
docs/CLI.md). Progress bars go to stderr, only when it is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Never

import msgspec
from tqdm import tqdm

from castore.args import UsageError, build_parser
from castore.audit import audit
from castore.check import check
from castore.compact import compact
from castore.dagu import import_dagu, parse_go_time
from castore.errors import (
    CastoreError,
    ConflictError,
    CorruptionError,
    FormatVersionError,
    InvalidRefError,
    InvalidValueError,
    NotFoundError,
)
from castore.gc import collect_garbage
from castore.keys import go_trim_space
from castore.render import encode_line, render, render_patch_text
from castore.stats import stats
from castore.store import Store, default_root
from castore.transfer import export_lines, import_lines, read_lines
from castore.upgrade import upgrade

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1  # I/O error, lock timeout, check found problems
EXIT_INVALID = 2  # bad key, scope, namespace, JSON, too large, usage
EXIT_CONFLICT = 3  # expected_version / create_only failed; import conflicts
EXIT_NOT_FOUND = 4  # --required and the key is absent; a version that does not exist
EXIT_DAMAGED = 5  # the store holds damage that hides the answer: run check --repair
EXIT_CODES = {
    "ok": EXIT_OK,
    "failure": EXIT_FAILURE,
    "invalid input": EXIT_INVALID,
    "conflict": EXIT_CONFLICT,
    "not found": EXIT_NOT_FOUND,
    "damaged": EXIT_DAMAGED,
}


class _UnhealthyError(Exception):
    """``check`` found problems: its report is printed, then exit 1."""


def _op(operation: str, report: msgspec.Struct) -> bytes:
    return b'{"operation":"%s",' % operation.encode() + encode_line(report)[1:]


def _progress(unit: str) -> tqdm[Never]:
    return tqdm(unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


# -- commands ------------------------------------------------------------------------------


def _value(text: str) -> bytes:
    if text == "-":
        return sys.stdin.buffer.read()
    return os.fsencode(text)  # argv bytes as given: invalid UTF-8 is normalized as Go does


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str | None) -> float | None:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w``."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if m is None:
        raise UsageError(f"bad duration {text!r}: use e.g. 90s, 15m, 12h, 7d, 2w")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _time(text: str | None, *, end_of_day: bool = False) -> int | None:
    """Unix ns of an RFC 3339 time or a date (its start, or with ``end_of_day`` its last ns)."""
    if text is None:
        return None
    date_only = re.fullmatch(r"\d{4}-\d\d-\d\d", text) is not None
    try:
        moment = parse_go_time(text + "T00:00:00Z" if date_only else text)
    except ValueError:
        raise UsageError(f"bad time {text!r}: use RFC 3339 or YYYY-MM-DD") from None
    if date_only and end_of_day:
        moment += 86_400_000_000_000 - 1
    return moment


class _Command:
    """One parsed invocation: the store and the arguments, resolved once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scope_given = go_trim_space(args.scope or "") or None
        self.scope = self.scope_given or "dag"
        self.namespace = go_trim_space(args.namespace or "") or None

    @functools.cached_property
    def store(self) -> Store:
        """The store, opened on first use (``upgrade`` works on the directory itself)."""
        args = self.args
        return Store(
            args.dir,
            dag=args.dag,
            root_dag=args.root_dag,
            durable=not args.no_sync,
            actor=args.actor,
            run_id=args.run_id,
            step=args.step,
        )

    def key(self) -> str:
        return go_trim_space(self.args.key)

    def run(self, out: IO[bytes]) -> None:
        handler: Callable[[], Iterable[bytes]] = getattr(
            self, "do_" + self.args.command.replace("-", "_")
        )
        for line in handler():
            out.write(line + b"\n")

    def do_get(self) -> Iterator[bytes]:
        a, s = self.args, self.store
        extra = {} if a.default is None else {"default": os.fsencode(a.default)}
        yield render(
            s.get(
                self.key(),
                scope=self.scope,
                namespace=self.namespace,
                required=a.required,
                version=a.version,
                **extra,
            )
        )

    def do_set(self) -> Iterator[bytes]:
        a = self.args
        yield render(
            self.store.set(
                self.key(),
                _value(a.value),
                scope=self.scope,
                namespace=self.namespace,
                expected_version=a.expected_version,
                create_only=a.create_only,
                reason=a.reason,
            )
        )

    def do_diff(self) -> Iterator[bytes]:
        a, s = self.args, self.store
        if a.from_version is None:
            if a.to_version is not None:
                raise UsageError("--to-version needs --from-version")
            yield render(
                s.diff(
                    self.key(),
                    _value(a.value),
                    scope=self.scope,
                    namespace=self.namespace,
                    update=not a.no_update,
                    expected_version=a.expected_version,
                    reason=a.reason,
                )
            )
            return
        if a.value != "-":
            raise UsageError("a version diff takes no VALUE")
        diff = s.diff_versions(
            self.key(),
            from_version=a.from_version,
            to_version=a.to_version,
            scope=self.scope,
            namespace=self.namespace,
        )
        if a.format == "json":
            yield render(diff)
            return
        before = s.get(
            self.key(), scope=self.scope, namespace=self.namespace, version=a.from_version
        ).value
        yield render_patch_text(diff, before).encode("utf-8")

    def do_delete(self) -> Iterator[bytes]:
        yield render(
            self.store.delete(
                self.key(), scope=self.scope, namespace=self.namespace, reason=self.args.reason
            )
        )

    def do_list(self) -> Iterator[bytes]:
        a = self.args
        result = self.store.list(
            go_trim_space(a.prefix),
            scope=self.scope,
            namespace=self.namespace,
            limit=a.limit,
            include_values=a.include_values,
        )
        for key in result.skipped:
            sys.stderr.write(f"castore: warning: skipped unreadable key {key!r}\n")
        yield render(result)

    def do_history(self) -> Iterator[bytes]:
        a = self.args
        yield render(
            self.store.history(
                self.key(),
                scope=self.scope,
                namespace=self.namespace,
                limit=a.limit,
                before_version=a.before_version,
            )
        )

    def do_rollback(self) -> Iterator[bytes]:
        a = self.args
        yield render(
            self.store.rollback(
                self.key(),
                to_version=a.to_version,
                scope=self.scope,
                namespace=self.namespace,
                expected_version=a.expected_version,
                reason=a.reason,
            )
        )

    def do_audit(self) -> Iterator[bytes]:
        a = self.args
        since, until = _time(a.since), _time(a.until, end_of_day=True)
        with _progress("records") as bar:
            for record in audit(
                self.store,
                scope=self.scope_given,
                namespace=self.namespace,
                run_id=a.run_id,
                since_ns=since,
                until_ns=until,
            ):
                bar.update()
                yield encode_line(record)

    def do_export(self) -> Iterator[bytes]:
        with _progress("versions") as bar:
            for line in export_lines(self.store, scope=self.scope_given, namespace=self.namespace):
                bar.update()
                yield line.rstrip(b"\n")

    def do_import(self) -> Iterator[bytes]:
        a = self.args
        with contextlib.ExitStack() as stack:
            path = a.file
            if path == "-":  # two passes: spool stdin to a temporary file first
                spool = stack.enter_context(tempfile.NamedTemporaryFile(prefix="castore-import-"))
                for line in read_lines(sys.stdin.buffer):  # bounded: a long line is refused
                    spool.write(line)
                spool.flush()
                path = spool.name
            if not os.path.isfile(path):
                raise UsageError(f"no such file: {path}")

            def read() -> Iterator[bytes]:
                with open(path, "rb") as fh:
                    yield from read_lines(fh)

            bar = stack.enter_context(_progress("versions"))
            report = import_lines(self.store, read, on_conflict=a.on_conflict, progress=bar.update)
        yield _op("import", report)

    def do_gc(self) -> Iterator[bytes]:
        grace = _duration(self.args.grace)
        with _progress("logs") as bar:
            report = collect_garbage(
                self.store,
                grace_seconds=grace or 0.0,
                dry_run=self.args.dry_run,
                progress=bar.update,
            )
        yield _op("gc", report)

    def do_compact(self) -> Iterator[bytes]:
        a = self.args
        if a.keep_last is None and a.keep_within is None:
            raise UsageError("compact needs a policy: --keep-last N and/or --keep-within DURATION")
        with _progress("keys") as bar:
            report = compact(
                self.store,
                keep_last=a.keep_last,
                keep_within_seconds=_duration(a.keep_within),
                scope=self.scope_given,
                namespace=self.namespace,
                prefix=go_trim_space(a.prefix),
                dry_run=a.dry_run,
                progress=bar.update,
            )
        yield _op("compact", report)

    def do_check(self) -> Iterator[bytes]:
        with _progress("logs") as bar:
            report = check(self.store, repair=self.args.repair, progress=bar.update)
        yield _op("check", report)
        if not report.ok:
            raise _UnhealthyError(f"{len(report.findings)} problem(s) found; see the report")

    def do_upgrade(self) -> Iterator[bytes]:
        yield _op("upgrade", upgrade(os.path.abspath(self.args.dir or default_root())))

    def do_stats(self) -> Iterator[bytes]:
        yield _op("stats", stats(self.store))

    def do_import_dagu(self) -> Iterator[bytes]:
        directory = self.args.directory
        if not os.path.isdir(directory):
            raise UsageError(f"not a directory: {directory}")
        counts = {"imported": 0, "skipped": 0}
        with _progress("files") as bar:
            for outcome in import_dagu(self.store, directory):
                bar.update()
                counts[outcome.status] += 1
                yield encode_line(outcome)
        yield b'{"operation":"import-dagu","imported":%d,"skipped":%d}' % (
            counts["imported"],
            counts["skipped"],
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see :data:`EXIT_CODES`)."""
    out = sys.stdout.buffer
    try:
        args = build_parser().parse_args(argv)
        _Command(args).run(out)
        out.flush()
    except UsageError as exc:
        return _fail(str(exc), EXIT_INVALID)
    except _UnhealthyError as exc:
        out.flush()
        return _fail(str(exc), EXIT_FAILURE)
    except (InvalidRefError, InvalidValueError) as exc:
        return _fail(str(exc), EXIT_INVALID)
    except ConflictError as exc:
        return _fail(str(exc), EXIT_CONFLICT)
    except NotFoundError as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)
    except FormatVersionError as exc:
        return _fail(str(exc), EXIT_FAILURE)  # not a (current) castore store
    except CorruptionError as exc:
        return _fail(str(exc), EXIT_DAMAGED)
    except CastoreError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except BrokenPipeError:
        return EXIT_OK  # the reader went away (e.g. `castore export | head`)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"castore: {message}\n")
    return code
