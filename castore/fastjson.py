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
from bisect import bisect_right
from math import isfinite
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


def _go_number(text: str) -> msgspec.Raw:
    """A float as msgspec wrote it, as Go writes it (the float hook of ``_GO_DECODER``)."""
    if "e" in text:
        return msgspec.Raw(format_float(float(text)))
    if text.endswith(".0"):  # under 1e15, an integral float is exactly its integer part
        return msgspec.Raw(text[:-2] if len(text) <= 17 else format_float(float(text)))
    return msgspec.Raw(text)


_GO_DECODER: Final = msgspec.json.Decoder(float_hook=_go_number)


def _go_floats(out: bytes) -> bytes:
    """``out`` with each float msgspec writes differently from Go rewritten as Go does.

    Decoding ``out`` hands each float's text to :func:`_go_number`; encoding the result
    again gives every other byte back as it was (keys are already sorted, and strings
    and integers are read exactly).
    """
    try:
        return _ENCODER.encode(_GO_DECODER.decode(out))
    except _ERRORS:  # nested deeper than msgspec recurses from here, say
        return _go_floats_by_tokens(out)


def _go_floats_by_tokens(out: bytes) -> bytes:
    """:func:`_go_floats`, rewriting each number token between the runs of other text."""
    parts = _NOT_NUMBERS.split(out)
    changed = False
    for index in range(0, len(parts), 2):  # even slots: the numbers between the runs
        token = parts[index]
        if b"e" in token or token.endswith(b".0"):  # msgspec's exponent and ".0" forms
            parts[index] = format_float(float(token)).encode()
            changed = True
    return b"".join(parts) if changed else out


def _too_big(out: bytes, references: int) -> bool:
    """True when ``out`` may pass a limit (brackets in strings count: then it is exact).

    The root and each of the ``references`` :func:`_walk` counted write at least one
    byte outside strings, a container two (one of them ``[`` or ``{``): so at most
    ``len(out) - references - 1`` bytes of ``out`` are ``[`` or ``{``, and counting them
    (a pass over ``out``) is needed only past that.
    """
    if len(out) > MAX_VALUE_BYTES:
        return True
    return len(out) - references > MAX_DEPTH + 1 and out.count(b"[") + out.count(b"{") > MAX_DEPTH


def _float_kind(floats: list[float]) -> int:
    """-1 for NaN or an infinity (Go refuses them); 1 if msgspec writes one unlike Go, else 0.

    msgspec writes ``X.0`` for integral floats and an exponent outside roughly
    [1e-5, 1e16); Go writes ``X`` and an exponent outside [1e-6, 1e21). A margin
    on both sides only costs a rewrite that changes nothing. NaN or an infinity makes
    the sum NaN or infinite; finite floats whose sum overflows are checked one by one.
    """
    if not floats:
        return 0
    if not isfinite(sum(floats)) and not all(map(isfinite, floats)):
        return -1
    if any(map(float.is_integer, floats)):  # zeros included
        return 1
    ordered = sorted(floats)
    small = bisect_right(ordered, -1e-4)  # the first above -1e-4: is it under 1e-4?
    return int(
        ordered[0] <= -1e16
        or ordered[-1] >= 1e16
        or (small < len(ordered) and ordered[small] < 1e-4)
    )


def _plain_tables(level: list[object]) -> bool:
    """True when each ``dict`` in ``level`` gives its values as references, keys all ``str``.

    A general table gives its keys too (read here); a dict whose values live in its
    object (an instance ``__dict__`` in CPython 3.13) gives none: not plain, for safety.
    """
    tables = [item for item in level if type(item) is dict]
    if list(map(len, map(gc.get_referents, tables))) == list(map(len, tables)):
        return True
    for table in tables:
        references = len(gc.get_referents(table))
        if references == 2 * len(table):
            if not _STR.issuperset(map(type, table)):
                return False
        elif references != len(table):
            return False
    return True


class _Probe:
    value: list[object]


def _values_are_referents() -> bool:
    """True when an instance ``__dict__`` gives its values as references (not in 3.13)."""
    probe = _Probe()
    probe.value = []
    return gc.get_referents(probe.__dict__) == [probe.value]


_HIDDEN_VALUES: Final = not _values_are_referents()  # then each table is counted alone


def _walk(value: object) -> tuple[int, int]:
    """(-1, 0) if ``value`` is not plain, else (``odd``, the references counted).

    ``odd`` is 1 if some float needs Go's form (:func:`_go_floats`), else 0.

    Plain: only ``dict`` with ``str`` keys, ``list``, ``tuple``, ``str``, ``int``,
    finite ``float``, ``bool`` and ``None`` (exact types), within the depth and
    size limits. An object referenced many times is encoded every time (``[v, v]``
    nested 40 deep is 2**40 elements), so every reference is counted, level by
    level, as at least one byte of output, and the walk stops as soon as that
    lower bound, or the depth, passes its limit.

    A level is all the references of the one above (``gc.get_referents``: nothing for
    the scalars, the items of a list or tuple, the values of a ``dict``, and its keys
    too unless all are exact ``str``: CPython keeps such a table, and any other key
    turns it into a general one for good). So a level with as many references as the
    lengths of its containers add up to holds only ``str`` keys; else they are read.
    (CPython 3.13 gives no values for an instance ``__dict__``: there, each ``dict``
    is counted alone.)
    """
    if type(value) not in _CONTAINERS:
        if type(value) is float:
            return _float_kind([value]), 0
        return (0 if type(value) in _PLAIN else -1), 0
    level: list[object] = [value]
    floats: list[float] = []
    size = depth = 0
    expected = len(value)  # type: ignore[arg-type]  # the references if keys are all str
    while True:
        references = gc.get_referents(*level)
        counted = expected < 0 or (len(references) == expected and not _HIDDEN_VALUES)
        if not counted and not _plain_tables(level):
            return -1, 0  # a key that is not an exact str, or values out of sight
        depth += 1
        size += len(references)
        if depth > MAX_DEPTH or size > MAX_VALUE_BYTES:
            return -1, 0
        types = set(map(type, references))
        if not types <= _PLAIN:
            return -1, 0
        if float in types:
            floats += [item for item in references if type(item) is float]
        if dict in types:
            level = references
            if len(types) > 1:
                level = [item for item in references if type(item) in _CONTAINERS]
            expected = sum(map(len, level))  # type: ignore[arg-type]
        elif types.isdisjoint(_CONTAINERS):
            break
        else:
            level, expected = references, -1
    kind = _float_kind(floats) if floats else 0
    return kind, (size if kind >= 0 else 0)


def plain_python(value: object) -> bytes | None:
    """Go's ``json.Marshal`` bytes of ``value`` before HTML escaping; None if not plain.

    For a plain value (see :func:`_walk`) msgspec's sorted encoding is Go's, but
    for the floats that :func:`_go_floats` rewrites; a lone surrogate makes
    msgspec refuse, and the exact path replaces it as Go does.
    """
    odd, references = _walk(value)
    if odd < 0:
        return None
    try:
        out = _ENCODER.encode(value)
    except (*_ERRORS, UnicodeEncodeError):
        return None
    if _too_big(out, references):
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
