"""One parsed command line: the store it names and the options every command shares.

A command is a function ``(Invocation) -> Iterator[bytes]`` that yields JSON
lines (without newlines); ``castore.cli.main`` writes them and maps errors to
exit codes. The command modules (``state``, ``history``, ``maintenance``)
each export a ``COMMANDS`` table from command name to function.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator

from castore.cli.errors import OptionError, UsageError
from castore.cli.streams import blocking_reader, say
from castore.errors import ValueTooLargeError
from castore.jsonrules import MAX_VALUE_BYTES
from castore.keys import go_trim_space, resolve_namespace

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import BinaryIO, Never, TypeAlias

    from tqdm import tqdm

    from castore.store import Store

__all__ = [
    "Command",
    "InputTooLargeError",
    "Invocation",
    "argv_bytes",
    "progress",
    "stdin",
    "value_bytes",
]


# A number of seconds in ASCII decimal (0.5, 1e3): what float() also reads (3_0, " 3",
# +3, other scripts' digits) is a typo, refused as an integer option refuses it.
_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class Invocation:
    """One parsed invocation: the store and the arguments, resolved once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scope_given = go_trim_space(args.scope or "") or None
        self.scope = self.scope_given or "dag"
        self.namespace = go_trim_space(args.namespace or "") or None

    @functools.cached_property
    def mode(self) -> str | None:
        """``--mode``, else ``$CASTORE_MODE`` (None: as the store directory).

        Raises:
            OptionError: neither private nor group.
        """
        from castore.backends import store_mode  # the library, loaded once a command needs it

        try:
            return store_mode(self.args.mode)
        except ValueError as exc:
            where = "--mode: " if self.args.mode is not None else ""
            raise OptionError(f"{where}{exc}") from None

    @functools.cached_property
    def lock_timeout(self) -> float:
        """``--lock-timeout`` in seconds (default 30).

        Raises:
            OptionError: not a number of seconds from 0 to a day.
        """
        from castore.defaults import LOCK_TIMEOUT_SECONDS, MAX_LOCK_TIMEOUT_SECONDS, lock_timeout_of

        given = self.args.lock_timeout
        if given is None:
            return LOCK_TIMEOUT_SECONDS
        try:
            if _SECONDS.fullmatch(given) is None:  # float() reads 3_0 as 30, and ٣ as 3
                raise ValueError(given)
            return lock_timeout_of(float(given))
        except ValueError:
            most = f"{MAX_LOCK_TIMEOUT_SECONDS:g}"
            raise OptionError(
                f"--lock-timeout: expected a number of seconds from 0 to {most}, got {given!r}"
            ) from None

    @property
    def location(self) -> str | None:
        """``--dir`` (None: ``$CASTORE_DIR`` or the default store).

        Raises:
            OptionError: it is empty (``--dir "$UNSET"``): never the default store by accident.
        """
        if self.args.dir == "":
            raise OptionError("--dir is empty: name a store, or leave --dir out for the default")
        return self.args.dir  # type: ignore[no-any-return]

    @functools.cached_property
    def store(self) -> Store:
        """The store, opened on first use (``upgrade`` works on the directory itself)."""
        from castore.store import Store

        args = self.args
        return Store(
            self.location,
            dag=args.dag,
            root_dag=args.root_dag,
            durable=not args.no_sync,
            actor=args.actor,
            run_id=args.run_id,
            step=args.step,
            mode=self.mode,
            lock_timeout=self.lock_timeout,
        )

    def filter_scope(self) -> str | None:
        """The scope filter of ``audit``, ``export`` and ``compact`` (None: every one).

        ``--scope``; without it, ``dag`` when ``--dag`` is given on the command
        line (``root_dag`` for ``--root-dag`` alone): a DAG named there narrows
        the command to its namespace, never silently to nothing. ``$DAG_NAME``
        narrows only with ``--scope dag``.

        Raises:
            OptionError: ``--dag`` and ``--root-dag`` given without ``--scope``, or
                either with ``--namespace`` or another scope (it would narrow nothing);
                ``--scope`` or ``--namespace`` given blank (an unset variable: not
                "every one", which leaving the option out means).
        """
        for what, given, kept in (
            ("scope", self.args.scope, self.scope_given),
            ("namespace", self.args.namespace, self.namespace),
        ):
            if given is not None and kept is None:
                raise OptionError(
                    f"--{what} is blank: name a {what}, or leave it out for every {what}"
                )
        dag, root_dag = self.args.dag is not None, self.args.root_dag is not None
        if dag or root_dag:
            flag = "--dag" if dag else "--root-dag"
            if self.namespace is not None:
                raise OptionError(f"{flag} and --namespace: give one of them")
            if self.scope_given not in (None, "dag", "root_dag"):
                raise OptionError(
                    f"{flag} narrows to a DAG's namespace, not in --scope {self.scope_given}:"
                    " give --namespace"
                )
        if self.scope_given is not None or self.namespace is not None:
            return self.scope_given
        if dag and root_dag:
            raise OptionError("--dag and --root-dag: say which with --scope dag or root_dag")
        return "dag" if dag else "root_dag" if root_dag else None

    def filter_namespace(self) -> str | None:
        """The namespace filter of ``audit``, ``export`` and ``compact`` (None: every one).

        ``--namespace`` if given; with ``--scope dag``, the namespace of
        ``--dag``/``$DAG_NAME`` when one is set (with ``root_dag``, of the root
        DAG, else the DAG), as ``get`` resolves it; neither set: every namespace.

        Raises:
            InvalidRefError: the DAG name given is blank or not a valid namespace.
        """
        scope = self.filter_scope()
        if self.namespace is not None or scope not in ("dag", "root_dag"):
            return self.namespace
        dag, root_dag = self.store.dag, self.store.root_dag
        if dag is None and (scope == "dag" or root_dag is None):
            return None
        return resolve_namespace(scope, None, dag=dag, root_dag=root_dag)

    def key(self) -> str:
        """The KEY argument, trimmed as Dagu's executor trims it."""
        return go_trim_space(self.args.key)


