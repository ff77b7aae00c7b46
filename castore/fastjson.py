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
import math
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
_CONTAINERS: Final = frozenset((dict, list, tuple))
_PLAIN: Final = _CONTAINERS | {str, int, float, bool, type(None)}
_STR: Final = frozenset((str,))
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


def _float_kind(number: float) -> int:
    """-1 for NaN or an infinity (Go refuses them); 1 if msgspec writes it unlike Go, else 0.

    msgspec writes ``X.0`` for integral floats and an exponent outside roughly
    [1e-5, 1e16); Go writes ``X`` and an exponent outside [1e-6, 1e21). A margin
    on both sides only costs a rewrite that changes nothing.
    """
    if not math.isfinite(number):
        return -1
    magnitude = abs(number)
    return int(number.is_integer() or magnitude >= 1e16 or magnitude < 1e-4)


def _walk(value: object) -> int:
    """-1 if ``value`` is not plain; else 1 if some float needs Go's form, else 0.

    Plain: only ``dict`` with ``str`` keys, ``list``, ``tuple``, ``str``, ``int``,
    finite ``float``, ``bool`` and ``None`` (exact types), within the depth and
    size limits. An object referenced many times is encoded every time (``[v, v]``
    nested 40 deep is 2**40 elements), so every reference is counted, level by
    level, as at least one byte of output, and the walk stops as soon as that
    lower bound, or the depth, passes its limit.
    """
    if type(value) not in _PLAIN:
        return -1
    odd = _float_kind(value) if type(value) is float else 0
    level: list[object] = [value]
    size = depth = 0
    while level and odd >= 0:
        depth += 1
        references = gc.get_referents(*level)
        size += len(references)
        types = set(map(type, references))
        if depth > MAX_DEPTH or size > MAX_VALUE_BYTES or not types <= _PLAIN:
            return -1
        if float in types:
            kinds = {_float_kind(r) for r in references if type(r) is float}
            if -1 in kinds:
                return -1
            odd |= 1 in kinds
        level = [r for r in references if type(r) in _CONTAINERS]
        if any(type(r) is dict and not set(map(type, r)) <= _STR for r in level):
            return -1  # a key that is not a str: msgspec would write it, Go would not
    return odd


def plain_python(value: object) -> bytes | None:
    """Go's ``json.Marshal`` bytes of ``value`` before HTML escaping; None if not plain.

    For a plain value (see :func:`_walk`) msgspec's sorted encoding is Go's, but
    for the floats that :func:`_go_floats` rewrites; a lone surrogate makes
    msgspec refuse, and the exact path replaces it as Go does.
    """
    odd = _walk(value)
    if odd < 0:
        return None
    try:
        out = _ENCODER.encode(value)
    except (*_ERRORS, UnicodeEncodeError):
        return None
    if _too_big(out):
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
