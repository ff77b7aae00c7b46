r"""Normalization of plain JSON text with the standard library alone (the CLI's quick ``set``).

A ``castore set`` is a new process, and msgspec takes longer to import than the
write takes (docs/PERFORMANCE.md, "CLI start-up"). :func:`plain_normalized`
gives :func:`castore.codec.normalize_json`'s bytes for the text a workflow step
usually writes, and None for anything else (the codec then does the work, and
words any error). It answers only for text that:

- is printable ASCII without a backslash, plus JSON whitespace (so every string
  is written back exactly as read, and no escape, invalid UTF-8 or lone
  surrogate needs Go's rules);
- parses as one JSON value with :mod:`json` (which follows RFC 8259's grammar,
  numbers included) without deep nesting.

Numbers are kept as their literal text, keys sorted (byte order is code point
order in ASCII; the last of duplicate keys wins, in both), and ``<``, ``>``
and ``&`` escaped as Go escapes them; Go escapes nothing else in printable
ASCII but ``"`` and ``\``, which such text cannot hold inside a string.
``tests/property/test_stdjson_props.py`` checks that every answer equals the
codec's.

>>> plain_normalized(b'{ "b": [1.50, -0], "a": "<x>" }')
b'{"a":"\\u003cx\\u003e","b":[1.50,-0]}'
>>> plain_normalized(b'{"a": "\\n"}') is None  # an escape: the codec's business
True
"""

from __future__ import annotations

import json
import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Final

__all__ = ["MAX_PLAIN_BYTES", "plain_normalized"]

MAX_PLAIN_BYTES: Final = 65536  # longer text is left to the codec (its fast path is C)
_PLAIN: Final = bytes(b for b in range(0x20, 0x7F) if b != 0x5C) + b" \t\n\r"
_NUMBER: Final = re.compile(rb'"\\u0000(\d+)"')  # a number's place in the encoded text
_HTML: Final = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"))
_SEPARATORS: Final = (",", ":")


class _DeclinedError(Exception):
    """The text is not plain: the codec normalizes it."""


def plain_normalized(raw: bytes) -> bytes | None:
    """The normalized bytes of the JSON text ``raw``, or None: ask :mod:`castore.codec`.

    Never raises for bad input: invalid JSON returns None, and the codec says
    what is wrong with it.
    """
    if len(raw) > MAX_PLAIN_BYTES or raw.translate(None, _PLAIN):
        return None
    numbers: list[str] = []

    def number(literal: str) -> str:
        numbers.append(literal)
        return f"\0{len(numbers) - 1}"  # no plain string holds NUL: a unique marker

    try:
        value = json.loads(
            raw.decode("ascii"),
            parse_int=number,
            parse_float=number,
            parse_constant=_decline,
        )
        out = json.dumps(value, sort_keys=True, separators=_SEPARATORS).encode("ascii")
    except (ValueError, RecursionError, _DeclinedError):
        return None
    if numbers:
        out = _NUMBER.sub(lambda found: numbers[int(found[1])].encode("ascii"), out)
    for char, escaped in _HTML:
        if char in out:
            out = out.replace(char, escaped)
    return out


def _decline(_name: str) -> None:
    """``json``'s hook for NaN and Infinity, which are not JSON."""
    raise _DeclinedError
