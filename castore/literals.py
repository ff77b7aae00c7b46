"""JSON decoded with every number kept as written (:class:`~castore.pyvalues.NumberLiteral`).

A stored value's numbers keep their literal text (``1.50``, ``1e400``, ``-0``:
normalization writes them as given), so what reads a value to edit it or to
compare two versions decodes it here: encoding the result with
:func:`castore.codec.normalize_python` gives the bytes back, and two values
that differ only in how a number is written stay two values.
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

__all__ = ["decode_literal"]

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
