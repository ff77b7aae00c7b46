"""The command line's arguments: one argparse parser, every command and option.

Kept apart from the commands (``castore.cli.state`` and its siblings) so each
stays small; docs/CLI.md describes the same commands and ``tests/unit/test_docs.py``
checks that every one of them is documented.
"""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

__all__ = ["UsageError", "build_parser"]

_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")  # JSON numbers such as -1e5 are values, not options


class UsageError(Exception):
    """A command-line usage error (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> _Parser:
    """The parser of ``castore``: global options, then one subcommand."""
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
        epilog="Exit codes: 0 ok, 1 failure, 2 invalid input, 3 conflict, 4 not found, 5 damaged.",
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

    add("upgrade", "convert a store of an older format (run it alone)", "castore upgrade")

    cmd = add(
        "import-dagu",
        "import a Dagu dag-state directory",
        "castore import-dagu /var/lib/dagu/dag-state",
    )
    cmd.add_argument("directory", help="Dagu's paths.dag_state_dir (holding v1/)")
    return parser
