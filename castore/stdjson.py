r"""Normalization of JSON text with the standard library alone (the CLI's quick ``set``).

A ``castore set`` is a new process, and msgspec takes longer to import than the
write takes (docs/PERFORMANCE.md, "CLI start-up"). :func:`plain_normalized`
gives :func:`castore.codec.normalize_json`'s bytes for the text a workflow step
usually writes, and None for anything else (the codec then does the work, and
words any error). It answers only for text that:

- is valid UTF-8 (the codec replaces invalid bytes as Go does) and holds no
  ``\u0000`` escape (the marker below);
- parses as one JSON value with :mod:`json` (which follows RFC 8259's grammar,
  numbers included) without deep nesting (``json``'s own limit follows the
  interpreter's recursion limit, which a program may raise: text with more
  than Go's 10,000 brackets is declined first), and without a lone surrogate
  escape in a string (Go writes U+FFFD for it).

:func:`json.dumps` (compact, keys sorted, ``ensure_ascii=False``) then writes
Go's ``json.Marshal`` bytes but for three things fixed here: numbers are put
back as their literal text (each was parsed into a marker string, ``"\u0000``
and its index, which no other string can hold); ``<``, ``>`` and ``&``, and
U+2028 and U+2029, are escaped as Go escapes them (they occur only inside
strings). Both escape ``"``, ``\``, ``\b``, ``\f``, ``\n``, ``\r``, ``\t`` by
name and other control characters as lowercase ``\u00XX``, and write every
other character as UTF-8; keys are sorted by code point, which is UTF-8's
byte order, and the last of duplicate keys wins in both.
``tests/property/test_stdjson_props.py`` checks that every answer equals the
codec's.

>>> plain_normalized(b'{ "b": [1.50, -0], "a": "<x>" }')
b'{"a":"\\u003cx\\u003e","b":[1.50,-0]}'
>>> plain_normalized(b'"\\u00e9\\n"') == '"\u00e9\\n"'.encode()
True
>>> plain_normalized(b'"\\ud800"') is None  # a lone surrogate: the codec's business
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
_MARKER: Final = b"\\u0000"  # how json.dumps writes the NUL that starts a number's marker
_NUMBER: Final = re.compile(rb'"\\u0000(\d+)"')  # a number's place in the encoded text
_ESCAPES: Final = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)
_SEPARATORS: Final = (",", ":")
_MAX_DEPTH: Final = 10_000  # castore.jsonrules.MAX_DEPTH (not imported: CLI start-up)


class _DeclinedError(Exception):
    """The text is not for this path: the codec normalizes it."""


def plain_normalized(raw: bytes) -> bytes | None:
    """The normalized bytes of the JSON text ``raw``, or None: ask :mod:`castore.codec`.

    Never raises for bad input: invalid JSON returns None, and the codec says
    what is wrong with it.
    """
    if len(raw) > MAX_PLAIN_BYTES or _MARKER in raw:
        return None
    if len(raw) > _MAX_DEPTH and raw.count(b"[") + raw.count(b"{") > _MAX_DEPTH:
        return None  # maybe past Go's depth, which json's own limit need not stop
    numbers: list[str] = []

    def number(literal: str) -> str:
        numbers.append(literal)
        return f"\0{len(numbers) - 1}"  # no other string holds NUL: a unique marker

    try:
        value = json.loads(
            raw.decode("utf-8"),
            parse_int=number,
            parse_float=number,
            parse_constant=_decline,
        )
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=_SEPARATORS)
        out = text.encode("utf-8")  # a lone surrogate fails here
    except (ValueError, RecursionError, _DeclinedError):
        return None
    if numbers:
        out = _NUMBER.sub(lambda found: numbers[int(found[1])].encode("ascii"), out)
    for char, escaped in _ESCAPES:
        if char in out:
            out = out.replace(char, escaped)
    return out


def _decline(_name: str) -> None:
    """``json``'s hook for NaN and Infinity, which are not JSON."""
    raise _DeclinedError
