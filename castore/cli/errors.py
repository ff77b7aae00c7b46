"""The command line's own errors, each with its exit code (``castore.cli.main`` maps them)."""

from __future__ import annotations

__all__ = ["OptionError", "UnhealthyError", "UsageError"]


class UsageError(Exception):
    """A command-line usage error (exit 2)."""


class OptionError(Exception):
    """An option (or the variable behind it) has a value it cannot have: exit 2."""


class UnhealthyError(Exception):
    """``check`` found problems: its report is printed, then exit 1."""
