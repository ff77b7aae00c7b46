"""How a result is written as JSON: Go's strings and raw JSON values, one msgspec encoder.

The lines themselves (which fields, in which order) are declared once, in
:mod:`castore.results`; both the results' ``to_json`` and the CLI
(``castore.cli.render``) write them with :func:`render_as`. A :class:`GoString`
is written as Go's ``encoding/json`` writes a string and a :class:`RawJSON`
verbatim, so the bytes match Dagu's.
"""

from __future__ import annotations

from typing import Any, Final, final

import msgspec

from castore import codec
from castore.pyvalues import NumberLiteral

__all__ = ["GoString", "RawJSON", "encode_json", "encode_line", "render_as"]


@final
class GoString(str):
    """Text written as Go's ``encoding/json`` writes a string (HTML escaping off).

    msgspec writes strings as Go does except U+2028 and U+2029, which Go
    escapes; the CLI writes a ``GoString`` with ``codec.encode_string``.
    """

    __slots__ = ()

    def __new__(cls, text: str = "") -> GoString:
        """``text`` as a GoString; every empty one is the same object.

        msgspec leaves out a field that holds its default *object* (an identity
        test), so an empty string left at a line field's default is not written.
        """
        if not text:
            return _EMPTY
        return super().__new__(cls, text)


_EMPTY: Final = str.__new__(GoString)


@final
class RawJSON(bytes):
    """Normalized JSON bytes, written verbatim (Go's ``json.RawMessage``)."""

    __slots__ = ()


def _to_field(kind: type, value: Any) -> Any:
    """Give a result attribute the type its line field declares."""
    if kind is GoString or kind is RawJSON:
        return kind(value)
    raise NotImplementedError(kind)


def _write_field(value: Any) -> msgspec.Raw:
    """Write a line field of a type msgspec does not know."""
    if isinstance(value, GoString):
        return msgspec.Raw(codec.encode_string(value, html=False))
    if isinstance(value, RawJSON):
        return msgspec.Raw(value)
    if isinstance(value, NumberLiteral):  # a number as the value it came from wrote it
        return msgspec.Raw(value.text.encode("ascii"))
    raise NotImplementedError(type(value))


_encoder: Final = msgspec.json.Encoder(enc_hook=_write_field)


def encode_json(value: Any) -> bytes:
    """``value`` as JSON, its numbers decoded as literals written as they were."""
    return codec.line_separators_escaped(_encoder.encode(value))


def encode_line(record: msgspec.Struct) -> bytes:
    """One JSON line (without newline) for a record struct, written as it is.

    Every string is written as Go writes it (U+2028 and U+2029 escaped), so a
    line stays one line for any reader of lines.
    """
    return codec.line_separators_escaped(_encoder.encode(record))


def render_as(result: msgspec.Struct, line_type: type[msgspec.Struct]) -> bytes:
    """One JSON line (without newline): ``result`` converted to ``line_type``, then written."""
    return encode_line(msgspec.convert(result, line_type, from_attributes=True, dec_hook=_to_field))
