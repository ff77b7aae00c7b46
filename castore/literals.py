"""JSON decoded with every number kept as written (:class:`~castore.pyvalues.NumberLiteral`).

A stored value's numbers keep their literal text (``1.50``, ``1e400``, ``-0``:
normalization writes them as given), so what reads a value to edit it or to
compare two versions decodes it here: encoding the result with
:func:`castore.codec.normalize_python` gives the bytes back, and two values
that differ only in how a number is written stay two values.
:func:`equal_literals` compares two such values as JSON Patch's ``test`` does
(numbers by their exact value), at any depth.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Final

import msgspec

from castore.errors import InvalidValueError
from castore.pyvalues import NumberLiteral

if TYPE_CHECKING:
    import json

__all__ = ["decode_literal", "equal_literals"]

_FAST: Final = msgspec.json.Decoder(float_hook=NumberLiteral)
_NEGATIVE_ZERO: Final = re.compile(rb"-0(?![.0-9eE])")  # an integer -0: msgspec reads 0


def _integer(literal: str) -> int | NumberLiteral:
    if literal == "-0":
        return NumberLiteral(literal)
    try:
        return int(literal)
    except ValueError:  # past sys.get_int_max_str_digits(): keep the text
        return NumberLiteral(literal)


@functools.cache
def _slow_decoder() -> json.JSONDecoder:
    """Python's decoder, numbers as literals: for ``-0``, huge integers and deep values."""
    import json  # only then: the fast path needs msgspec alone

    return json.JSONDecoder(parse_float=NumberLiteral, parse_int=_integer)


def decode_literal(normalized: bytes) -> Any:
    """Decode normalized JSON bytes, numbers as literals (:class:`NumberLiteral`, or ``int``).

    Encoding the result with :func:`castore.codec.normalize_python` gives
    ``normalized`` back, byte for byte.
    """
    if _NEGATIVE_ZERO.search(normalized) is None:
        try:
            return _FAST.decode(normalized)
        except (msgspec.DecodeError, RecursionError, ValueError):
            pass  # deep nesting, or integers msgspec cannot hold
    try:
        text = normalized.decode()
        try:
            value, end = _slow_decoder().raw_decode(text)
        except RecursionError:
            from castore.jsonparse import parse_iterative

            value, end = parse_iterative(text, 0, _slow_decoder())
    except ValueError as exc:  # not UTF-8, not JSON (json.JSONDecodeError)
        raise InvalidValueError(f"not one JSON value: {exc}") from None
    if text[end:].strip(" \t\n\r"):
        raise InvalidValueError(f"not one JSON value: more after offset {end}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_LITERAL: Final = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")


def _number_key(number: int | float) -> tuple[str, str, int] | float:
    """A JSON number's exact value as (sign, digits, exponent): equal keys, equal numbers.

    ``1``, ``1.0`` and ``10e-1`` share one key; the float value only for a
    number that is not a literal (or whose exponent has thousands of digits).
    """
    text = number.text if isinstance(number, NumberLiteral) else repr(number)
    match = _LITERAL.fullmatch(text)
    if match is None:
        return float(number)
    sign, whole, fraction, exponent = match.groups("")
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return ("", "0", 0)  # -0 equals 0
    significant = digits.rstrip("0")
    try:
        power = int(exponent or "0") - len(fraction) + len(digits) - len(significant)
    except ValueError:  # an exponent past int()'s digit limit
        return float(number)
    return (sign, significant, power)


def equal_literals(left: Any, right: Any) -> bool:
    """RFC 6902's equality of two decoded values (section 4.6), without recursion.

    Numbers are equal when their values are, exactly (``1`` and ``1.0``);
    objects when they have the same members with equal values, in any order;
    a boolean is not a number.
    """
    todo = [(left, right)]
    while todo:
        a, b = todo.pop()
        if isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                return False
            todo.extend((value, b[name]) for name, value in a.items())
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            todo.extend(zip(a, b, strict=True))
        elif type(a) is int and type(b) is int:  # most numbers: no text made
            if a != b:
                return False
        elif _is_number(a):
            if not _is_number(b) or _number_key(a) != _number_key(b):
                return False
        elif type(a) is not type(b) or a != b:  # strings, booleans, null
            return False
    return True
