"""The command line's own errors, each with its exit code (``castore.cli.main`` maps them)."""

from __future__ import annotations

from castore.errors import InvalidValueError

__all__ = ["OptionError", "UnhealthyError", "UsageError", "worded"]


class UsageError(Exception):
    """A command-line usage error (exit 2)."""


class OptionError(Exception):
    """An option (or the variable behind it) has a value it cannot have: exit 2."""


class UnhealthyError(Exception):
    """``check`` found problems: its report is printed, then exit 1."""


def worded(exc: BaseException) -> str:
    """The message of ``exc``; for JSON text that does not parse, where (Go's words say not)."""
    position = exc.position if isinstance(exc, InvalidValueError) else None
    return f"{exc} (line {position[0]}, column {position[1]})" if position else str(exc)
