"""The parser class, the help formatter, and the store options a command takes after its name.

Every global option (``castore --dir D --dag N ... COMMAND``) is accepted
before any command. After the command, only those that apply to it are
(:data:`castore.cli.args.SPECS` names them), and ``castore CMD --help``
lists only those: the *store options* (where the store is, which namespace a
key is in, how a write is made and who makes it) and the *filters* of the
commands that select records across keys (``audit``, ``export``, ``compact``).
Their defaults come from the global options (``SUPPRESS``: unset after the
command leaves the value given before it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from castore.cli.errors import UsageError
from castore.cli.streams import OutputError, write_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Final, NoReturn

__all__ = [
    "KEY",
    "SELECT",
    "WHO",
    "WRITE",
    "Help",
    "Parser",
    "RawHelp",
    "add_global_options",
    "add_store_options",
    "integer",
]

KEY: Final = ("--dir", "--dag", "--root-dag", "--scope", "--namespace")  # where a key is
WRITE: Final = ("--no-sync", "--mode", "--lock-timeout")  # how a write is made
WHO: Final = ("--actor", "--run-id", "--step")  # recorded in the audit record of a write
SELECT: Final = ("--scope", "--namespace", "--dag", "--root-dag")  # a filter across keys


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size()`` finds it, without shutil.

    ``$COLUMNS``, else the width of the terminal on stdout, else 80. argparse
    asks for it whenever it makes a formatter (each ``add_argument`` does),
    and importing shutil (with its compression modules) costs ~2 ms a run.
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Help(argparse.HelpFormatter):
    """argparse's help formatter, its default width found by :func:`_columns`."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
        **kwargs: Any,
    ) -> None:
        width = _columns() - 2 if width is None else width  # argparse's own default
        super().__init__(prog, indent_increment, max_help_position, width, **kwargs)


class RawHelp(Help, argparse.RawDescriptionHelpFormatter):
    """:class:`Help` keeping the description's line breaks (the command's example)."""


class Parser(argparse.ArgumentParser):
    """castore's parsers: options spelled in full, errors as :class:`UsageError`.

    argparse would take a prefix of an option for it (``--expected 1`` for
    ``--expected-version 1``, ``--di`` for ``--dir``): a typo, or an option a
    later castore adds, would silently mean another one. The help is written
    whole (stdout may be a non-blocking pipe); what cannot be written is an
    :class:`OutputError`.
    """

    argv: Sequence[str] = ()  # what parse_args was given (for error)
    intermixed = False  # a command's parser: its positionals may follow its options
    unknown: Sequence[str] = ()  # options before the command that no parser took
    _parsing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, but a command's VALUE may also come after its options.

        ``set k --expected-version 1 2`` was refused with ``unrecognized
        arguments: 2`` (argparse takes an optional positional as absent once an
        option follows it); a command's parser parses intermixed arguments,
        unless ``--`` ends its options (Python 3.11's intermixed parsing would
        take an option after it, and lose a positional such as the key ``-k``).
        """
        if not self.intermixed or self._parsing or (args is not None and "--" in args):
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False

    def error(self, message: str) -> NoReturn:
        """Raise ``message`` as a :class:`UsageError` (exit 2), naming unknown options."""
        unknown = [a for a in self.argv if a.startswith("--") and not self._known(a)]
        command = message.endswith("required: COMMAND") or "COMMAND: invalid choice" in message
        if unknown and command:  # `castore --bogus`; `castore --di DIR get`: DIR taken for it
            self.unknown = unknown  # the caller says more of them (castore.cli.usage)
            message = f"unrecognized arguments: {' '.join(unknown)}"
        raise UsageError(message)

    def long_options(self) -> list[str]:
        """The long options this parser takes."""
        return [o for o in self._option_string_actions if o[:2] == "--"]

    def _known(self, arg: str) -> bool:
        return arg.partition("=")[0] in self._option_string_actions

    def _print_message(self, message: str, file: Any = None) -> None:
        stream = file or sys.stderr
        if message and stream is not None:
            try:
                write_text(stream, message)
            except BrokenPipeError:  # `castore --help | head -1`: the reader had enough
                pass
            except OSError as exc:
                raise OutputError(exc.strerror or str(exc)) from None


_STORE_HELP: Final = {
    "--dir": "store directory, postgresql:// URL or castore server's http:// URL",
    "--dag": "current DAG name (scope dag)",
    "--root-dag": "root DAG name (scope root_dag)",
    "--scope": "dag (default), root_dag, global or custom",
    "--namespace": "explicit namespace",
    "--no-sync": "do not fsync",
    "--mode": "private or group (permissions of what is created)",
    "--lock-timeout": "seconds to wait for a key's lock (30)",
    "--actor": "who writes (recorded in the audit)",
    "--run-id": "run id (recorded in the audit)",
    "--step": "step name (recorded in the audit)",
}
_FILTER_HELP: Final = {
    "--scope": "only this scope (default: every scope)",
    "--namespace": "only this namespace",
    "--dag": "only this DAG's namespace (scope dag unless --scope says otherwise; with "
    "--scope dag and no --dag: $DAG_NAME, else every DAG namespace)",
    "--root-dag": "only this root DAG's namespace (scope root_dag unless --scope says "
    "otherwise; with --scope root_dag and none: $CASTORE_ROOT_DAG, else the DAG name)",
    "--actor": "only records written by this actor",
    "--run-id": "only records written with this run id",
    "--step": "only records written by this step",
}


def add_store_options(
    parser: argparse.ArgumentParser, store: tuple[str, ...], filters: tuple[str, ...]
) -> None:
    """Add the store options ``store`` and the filters ``filters`` to a command's parser."""
    groups = (
        ("store options (also accepted before the command)", store, _STORE_HELP),
        (
            "filters (also accepted before the command; a record must match all)",
            filters,
            _FILTER_HELP,
        ),
    )
    for title, flags, helps in groups:
        if not flags:
            continue
        group = parser.add_argument_group(title)
        for flag in flags:
            if flag == "--dir" and parser.prog.endswith(" serve"):  # never a server's URL
                group.add_argument(
                    flag, default=argparse.SUPPRESS, help="store directory or postgresql:// URL"
                )
            elif flag == "--no-sync":
                group.add_argument(
                    flag, action="store_true", default=argparse.SUPPRESS, help=helps[flag]
                )
            else:
                metavar = "SECONDS" if flag == "--lock-timeout" else None
                group.add_argument(
                    flag, default=argparse.SUPPRESS, metavar=metavar, help=helps[flag]
                )


