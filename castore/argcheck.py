"""The Python types of the public API's arguments, checked before anything is done.

A wrong type is a programming error: :class:`TypeError`, naming the argument
and the type given. ``bool`` is not taken for a number (``version=True`` is a
mistake, not version 1). Values of the right type are checked where they are
used, with the castore error that says what was wrong with them.
"""

from __future__ import annotations

__all__ = ["check_callable", "check_flag", "check_integer", "check_number", "check_text"]


def _refuse(name: str, wanted: str, value: object) -> TypeError:
    return TypeError(f"{name} must be {wanted}, not {type(value).__name__}")


def check_text(value: object, name: str, *, optional: bool = False) -> None:
    """``value`` is a ``str`` (or None when ``optional``)."""
    if type(value) is not str and not (optional and value is None):
        raise _refuse(name, "a str" + (" or None" if optional else ""), value)


def check_integer(value: object, name: str, *, optional: bool = False) -> None:
    """``value`` is an ``int`` that is not a ``bool`` (or None when ``optional``)."""
    if (not isinstance(value, int) or isinstance(value, bool)) and not (optional and value is None):
        raise _refuse(name, "an int" + (" or None" if optional else ""), value)


def check_number(value: object, name: str, *, optional: bool = False) -> None:
    """``value`` is an ``int`` or a ``float``, not a ``bool`` (or None when ``optional``)."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool)) and not (
        optional and value is None
    ):
        raise _refuse(name, "a number" + (" or None" if optional else ""), value)


def check_flag(value: object, name: str) -> None:
    """``value`` is a ``bool``."""
    if not isinstance(value, bool):
        raise _refuse(name, "a bool", value)


def check_callable(value: object, name: str, *, optional: bool = False) -> None:
    """``value`` can be called (or is None when ``optional``)."""
    if not callable(value) and not (optional and value is None):
        raise TypeError(
            f"{name} must be callable{' or None' if optional else ''}, not {type(value).__name__}"
        )
