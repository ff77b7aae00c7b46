"""The ``castore`` command line: a thin layer over :class:`castore.Store`.

Each command prints exactly one line of JSON on stdout, with Dagu's field
names and order. Errors print one line ``castore: <what was wrong>`` on
stderr, nothing on stdout, and exit with a code from :data:`EXIT_CODES`
(mirrored in docs/CLI.md).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from castore import codec
from castore.errors import (
    CastoreError,
    ConflictError,
    InvalidRefError,
    InvalidValueError,
    NotFoundError,
)
from castore.keys import go_trim_space
from castore.results import DeleteResult, DiffResult, GetResult, ListResult, SetResult
from castore.store import Store

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1  # I/O error, corruption, lock timeout
EXIT_INVALID = 2  # bad key, scope, namespace, JSON, too large, usage
EXIT_CONFLICT = 3  # expected_version / create_only failed
EXIT_NOT_FOUND = 4  # --required and the key is absent
EXIT_CODES = {
    "ok": EXIT_OK,
    "failure": EXIT_FAILURE,
    "invalid input": EXIT_INVALID,
    "conflict": EXIT_CONFLICT,
    "not found": EXIT_NOT_FOUND,
}


_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")


class UsageError(Exception):
    """A command-line usage error (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# -- output --------------------------------------------------------------------------------


def _str(text: str) -> bytes:
    return codec.encode_string(text, html=False)


def _obj(fields: list[tuple[str, bytes]]) -> bytes:
    return b"{" + b",".join(_str(name) + b":" + value for name, value in fields) + b"}"


def _bool(flag: bool) -> bytes:
    return b"true" if flag else b"false"


def _int(number: int) -> bytes:
    return str(number).encode("ascii")


def _ref(operation: str, scope: str, namespace: str, key: str) -> list[tuple[str, bytes]]:
    return [
        ("operation", _str(operation)),
        ("scope", _str(scope)),
        ("namespace", _str(namespace)),
        ("key", _str(key)),
    ]


def render(result: GetResult | SetResult | DiffResult | DeleteResult | ListResult) -> bytes:
    """One JSON line (without newline) in Dagu's field order for ``result``."""
    if isinstance(result, GetResult):
        out = _ref("get", result.scope, result.namespace, result.key)
        out.append(("found", _bool(result.found)))
        if result.found:
            out += [("version", _int(result.version)), ("hash", _str(result.hash))]
        if result.value_json is not None:
            out.append(("value", result.value_json))
    elif isinstance(result, SetResult):
        out = _ref("set", result.scope, result.namespace, result.key)
        out += [
            ("version", _int(result.version)),
            ("hash", _str(result.hash)),
            ("created", _bool(result.created)),
        ]
    elif isinstance(result, DiffResult):
        out = _ref("diff", result.scope, result.namespace, result.key)
        out += [("changed", _bool(result.changed)), ("foundPrevious", _bool(result.found_previous))]
        if result.previous_version:
            out.append(("previousVersion", _int(result.previous_version)))
        if result.version:
            out.append(("version", _int(result.version)))
        if result.hash:
            out.append(("hash", _str(result.hash)))
        if result.previous_json is not None:
            out.append(("previous", result.previous_json))
        out.append(("current", result.current_json))
    elif isinstance(result, DeleteResult):
        out = _ref("delete", result.scope, result.namespace, result.key)
        out.append(("deleted", _bool(result.deleted)))
    else:
        out = [
            ("operation", _str("list")),
            ("scope", _str(result.scope)),
            ("namespace", _str(result.namespace)),
        ]
        if result.prefix:
            out.append(("prefix", _str(result.prefix)))
        items = []
        for entry in result.entries:
            fields = _ref("", entry.scope, entry.namespace, entry.key)[1:]
            fields += [
                ("version", _int(entry.version)),
                ("hash", _str(entry.hash)),
                ("createdAt", _str(entry.created_at)),
                ("updatedAt", _str(entry.updated_at)),
            ]
            if entry.value_json is not None:
                fields.append(("value", entry.value_json))
            items.append(_obj(fields))
        out.append(("entries", b"[" + b",".join(items) + b"]"))
    return _obj(out)


# -- arguments -----------------------------------------------------------------------------


def _parser() -> _Parser:
    common = _Parser(add_help=False)
    glob = common.add_argument_group("store options (also accepted before the command)")
    glob.add_argument("--dir", default=argparse.SUPPRESS, help="store directory")
    glob.add_argument("--dag", default=argparse.SUPPRESS, help="current DAG name")
    glob.add_argument("--root-dag", default=argparse.SUPPRESS, help="root DAG name")
    glob.add_argument(
        "--no-sync", action="store_true", default=argparse.SUPPRESS, help="skip fsync"
    )
    ref = _Parser(add_help=False)
    ref.add_argument(
        "--scope", default=argparse.SUPPRESS, help="dag (default), root_dag, global or custom"
    )
    ref.add_argument(
        "--namespace", default=argparse.SUPPRESS, help="namespace (overrides the scope default)"
    )

    parser = _Parser(
        prog="castore",
        description="Content-addressed, versioned JSON state store (Dagu-compatible).",
        epilog="Exit codes: 0 ok, 1 failure, 2 invalid input, 3 conflict, 4 not found.",
    )
    parser.add_argument("--dir", help="store directory (default: $CASTORE_DIR, else XDG data dir)")
    parser.add_argument("--dag", help="current DAG name (default: $DAG_NAME)")
    parser.add_argument("--root-dag", help="root DAG name (default: $CASTORE_ROOT_DAG)")
    parser.add_argument(
        "--no-sync", action="store_true", help="do not fsync: faster, may lose the last writes"
    )
    parser.add_argument("--scope", default="dag", help="dag (default), root_dag, global or custom")
    parser.add_argument("--namespace", default=None, help="namespace (overrides the scope default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = [common, ref]

    def add(name: str, summary: str, example: str) -> _Parser:
        made: _Parser = sub.add_parser(
            name,
            parents=parents,
            help=summary,
            description=f"{summary}\n\nexample: {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # JSON numbers such as -1e5 are values, not options (Python 3.13's rule).
        made._negative_number_matcher = _NEGATIVE_NUMBER  # argparse internal; stable since 3.2
        return made

    cmd = add("get", "read the latest value of a key", "castore --dag feed get cursors/feed")
    cmd.add_argument("key")
    cmd.add_argument("--default", help="JSON value printed when the key is missing")
    cmd.add_argument("--required", action="store_true", help="exit 4 when the key is missing")

    cmd = add(
        "set", "write a new version of a key", "castore --dag feed set cursors/feed '{\"id\":1}'"
    )
    cmd.add_argument("key")
    cmd.add_argument("value", nargs="?", default="-", help="JSON text; omitted or - reads stdin")
    cmd.add_argument("--expected-version", type=int, help="fail unless this is the live version")
    cmd.add_argument("--create-only", action="store_true", help="fail if the key exists")

    cmd = add("diff", "compare a value with the stored one", "castore --dag feed diff snap '[1]'")
    cmd.add_argument("key")
    cmd.add_argument("value", nargs="?", default="-", help="JSON text; omitted or - reads stdin")
    cmd.add_argument("--no-update", action="store_true", help="compare only, never write")
    cmd.add_argument("--expected-version", type=int, help="fail unless this is the live version")

    cmd = add(
        "delete", "delete a key (keeps its history)", "castore --dag feed delete cursors/feed"
    )
    cmd.add_argument("key")

    cmd = add("list", "list the live keys of a namespace", "castore --dag feed list --prefix cur")
    cmd.add_argument("--prefix", default="", help="byte prefix of the keys")
    cmd.add_argument("--limit", type=int, default=0, help="at most N entries (0 = all)")
    cmd.add_argument("--include-values", action="store_true", help="include each value")
    return parser


def _value(text: str) -> bytes:
    if text == "-":
        return sys.stdin.buffer.read()
    return os.fsencode(text)  # argv bytes as given, so invalid UTF-8 is normalized as Go does


def _run(args: argparse.Namespace) -> bytes:
    store = Store(
        args.dir,
        dag=args.dag,
        root_dag=args.root_dag,
        durable=not args.no_sync,
    )
    scope = go_trim_space(args.scope) or "dag"
    ns = go_trim_space(args.namespace or "") or None
    command = args.command
    if command == "get":
        key = go_trim_space(args.key)
        if args.default is None:
            return render(store.get(key, scope=scope, namespace=ns, required=args.required))
        default = os.fsencode(args.default)
        got = store.get(key, scope=scope, namespace=ns, default=default, required=args.required)
        return render(got)
    if command in ("set", "diff"):
        value = _value(args.value)
        if command == "set":
            return render(
                store.set(
                    go_trim_space(args.key),
                    value,
                    scope=scope,
                    namespace=ns,
                    expected_version=args.expected_version,
                    create_only=args.create_only,
                )
            )
        return render(
            store.diff(
                go_trim_space(args.key),
                value,
                scope=scope,
                namespace=ns,
                update=not args.no_update,
                expected_version=args.expected_version,
            )
        )
    if command == "delete":
        return render(store.delete(go_trim_space(args.key), scope=scope, namespace=ns))
    result = store.list(
        go_trim_space(args.prefix),
        scope=scope,
        namespace=ns,
        limit=args.limit,
        include_values=args.include_values,
    )
    for key in result.skipped:
        sys.stderr.write(f"castore: warning: skipped unreadable key {key!r}\n")
    return render(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see :data:`EXIT_CODES`)."""
    try:
        args = _parser().parse_args(argv)
        line = _run(args)
    except UsageError as exc:
        return _fail(str(exc), EXIT_INVALID)
    except (InvalidRefError, InvalidValueError) as exc:
        return _fail(str(exc), EXIT_INVALID)
    except ConflictError as exc:
        return _fail(str(exc), EXIT_CONFLICT)
    except NotFoundError as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)
    except CastoreError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"castore: {message}\n")
    return code
