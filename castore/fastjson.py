r"""The fast path of normalization: msgspec alone, where it provably gives Go's bytes.

Most values are plain: dicts with ``str`` keys, lists, strings, ints, finite floats,
booleans and ``None``, or JSON text without invalid UTF-8. For them, msgspec's sorted
encoder already writes Go's ``json.Marshal`` bytes, except for some float forms (fixed
here from the float itself) and the HTML escapes (applied by the codec). Anything else
(an unsupported or lossy type, a lone surrogate, ``-0``, a size or depth limit) returns
None, and the codec takes its exact path, which also words the error. Both paths give
identical bytes: ``tests/property/test_codec_props.py`` compares them.

>>> plain_python({"b": [1.0, 2.5, 10**16 * 1.0], "a": None})
b'{"a":null,"b":[1,2.5,10000000000000000]}'
>>> plain_python({1, 2}) is None  # a set: msgspec would write an array
True
"""

from __future__ import annotations

import gc
import re
from typing import Final

import msgspec

from castore.jsonrules import MAX_DEPTH, MAX_VALUE_BYTES
from castore.pyvalues import format_float

__all__ = ["plain_json", "plain_python"]

_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_LITERAL_DECODER: Final = msgspec.json.Decoder(float_hook=lambda text: msgspec.Raw(text.encode()))
# Outside strings, true and false, only numbers hold digits, ".", "e", "+" or "-": splitting
# on the rest leaves the numbers alone.
_NOT_NUMBERS: Final = re.compile(rb'((?:"[^"\\]*(?:\\.[^"\\]*)*"|true|false|[^"0-9.eE+\-tf]+)+)')
_NEGATIVE_ZERO: Final = re.compile(rb"-0(?![.0-9eE])")  # an integer -0: msgspec reads 0
_SCALARS: Final = (str, int, float, type(None))  # bool is an int
_ERRORS: Final = (TypeError, ValueError, OverflowError, RecursionError, msgspec.DecodeError)


def _go_floats(out: bytes) -> bytes:
    """``out`` with each float msgspec writes differently from Go rewritten as Go does."""
    parts = _NOT_NUMBERS.split(out)
    changed = False
    for index in range(0, len(parts), 2):  # even slots: the numbers between the runs
        token = parts[index]
        if b"e" in token or token.endswith(b".0"):  # msgspec's exponent and ".0" forms
            parts[index] = format_float(float(token)).encode()
            changed = True
    return b"".join(parts) if changed else out


def _too_big(out: bytes) -> bool:
    """True when ``out`` may pass a limit (brackets in strings count: then it is exact)."""
    return len(out) > MAX_VALUE_BYTES or out.count(b"[") + out.count(b"{") > MAX_DEPTH


def _bounded(value: object) -> bool:
    """True unless ``value`` may pass the depth or size limit once expanded.

    An object referenced many times is encoded every time (``[v, v]`` nested 40
    deep is 2**40 elements): walk everything ``value`` refers to, level by level,
    counting every reference (each is at least one byte of output), and stop as
    soon as that lower bound on the size, or the depth, passes its limit.
    """
    level: list[object] = [value]
    size = depth = 0
    while level:
        depth += 1
        references = gc.get_referents(*level)
        size += len(references)
        if depth > MAX_DEPTH or size > MAX_VALUE_BYTES:
            return False
        level = [r for r in references if not isinstance(r, _SCALARS)]
    return True


def plain_python(value: object) -> bytes | None:
    """Go's ``json.Marshal`` bytes of ``value`` before HTML escaping; None if not plain.

    msgspec's encoding is kept only if decoding it gives back a value equal to
    ``value``: a set, tuple, bytes, NaN, a non-``str`` key or any other type that
    msgspec would write differently from Go fails that test. The same decoding
    finds the floats msgspec writes in another form than Go (``1.0``, ``1e21``).
    """
    if not _bounded(value):
        return None
    try:
        out = _ENCODER.encode(value)
    except (*_ERRORS, UnicodeEncodeError):
        return None
    if _too_big(out):
        return None
    odd: list[str] = []

    def note_float(text: str) -> float:
        if "e" in text or text.endswith(".0"):
            odd.append(text)
        return float(text)

    try:
        same = bool(msgspec.json.Decoder(float_hook=note_float).decode(out) == value)
    except Exception:  # noqa: BLE001  (an exotic __eq__: the exact path decides)
        return None
    if not same:
        return None
    return _go_floats(out) if odd else out


def plain_json(raw: bytes) -> bytes | None:
    """The sorted encoding of one JSON document, literals kept, before HTML escaping.

    None if the document is not plain: floats keep their text (``msgspec.Raw``) and
    integers are exact, except ``-0``, which sends the document to the exact path, as
    does anything msgspec rejects (invalid UTF-8, a lone surrogate escape, trailing
    data, deep nesting).
    """
    if _NEGATIVE_ZERO.search(raw) or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        return None
    try:
        return _ENCODER.encode(_LITERAL_DECODER.decode(raw))
    except (*_ERRORS, UnicodeEncodeError):
        return None
