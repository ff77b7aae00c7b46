"""The ``castore`` command line: a thin layer over :class:`castore.Store` and its tools.

Dagu's five operations and castore's own single-key commands print exactly
one line of JSON on stdout; ``audit``, ``export`` and ``import-dagu`` stream
JSON lines. Errors print one line ``castore: <what was wrong>`` on stderr,
nothing on stdout, and exit with a code from :data:`EXIT_CODES` (mirrored in
docs/CLI.md). Progress bars go to stderr, only when it is a terminal.

The package: ``args`` (the parser), ``render`` (the JSON lines), ``streams``
(stdin, stdout and stderr, read and written whole), ``invocation`` (what every
command shares), and the commands by group in ``state``, ``modify``,
``history`` and ``maintenance``; this module runs one of them, importing only that
command's module (:data:`COMMANDS` imports on lookup), and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

import castore
from castore.cli.args import build_parser
from castore.cli.errors import OptionError, UnhealthyError, UsageError, worded
from castore.cli.streams import Output, OutputError, discard, say, utf8_names
from castore.errors import (
    CastoreError,
    ConflictError,
    CorruptionError,
    FormatVersionError,
    InvalidRefError,
    InvalidValueError,
    NotFoundError,
)
from castore.keys import validate_scope

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Final

    from castore.cli.invocation import Command

__all__ = ["COMMANDS", "EXIT_CODES", "main", "run"]

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


# The module of each command: a run imports only its command's module (CLI start-up,
# docs/PERFORMANCE.md), so that a `get` never loads tqdm, audit or the transfer code.
_GROUPS: Final = {
    **dict.fromkeys(("get", "set", "diff", "delete", "list"), "state"),
    **dict.fromkeys(("patch", "incr"), "modify"),
    **dict.fromkeys(("history", "rollback", "audit"), "history"),
    **dict.fromkeys(
        ("export", "import", "import-dagu", "gc", "compact", "check", "upgrade", "stats"),
        "maintenance",
    ),
    "serve": "serve",  # the only command that loads the server stack
}


def _handler(name: str) -> Command:
    """The function of command ``name``, importing its module (and only it) on first use."""
    group = _GROUPS[name]
    if group == "state":
        from castore.cli import state

        return state.COMMANDS[name]
    if group == "modify":
        from castore.cli import modify

        return modify.COMMANDS[name]
    if group == "history":
        from castore.cli import history

        return history.COMMANDS[name]
    if group == "serve":
        from castore.cli import serve

        return serve.COMMANDS[name]
    from castore.cli import maintenance

    return maintenance.COMMANDS[name]


class _Commands(Mapping[str, "Command"]):
    """Command name -> function; a lookup imports only that command's module."""

    def __getitem__(self, name: str) -> Command:
        return _handler(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_GROUPS)

    def __len__(self) -> int:
        return len(_GROUPS)

    def __contains__(self, name: object) -> bool:
        return name in _GROUPS


COMMANDS: Final[Mapping[str, Command]] = _Commands()


def _lines(args: argparse.Namespace) -> Iterator[bytes]:
    """The lines of the command ``args`` names (``get`` and ``set`` first try :mod:`.quick`)."""
    if args.command in ("get", "set"):
        from castore.cli import quick

        line = (quick.quick_get if args.command == "get" else quick.quick_set)(args)
        if line is not None:
            yield line
            return
    from castore.cli.invocation import Invocation  # the library, loaded from here on
    from castore.decoding import DECODED

    token = DECODED.set(False)  # results are printed: their values stay undecoded
    try:
        yield from COMMANDS[args.command](Invocation(args))
    finally:
        DECODED.reset(token)


# The commands that only read, streaming many lines: when their output is lost they stop
# (`castore export | head`). Every other one runs to its end without output, so that its
# exit code says what it did (`check` finding problems exits 1 whoever reads the report).
_STREAMED_READS: Final = frozenset({"export", "audit"})
_KEY_WRITES: Final = frozenset({"set", "diff", "delete", "patch", "incr", "rollback"})
_STORE_WRITES: Final = frozenset(
    {"import", "import-dagu", "gc", "compact", "check", "upgrade"}  # each may write
)


