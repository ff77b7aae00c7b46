"""The command line's arguments: the global options, then one command and its options.

Kept apart from the commands (``castore.cli.state`` and its siblings); docs/CLI.md
describes the same commands (``tests/unit/test_docs.py`` checks it).

Start-up cost (docs/PERFORMANCE.md, "CLI start-up"): :data:`SPECS` is a table of each
command's summary, example and a function adding its options; :func:`build_parser`
builds the global parser only, and a command's parser is built when argparse selects
that command (:class:`_CommandParsers`): two parsers per run, not one per command.
``castore --help`` lists the commands from the table; ``castore CMD --help`` builds CMD's.
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from castore.cli.errors import UsageError
from castore.cli.options import (
    KEY,
    SELECT,
    WHO,
    WRITE,
    Help,
    Parser,
    RawHelp,
    add_global_options,
    add_store_options,
    decimal,
    expected_version,
    integer,
    keep_count,
    version_number,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Any, Final, NamedTuple

__all__ = ["SPECS", "Spec", "UsageError", "build_parser"]

_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")  # JSON numbers such as -1e5 are values, not options


def _value(cmd: Parser) -> None:
    cmd.add_argument("value", nargs="?", default="-", help="JSON text; omitted or - is stdin")


def _version(cmd: Parser, flag: str, what: str, required: bool = False) -> None:
    kind = expected_version if flag == "--expected-version" else version_number
    cmd.add_argument(flag, type=kind, required=required, help=what)


def _reason(cmd: Parser) -> None:
    cmd.add_argument("--reason", default="", help="why, recorded in the audit")


def _get(cmd: Parser) -> None:
    cmd.add_argument("key")
    cmd.add_argument("--default", help="JSON value printed when the key is missing")
    cmd.add_argument("--required", action="store_true", help="exit 4 when the key is missing")
    _version(cmd, "--version", "read this version instead of the latest")


def _set(cmd: Parser) -> None:
    cmd.add_argument("key")
    _value(cmd)
    _version(cmd, "--expected-version", "fail unless this is the live version (0 = absent)")
    cmd.add_argument("--create-only", action="store_true", help="fail if the key exists")
    _reason(cmd)


def _diff(cmd: Parser) -> None:
    cmd.add_argument("key")
    _value(cmd)
    cmd.add_argument("--no-update", action="store_true", help="compare only, never write")
    _version(cmd, "--expected-version", "fail unless this is the live version (0 = absent)")
    _version(cmd, "--from-version", "diff two stored versions: the old one")
    _version(cmd, "--to-version", "diff two stored versions: the new one (default latest)")
    cmd.add_argument("--format", choices=("json", "text"), help="diff output (default json)")
    _reason(cmd)


def _patch(cmd: Parser) -> None:
    cmd.add_argument("key")
    cmd.add_argument("patch", nargs="?", default="-", help="JSON Patch text; omitted or - is stdin")
    cmd.add_argument("--merge", action="store_true", help="PATCH is a JSON Merge Patch (RFC 7396)")
    _version(cmd, "--expected-version", "fail unless this is the live version (0 = absent)")
    cmd.add_argument("--create-only", action="store_true", help="fail if the key exists")
    cmd.add_argument("--include-value", action="store_true", help="print the new value")
    _reason(cmd)


def _incr(cmd: Parser) -> None:
    cmd.add_argument("key")
    cmd.add_argument("--by", default="1", help="the number to add (default 1; -1 subtracts)")
    cmd.add_argument("--path", help="JSON Pointer of the member to add to (default: the value)")
    _version(cmd, "--expected-version", "fail unless this is the live version (0 = absent)")
    _reason(cmd)


def _key_and_reason(cmd: Parser) -> None:
    cmd.add_argument("key")
    _reason(cmd)


def _list(cmd: Parser) -> None:
    cmd.add_argument("--prefix", default="", help="byte prefix of the keys")
    cmd.add_argument("--limit", type=integer, default=0, help="at most N entries (0 = all)")
    cmd.add_argument("--include-values", action="store_true", help="include each value")


def _history(cmd: Parser) -> None:
    cmd.add_argument("key")
    cmd.add_argument("--limit", type=integer, default=0, help="at most N versions (0 = all)")
    _version(cmd, "--before-version", "only versions below this one (paging)")


def _rollback(cmd: Parser) -> None:
    cmd.add_argument("key")
    _version(cmd, "--to-version", "the version to restore", required=True)
    _version(cmd, "--expected-version", "fail unless this is the live version (0 = absent)")
    _reason(cmd)


def _audit(cmd: Parser) -> None:
    cmd.add_argument("--since", help="RFC 3339 time or YYYY-MM-DD (inclusive)")
    cmd.add_argument("--until", help="RFC 3339 time or YYYY-MM-DD (inclusive)")


def _none(cmd: Parser) -> None:
    """A command without options of its own."""


def _import(cmd: Parser) -> None:
    cmd.add_argument("file", help="export file, or - for stdin")
    cmd.add_argument(
        "--on-conflict",
        choices=("refuse", "skip", "overwrite"),
        default="refuse",
        help="what to do with keys that already exist (default: refuse, nothing imported)",
    )


def _gc(cmd: Parser) -> None:
    cmd.add_argument("--grace", default="1h", help="keep leftovers younger than this (1h)")
    cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")


def _compact(cmd: Parser) -> None:
    cmd.add_argument("--keep-last", type=keep_count, help="keep the newest N versions of each key")
    cmd.add_argument("--keep-within", help="keep versions younger than this (e.g. 7d, 12h)")
    cmd.add_argument("--prefix", default="", help="only keys with this byte prefix")
    cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")


def _check(cmd: Parser) -> None:
    cmd.add_argument("--repair", action="store_true", help="truncate, quarantine, rebuild")


def _import_dagu(cmd: Parser) -> None:
    cmd.add_argument("directory", help="Dagu's paths.dag_state_dir (holding v1/)")


def _serve(cmd: Parser) -> None:
    cmd.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:7070)")
    cmd.add_argument("--token-file", help="bearer token file (default: $CASTORE_TOKEN)")
    cmd.add_argument("--request-timeout", type=decimal, help="seconds per request (60)")
    cmd.add_argument("--shutdown-timeout", type=decimal, help="seconds to finish on SIGTERM (60)")
    cmd.add_argument("--access-log", help="append the JSON-lines access log here (stderr)")
    cmd.add_argument("--cluster", help="URL,URL,...: every coordinator of the cluster")
    cmd.add_argument("--self", dest="self_url", help="this server's URL in --cluster")
    cmd.add_argument("--processes", type=integer, help="server processes sharing the port (1)")
    cmd.add_argument("--openapi", action="store_true", help="print the OpenAPI document")


if TYPE_CHECKING:

    class _SpecFields(NamedTuple):
        summary: str
        example: str
        options: Callable[[Parser], None]
        store: tuple[str, ...] = ("--dir",)
        filters: tuple[str, ...] = ()

else:  # the same tuple type, without loading typing at run time
    _FIELDS = ("summary", "example", "options", "store", "filters")
    _SpecFields = collections.namedtuple("_SpecFields", _FIELDS, defaults=(("--dir",), ()))


class Spec(_SpecFields):
    """One command: its summary, an example, what adds its options, its store options, filters.

    ``store`` and ``filters`` name the global options the command accepts
    after its name too (:mod:`castore.cli.options`); every one is accepted before it.
    """

    __slots__ = ()


_READ: Final = KEY  # a command on one namespace's keys
_WRITES: Final = (*KEY, *WRITE, *WHO)  # ... that writes, recording who writes
_MAINTAIN: Final = ("--dir", *WRITE)  # a whole-store command that may write

SPECS: Final[dict[str, Spec]] = {  # in the order `castore --help` lists them
    "get": Spec(
        "read the latest value of a key", "castore --dag feed get cursors/feed", _get, _READ
    ),
    "set": Spec(
        "write a new version of a key", "castore --dag feed set cursors/feed '[1]'", _set, _WRITES
    ),
    "diff": Spec(
        "compare a value with the stored one, or two stored versions",
        "castore --dag feed diff snap '[1]'  |  castore --dag feed diff snap --from-version 1",
        _diff,
        _WRITES,
    ),
    "delete": Spec(
        "delete a key (keeps its history)",
        "castore --dag feed delete cursors/feed",
        _key_and_reason,
        _WRITES,
    ),
    "list": Spec(
        "list the live keys of a namespace", "castore --dag feed list --prefix cur", _list, _READ
    ),
    "patch": Spec(
        "apply a JSON Patch or merge patch atomically",
        """castore --dag feed patch state '[{"op": "add", "path": "/seen/-", "value": 7}]'""",
        _patch,
        _WRITES,
    ),
    "incr": Spec(
        "add to a number atomically",
        "castore --dag feed incr counters --path /runs",
        _incr,
        _WRITES,
    ),
    "history": Spec(
        "versions of a key, newest first",
        "castore --dag feed history cursors/feed",
        _history,
        _READ,
    ),
    "rollback": Spec(
        "restore an old version as a new one",
        "castore --dag f rollback k --to-version 3",
        _rollback,
        _WRITES,
    ),
    "audit": Spec(
        "writes and deletes across keys, newest first",
        "castore audit --run-id r1",
        _audit,
        filters=(*SELECT, *WHO),
    ),
    "export": Spec(
        "write every version as JSON lines", "castore export > dump.jsonl", _none, filters=SELECT
    ),
    "import": Spec(
        "import an export (JSON lines)", "castore import dump.jsonl", _import, _MAINTAIN
    ),
    "gc": Spec(
        "free unreferenced blobs and crash leftovers", "castore gc --dry-run", _gc, _MAINTAIN
    ),
    "compact": Spec(
        "drop old versions by a retention policy",
        "castore compact --keep-last 10",
        _compact,
        _MAINTAIN,
        SELECT,
    ),
    "check": Spec(
        "verify every record and blob; --repair fixes", "castore check --repair", _check, _MAINTAIN
    ),
    "stats": Spec("keys, versions, blobs and bytes per scope", "castore stats", _none),
    "upgrade": Spec(
        "convert a store of an older format (run it alone)",
        "castore upgrade",
        _none,
        ("--dir", "--mode"),
    ),
    "import-dagu": Spec(
        "import a Dagu dag-state directory",
        "castore import-dagu /var/lib/dagu/dag-state",
        _import_dagu,
        _MAINTAIN,
    ),
    "serve": Spec(
        "serve the store over HTTP/JSON (pip install 'castore[server]')",
        "castore --dir /srv/state serve --listen 127.0.0.1:7070 --token-file token",
        _serve,
        _MAINTAIN,
    ),
}


def command_parser(prog: str, name: str) -> Parser:
    """The parser of command ``name`` (``prog``: ``castore NAME``).

    Raises:
        KeyError: no such command.
    """
    spec = SPECS[name]
    made = Parser(
        prog=prog,
        description=f"{spec.summary}\n\nexample: {spec.example}",
        formatter_class=RawHelp,
    )
    made._negative_number_matcher = _NEGATIVE_NUMBER  # argparse internal; stable since 3.2
    made.intermixed = True
    spec.options(made)
    add_store_options(made, spec.store, spec.filters)
    return made


class _LazyParsers(Mapping[str, Parser]):
    """Command name -> its parser, built on first lookup (argparse looks up only the one run)."""

    def __init__(self, prog_prefix: str) -> None:
        self._prefix = prog_prefix
        self._built: dict[str, Parser] = {}

    def __getitem__(self, name: str) -> Parser:
        if name not in self._built:
            self._built[name] = command_parser(f"{self._prefix} {name}", name)
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(SPECS)

    def __len__(self) -> int:
        return len(SPECS)

    def __contains__(self, name: object) -> bool:
        return name in SPECS


if TYPE_CHECKING:
    _SubParsersAction = argparse._SubParsersAction[Parser]
else:  # not subscriptable at run time
    _SubParsersAction = argparse._SubParsersAction


class _CommandParsers(_SubParsersAction):
    """The COMMAND argument: argparse's subcommands, each parser built only when it runs.

    ``choices`` (what argparse checks COMMAND against and lists in its error)
    is a :class:`_LazyParsers`; the help lists the commands from the table.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = _LazyParsers(self._prog_prefix)
        self.choices = self.lazy  # type: ignore[assignment]  # a Mapping, not a dict

    def _get_subactions(self) -> list[argparse.Action]:
        return [
            argparse.Action(option_strings=[], dest=name, help=spec.summary, metavar=name)
            for name, spec in SPECS.items()
        ]

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if isinstance(values, list) and values and values[0] in self.lazy:  # nargs=PARSER
            self._name_parser_map[values[0]] = self.lazy[values[0]]  # the command's own parser
        super().__call__(parser, namespace, values, option_string)


def build_parser(version: str = "") -> Parser:
    """The parser of ``castore``: global options, then one command (parsed by its own parser).

    ``version``: what ``castore --version`` prints after ``castore`` (``castore.__version__``).
    """
    parser = Parser(
        prog="castore",
        description="Content-addressed, versioned JSON state store (Dagu-compatible).",
        epilog=(
            "Exit codes: 0 ok, 1 failure, 2 invalid input, 3 conflict, 4 not found, 5 damaged,"
            " 130 interrupted."
        ),
        formatter_class=Help,
    )
    add_global_options(parser, version)
    parser.add_subparsers(dest="command", metavar="COMMAND", required=True, action=_CommandParsers)
    return parser