Command: TypeAlias = Callable[[Invocation], Iterator[bytes]]


def value_bytes(args: argparse.Namespace) -> bytes:
    """The VALUE argument's bytes (:func:`argv_bytes`), stdin read once per run.

    The quick ``set`` may read stdin and then leave the write to the command:
    the bytes are kept on ``args`` for it.
    """
    kept: bytes | None = getattr(args, "value_read", None)
    if kept is None:
        kept = args.value_read = argv_bytes(args.value)
    return kept


def stdin(instead: str = "give the value as an argument") -> BinaryIO:
    """Standard input, as bytes, read to its end even when its descriptor is non-blocking.

    Raises:
        UsageError: the process was started with standard input closed (``instead``
            says what to do).
    """
    if sys.stdin is None:
        raise UsageError(f"standard input is closed: {instead}")
    return blocking_reader(sys.stdin)


class InputTooLargeError(ValueTooLargeError):
    """Standard input holds more JSON text than a value's limit: read no further (exit 2)."""

    def __str__(self) -> str:
        return (
            f"value too large: standard input holds more than {self.limit} bytes, the limit"
            " of a value's JSON text (refused at its first byte past the limit)"
        )


def argv_bytes(text: str) -> bytes:
    """A JSON argument as its bytes: ``-`` reads stdin; otherwise argv as given.

    Invalid UTF-8 in argv stays as bytes, and the codec replaces it as Go does.
    Stdin is read up to the first byte past :data:`MAX_VALUE_BYTES`, the limit
    of a value's raw input (and of a patch's), so endless input is refused
    without being held.

    Raises:
        InputTooLargeError: stdin holds more than :data:`MAX_VALUE_BYTES` bytes.
    """
    if text == "-":
        source = stdin()
        if _at_terminal():  # `castore set k` typed without VALUE: say why it waits
            say(
                "castore: reading the value from standard input: end it with Ctrl-D "
                "(or give it as an argument)\n"
            )
        data = source.read(MAX_VALUE_BYTES + 1)
        if len(data) > MAX_VALUE_BYTES:
            raise InputTooLargeError(len(data), MAX_VALUE_BYTES)
        return data
    return os.fsencode(text)


def _at_terminal() -> bool:
    """Both standard input and stderr are a terminal: a person types the value."""
    try:
        return sys.stdin is not None and sys.stderr is not None and os.isatty(0) and os.isatty(2)
    except OSError:
        return False


def progress(unit: str) -> tqdm[Never]:
    """A progress bar on stderr, shown only when stderr is a terminal.

    tqdm is imported here: only the commands that show a bar (audit, export,
    import, maintenance) load it, not the state commands (CLI start-up).
    """
    from tqdm import tqdm

    shown = sys.stderr is not None and sys.stderr.isatty()  # None: started with it closed
    return tqdm(unit=unit, file=sys.stderr, disable=not shown, leave=False)
