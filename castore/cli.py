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
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Never, NoReturn

import msgspec
from tqdm import tqdm

from castore.audit import audit
from castore.check import check, stats
from castore.compact import compact
from castore.dagu import import_dagu, parse_go_time
from castore.errors import (
    CastoreError,
    ConflictError,
    InvalidRefError,
    InvalidValueError,
    NotFoundError,
)
from castore.gc import collect_garbage
from castore.keys import go_trim_space
from castore.render import encode_line, render, render_patch_text
from castore.store import Store
from castore.transfer import export_lines, import_lines

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1  # I/O error, corruption, lock timeout
EXIT_INVALID = 2  # bad key, scope, namespace, JSON, too large, usage
EXIT_CONFLICT = 3  # expected_version / create_only failed; import conflicts
EXIT_NOT_FOUND = 4  # --required and the key is absent; a version that does not exist
EXIT_CODES = {
    "ok": EXIT_OK,
    "failure": EXIT_FAILURE,
    "invalid input": EXIT_INVALID,
    "conflict": EXIT_CONFLICT,
    "not found": EXIT_NOT_FOUND,
}
_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")  # JSON numbers such as -1e5 are values, not options


class UsageError(Exception):
    """A command-line usage error (exit 2)."""


class _UnhealthyError(Exception):
    """``check`` found problems: its report is printed, then exit 1."""