def _unwritten(lines: Iterator[bytes], out: Output) -> OSError | None:
    """Write ``lines`` to ``out``; the error that stopped the writing, if one did.

    Only the writes are guarded: an error of the command itself propagates.
    """
    for line in lines:
        try:
            out.write(line + b"\n")
        except OSError as exc:
            return exc
    return _flushed(out)


def _flushed(out: Output) -> OSError | None:
    """Flush ``out``; the error that stopped it, if one did."""
    try:
        out.flush()
    except OSError as exc:
        return exc
    return None


def _why(failed: OSError) -> str:
    """Why the output was lost: "" when its reader went away (a closed pipe)."""
    return "" if isinstance(failed, BrokenPipeError) else failed.strerror or str(failed)


def _emit(args: argparse.Namespace, out: Output, lost: list[str]) -> None:
    """Run the command ``args`` names, writing its lines to ``out``.

    When ``out`` cannot be written, :func:`_why` is appended to ``lost`` and
    the command stops if it is a streamed read, else runs to its end writing
    nothing more. Its errors propagate, after the lines it printed before
    them (a report, an export's first keys).
    """
    lines = _lines(args)
    try:
        failed = _unwritten(lines, out)
    except BaseException:
        failed = _flushed(out)
        lost.extend(() if failed is None else (_why(failed),))
        raise
    if failed is None:
        return
    lost.append(_why(failed))
    if args.command in _STREAMED_READS:
        lines.close()  # type: ignore[attr-defined]  # a generator
        return
    for _ in lines:  # the rest of the work, its output dropped
        pass


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (None: the process's, its names the UTF-8 text of their bytes).

    Raises:
        UsageError: an argument no option or command takes.
    """
    parser = build_parser(castore.__version__)
    parser.argv = sys.argv[1:] if argv is None else argv
    try:
        args, extras = parser.parse_known_args(argv)
    except UsageError as exc:
        from castore.cli.usage import close_command, dash_hint, unrecognized

        if not parser.unknown:
            raise UsageError(close_command(dash_hint(str(exc), parser.argv))) from None

        raise UsageError(unrecognized(None, parser.unknown, parser.long_options())) from None
    if extras:  # argparse would say only "unrecognized arguments"
        from castore.cli.usage import unrecognized

        raise UsageError(
            unrecognized(args.command, extras, after=_after_dashes(parser.argv, extras))
        )
    if argv is None:  # the process's own command line: bytes the locale decoded
        utf8_names(args)
    scope = getattr(args, "scope", None)
    if scope and scope.strip():  # given before a command that takes none: still checked
        validate_scope(scope.strip())  # trimmed, as Dagu does (a blank one: the commands word it)
    return args


def _after_dashes(argv: Sequence[str], extras: Sequence[str]) -> int:
    """How many of ``extras`` (unconsumed, in order) came after ``--``: its last ones."""
    if "--" not in argv:
        return 0
    rest = list(argv[list(argv).index("--") + 1 :])
    count = 0
    while count < len(extras) and count < len(rest) and extras[-1 - count] == rest[-1 - count]:
        count += 1
    return count


_CODES: Final = (  # in order: the first class that matches gives the exit code
    ((UsageError, OptionError), EXIT_INVALID),
    (UnhealthyError, EXIT_FAILURE),
    ((InvalidRefError, InvalidValueError), EXIT_INVALID),
    (ConflictError, EXIT_CONFLICT),
    (NotFoundError, EXIT_NOT_FOUND),
    (FormatVersionError, EXIT_FAILURE),  # not a (current) castore store
    (CorruptionError, EXIT_DAMAGED),
    (CastoreError, EXIT_FAILURE),
)


def _verdict(exc: BaseException, command: str) -> tuple[str, int] | None:
    """The message and exit code of an error (None: not one the command line words)."""
    for kinds, code in _CODES:
        if isinstance(exc, kinds):
            return worded(exc), code
    if isinstance(exc, OutputError):  # the help or the version, not written
        return f"cannot write the output: {exc}", EXIT_FAILURE
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_FAILURE
    if isinstance(exc, KeyboardInterrupt):
        if command in _KEY_WRITES:
            return "interrupted: the write may have been made (castore history KEY shows)", 130
        if command in _STORE_WRITES:
            return (
                "interrupted: what the command wrote stays; a write in progress may have been made",
                130,
            )
        return "interrupted", 130
    if isinstance(exc, MemoryError):  # e.g. a hostile file read whole under a memory limit
        return "out of memory: the command stopped (what it wrote before stays)", EXIT_FAILURE
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see :data:`EXIT_CODES`).

    ``argv``: the arguments as text, as a Python caller means them; None: the
    process's command line, whose names are read as the UTF-8 text of their bytes
    whatever the locale (:func:`~castore.cli.streams.utf8_names`).
    """
    if sys.stdout is None:  # started with the descriptor closed: do nothing
        return _fail("standard output is closed: nothing was done", EXIT_FAILURE)
    lost: list[str] = []  # why the output could not be written ("": its reader left)
    command = value = ""
    try:
        args = _parse(argv)
        command = args.command
        value = getattr(args, "value", None) or getattr(args, "patch", None) or ""
        _emit(args, Output(sys.stdout), lost)
    except (Exception, KeyboardInterrupt) as exc:
        verdict = _verdict(exc, command)
        if verdict is None:
            raise
        message, code = verdict
        if isinstance(exc, InvalidValueError) and exc.position and _a_file(value):
            what = "PATCH" if command == "patch" else "VALUE"
            message += f" ({what} is JSON text, not a file: castore {command} KEY < {value})"
        if lost and lost[0]:
            message = f"{message}; the output could not be written: {lost[0]}"
        return _fail(message, code)
    if lost and lost[0]:  # after the work: say that only the output was lost
        done = " (the command completed: what it wrote is stored)"
        return _fail(f"cannot write the output: {lost[0]}{done * _writes(command)}", EXIT_FAILURE)
    return EXIT_OK


def _a_file(value: str) -> bool:
    """True if ``value`` (a VALUE that is not JSON) names a file: meant as its contents?"""
    try:
        return value not in ("", "-") and os.path.isfile(value)
    except (ValueError, OSError):  # a NUL, a name too long
        return False


def _writes(command: str) -> bool:
    """True for a command that may write to the store."""
    return command in _KEY_WRITES or command in _STORE_WRITES


def run() -> None:
    """The ``castore`` command: :func:`main` for this process, then exit.

    When the library was never loaded (a ``get`` or ``set`` the quick path
    answered, or refused), nothing is left to finalize: no store, connection
    or pool, every file written with ``os.write``. The process then ends
    with ``os._exit`` once stdout and stderr are flushed, skipping the
    interpreter's teardown of its modules (2.7 ms of a 22 ms ``get``:
    docs/PERFORMANCE.md, "CLI start-up"). Otherwise it exits as usual.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: started with the descriptor closed
            try:
                stream.flush()
            except (OSError, ValueError):  # its flush at exit would fail again (exit 120)
                discard(stream)
    if "castore.store" not in sys.modules:
        os._exit(code)
    sys.exit(code)


# C0 controls and DEL as escapes: an error is one line, whatever names it quotes (a file
# name planted in a store may hold a newline and a forged "castore: ..." line after it).
_ONE_LINE = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
}


def _fail(message: str, code: int) -> int:
    """Say ``castore: message`` on stderr if it can be written (else nothing); return ``code``."""
    say(f"castore: {message.translate(_ONE_LINE)}\n")
    return code
