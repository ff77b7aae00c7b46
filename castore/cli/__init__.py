"""The ``castore`` command line: a thin layer over :class:`castore.Store` and its tools.

Dagu's five operations and castore's own single-key commands print exactly
one line of JSON on stdout; ``audit``, ``export`` and ``import-dagu`` stream
JSON lines. Errors print one line ``castore: <what was wrong>`` on stderr,
nothing on stdout, and exit with a code from :data:`EXIT_CODES` (mirrored in
docs/CLI.md). Progress bars go to stderr, only when it is a terminal.

The package: ``args`` (the parser), ``render`` (the JSON lines), ``invocation``
(what every command shares), and the commands by group in ``state``, ``modify``,
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
from castore.cli.errors import OptionError, UnhealthyError, UsageError
from castore.errors import (
    CastoreError,
    ConflictError,
    CorruptionError,
    FormatVersionError,
    InvalidRefError,
    InvalidValueError,
    NotFoundError,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import BinaryIO, Final

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


class _OutputError(Exception):
    """Writing the output failed (the command itself may have done its work)."""


def _write(out: BinaryIO, data: bytes, *, flush: bool = False) -> None:
    try:
        out.write(data)
        if flush:
            out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _OutputError(exc.strerror or str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see :data:`EXIT_CODES`)."""
    if sys.stdout is None:  # started with the descriptor closed: do nothing
        return _fail("standard output is closed: nothing was done", EXIT_FAILURE)
    out = sys.stdout.buffer
    try:
        parser = build_parser(castore.__version__)
        parser.argv = sys.argv[1:] if argv is None else argv
        args, extras = parser.parse_known_args(argv)
        if extras:  # argparse would say only "unrecognized arguments"
            from castore.cli.usage import unrecognized

            raise UsageError(unrecognized(args.command, extras))
        for line in _lines(args):
            _write(out, line + b"\n")
        _write(out, b"", flush=True)
    except _OutputError as exc:  # after the work: say that only the output was lost
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())  # what stays buffered goes nowhere at exit
        os.close(devnull)
        return _fail(f"cannot write the output: {exc}", EXIT_FAILURE)
    except (UsageError, OptionError) as exc:
        return _fail(str(exc), EXIT_INVALID)
    except UnhealthyError as exc:
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
    except MemoryError:  # e.g. a hostile file read whole under a memory limit
        return _fail("out of memory: the command stopped (what it wrote before stays)", 1)
    return EXIT_OK


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
    if "castore.store" not in sys.modules:
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # None: started with the descriptor closed
                    stream.flush()
        except OSError:  # a closed pipe: exit as usual (Python reports it)
            sys.exit(code)
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
    if sys.stderr is not None:  # None: started with it closed
        sys.stderr.write(f"castore: {message.translate(_ONE_LINE)}\n")
    return code