def _op(operation: str, report: msgspec.Struct) -> bytes:
    return b'{"operation":"%s",' % operation.encode() + encode_line(report)[1:]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _progress(unit: str) -> tqdm[Never]:
    return tqdm(unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


# -- arguments -----------------------------------------------------------------------------


def _parser() -> _Parser:
    common = _Parser(add_help=False)
    opts = common.add_argument_group("store options (also accepted before the command)")
    opts.add_argument("--dir", default=argparse.SUPPRESS, help="store directory")
    opts.add_argument("--dag", default=argparse.SUPPRESS, help="current DAG name")
    opts.add_argument("--root-dag", default=argparse.SUPPRESS, help="root DAG name")
    opts.add_argument("--no-sync", action="store_true", default=argparse.SUPPRESS, help="no fsync")
    opts.add_argument("--scope", default=argparse.SUPPRESS, help="dag, root_dag, global, custom")
    opts.add_argument("--namespace", default=argparse.SUPPRESS, help="explicit namespace")
    opts.add_argument("--actor", default=argparse.SUPPRESS, help="who writes (audit)")
    opts.add_argument("--run-id", default=argparse.SUPPRESS, help="run id (audit)")
    opts.add_argument("--step", default=argparse.SUPPRESS, help="step name (audit)")

    parser = _Parser(
        prog="castore",
        description="Content-addressed, versioned JSON state store (Dagu-compatible).",
        epilog="Exit codes: 0 ok, 1 failure, 2 invalid input, 3 conflict, 4 not found.",
    )
    parser.add_argument("--dir", help="store directory (default: $CASTORE_DIR, else XDG data dir)")
    parser.add_argument("--dag", help="current DAG name (default: $DAG_NAME)")
    parser.add_argument("--root-dag", help="root DAG name (default: $CASTORE_ROOT_DAG)")
    parser.add_argument("--no-sync", action="store_true", help="do not fsync (faster, less safe)")
    parser.add_argument("--scope", help="dag (default), root_dag, global or custom")
    parser.add_argument("--namespace", help="namespace (overrides the scope default)")
    parser.add_argument("--actor", help="who writes, for the audit (default: $CASTORE_ACTOR)")
    parser.add_argument("--run-id", help="run id for the audit (default: $DAG_RUN_ID)")
    parser.add_argument("--step", help="step name for the audit (default: $DAG_RUN_STEP_NAME)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, summary: str, example: str) -> _Parser:
        made: _Parser = sub.add_parser(
            name,
            parents=[common],
            help=summary,
            description=f"{summary}\n\nexample: {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        made._negative_number_matcher = _NEGATIVE_NUMBER  # argparse internal; stable since 3.2
        return made

    def value_arg(cmd: _Parser) -> None:
        cmd.add_argument("value", nargs="?", default="-", help="JSON text; omitted or - is stdin")

    def version_arg(cmd: _Parser, flag: str, what: str, required: bool = False) -> None:
        cmd.add_argument(flag, type=int, required=required, help=what)

    def reason_arg(cmd: _Parser) -> None:
        cmd.add_argument("--reason", default="", help="why, recorded in the audit")

    cmd = add("get", "read the latest value of a key", "castore --dag feed get cursors/feed")
    cmd.add_argument("key")
    cmd.add_argument("--default", help="JSON value printed when the key is missing")
    cmd.add_argument("--required", action="store_true", help="exit 4 when the key is missing")
    version_arg(cmd, "--version", "read this version instead of the latest")

    cmd = add("set", "write a new version of a key", "castore --dag feed set cursors/feed '[1]'")
    cmd.add_argument("key")
    value_arg(cmd)
    version_arg(cmd, "--expected-version", "fail unless this is the live version (0 = absent)")
    cmd.add_argument("--create-only", action="store_true", help="fail if the key exists")
    reason_arg(cmd)

    cmd = add(
        "diff",
        "compare a value with the stored one, or two stored versions",
        "castore --dag feed diff snap '[1]'  |  castore --dag feed diff snap --from-version 1",
    )
    cmd.add_argument("key")
    value_arg(cmd)
    cmd.add_argument("--no-update", action="store_true", help="compare only, never write")
    version_arg(cmd, "--expected-version", "fail unless this is the live version")
    version_arg(cmd, "--from-version", "diff two stored versions: the old one")
    version_arg(cmd, "--to-version", "diff two stored versions: the new one (default latest)")
    cmd.add_argument("--format", choices=("json", "text"), default="json", help="version diff")
    reason_arg(cmd)

    cmd = add(
        "delete", "delete a key (keeps its history)", "castore --dag feed delete cursors/feed"
    )
    cmd.add_argument("key")
    reason_arg(cmd)

    cmd = add("list", "list the live keys of a namespace", "castore --dag feed list --prefix cur")
    cmd.add_argument("--prefix", default="", help="byte prefix of the keys")
    cmd.add_argument("--limit", type=int, default=0, help="at most N entries (0 = all)")
    cmd.add_argument("--include-values", action="store_true", help="include each value")

    cmd = add(
        "history", "versions of a key, newest first", "castore --dag feed history cursors/feed"
    )
    cmd.add_argument("key")
    cmd.add_argument("--limit", type=int, default=0, help="at most N versions (0 = all)")
    version_arg(cmd, "--before-version", "only versions below this one (paging)")

    cmd = add(
        "rollback",
        "restore an old version as a new one",
        "castore --dag f rollback k --to-version 3",
    )
    cmd.add_argument("key")
    version_arg(cmd, "--to-version", "the version to restore", required=True)
    version_arg(cmd, "--expected-version", "fail unless this is the live version")
    reason_arg(cmd)

    cmd = add("audit", "writes and deletes across keys, newest first", "castore audit --run-id r1")
    cmd.add_argument("--since", help="RFC 3339 time or YYYY-MM-DD (inclusive)")
    cmd.add_argument("--until", help="RFC 3339 time or YYYY-MM-DD (inclusive)")

    add("export", "write every version as JSON lines", "castore export > dump.jsonl")

    cmd = add("import", "import an export (JSON lines)", "castore import dump.jsonl")
    cmd.add_argument("file", help="export file, or - for stdin")
    cmd.add_argument(
        "--on-conflict",
        choices=("refuse", "skip", "overwrite"),
        default="refuse",
        help="what to do with keys that already exist (default: refuse, nothing imported)",
    )

    cmd = add("gc", "free unreferenced blobs and crash leftovers", "castore gc --dry-run")
    cmd.add_argument("--grace", default="1h", help="keep leftovers younger than this (1h)")
    cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")

    cmd = add(
        "compact", "drop old versions by a retention policy", "castore compact --keep-last 10"
    )
    cmd.add_argument("--keep-last", type=int, help="keep the newest N versions of each key")
    cmd.add_argument("--keep-within", help="keep versions younger than this (e.g. 7d, 12h)")
    cmd.add_argument("--prefix", default="", help="only keys with this byte prefix")
    cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")

    cmd = add("check", "verify every record and blob; --repair fixes", "castore check --repair")
    cmd.add_argument("--repair", action="store_true", help="truncate, quarantine, rebuild")

    add("stats", "keys, versions, blobs and bytes per scope", "castore stats")

    cmd = add(
        "import-dagu",
        "import a Dagu dag-state directory",
        "castore import-dagu /var/lib/dagu/dag-state",
    )
    cmd.add_argument("directory", help="Dagu's paths.dag_state_dir (holding v1/)")
    return parser


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
        self.store = Store(
            args.dir,
            dag=args.dag,
            root_dag=args.root_dag,
            durable=not args.no_sync,
            actor=args.actor,
            run_id=args.run_id,
            step=args.step,
        )
        self.scope_given = go_trim_space(args.scope or "") or None
        self.scope = self.scope_given or "dag"
        self.namespace = go_trim_space(args.namespace or "") or None

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
                spool.write(sys.stdin.buffer.read())
                spool.flush()
                path = spool.name
            if not os.path.isfile(path):
                raise UsageError(f"no such file: {path}")

            def read() -> Iterator[bytes]:
                with open(path, "rb") as fh:
                    yield from fh

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
        args = _parser().parse_args(argv)
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