def add_global_options(parser: argparse.ArgumentParser, version: str) -> None:
    """Add the options every command accepts before its name (``castore --dir D ... CMD``)."""
    parser.add_argument(
        "--dir",
        help="the store: a directory (made by the first write), a postgresql:// URL or a "
        "castore server's http:// URL (default: $CASTORE_DIR, else XDG data dir)",
    )
    parser.add_argument("--dag", help="current DAG name (default: $DAG_NAME)")
    parser.add_argument(
        "--root-dag", help="root DAG name (default: $CASTORE_ROOT_DAG, else the DAG name)"
    )
    parser.add_argument("--no-sync", action="store_true", help="do not fsync (faster, less safe)")
    parser.add_argument(
        "--mode",
        help="permissions of what castore creates: private (files 0600, directories 0700) or "
        "group (0660, 2770) (default: $CASTORE_MODE, else as the store directory, else private)",
    )
    parser.add_argument(
        "--lock-timeout",
        metavar="SECONDS",
        help="seconds a write, or check, waits for a key held by another process before it "
        "fails or reports the key as not checked (default 30)",
    )
    parser.add_argument("--scope", help="dag (default), root_dag, global or custom")
    parser.add_argument("--namespace", help="namespace (overrides the scope default)")
    parser.add_argument("--actor", help="who writes, for the audit (default: $CASTORE_ACTOR)")
    parser.add_argument("--run-id", help="run id for the audit (default: $DAG_RUN_ID)")
    parser.add_argument("--step", help="step name for the audit (default: $DAG_RUN_STEP_NAME)")
    parser.add_argument(
        "--version", action="version", version=f"castore {version}", help="print the version"
    )


_DECIMAL = re.compile(r"-?[0-9]+")


def integer(text: str) -> int:
    """An integer option: ASCII decimal digits, optionally after ``-``.

    Python's ``int`` also takes ``3_0`` (30), ``" 3"`` and other scripts'
    digits (``٣``); a version or count given so is a typo, refused as argparse
    refuses ``abc``.
    """
    if _DECIMAL.fullmatch(text) is None:
        raise ValueError(text)
    return int(text)


integer.__name__ = "int"  # argparse names the type in its message: "invalid int value: '3_0'"

_FLOAT = re.compile(
    r"-?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[-+]?[0-9]+)?|inf)|nan", re.ASCII | re.IGNORECASE
)


def decimal(text: str) -> float:
    """A number option (seconds): ASCII decimal (``0.5``, ``1e3``, ``inf``), as ``float`` reads it.

    ``float`` also takes ``3_0`` (30), ``" 3"`` and other scripts' digits (``٣``):
    typos, refused as ``--lock-timeout`` refuses them. The range is the option's to check.
    """
    if _FLOAT.fullmatch(text) is None:
        raise ValueError(text)
    return float(text)


decimal.__name__ = "float"  # argparse: "invalid float value: '3_0'", as before for 'abc'

_INT64 = 1 << 63  # Dagu's versions are Go int64s: it refuses any other number


def version_number(text: str) -> int:
    """A version option (``--version``, ``--before-version``...): an :func:`integer` >= 1."""
    number = expected_version(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"a version is 1 or more, not {text}")
    return number


def expected_version(text: str) -> int:
    """``--expected-version``: an :func:`integer` in Go's int64 range (0 or below conflicts)."""
    number = integer(text)
    if not -_INT64 <= number < _INT64:
        raise argparse.ArgumentTypeError(f"{text} is out of range (a version is a 64-bit integer)")
    return number


def keep_count(text: str) -> int:
    """``compact --keep-last``: an :func:`integer` from 1 (the newest is always kept)."""
    number = integer(text)
    if not 1 <= number < _INT64:
        raise argparse.ArgumentTypeError(f"keep 1 to {_INT64 - 1} versions, not {text}")
    return number


# As integer's: argparse names the type in its message ("invalid int value: '3_0'").
version_number.__name__ = expected_version.__name__ = keep_count.__name__ = "int"
