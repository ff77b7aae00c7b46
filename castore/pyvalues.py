r"""Check a Python value and convert it to the tree the codec encodes as Go's ``json.Marshal``.

Accepts ``dict`` (``str`` keys), ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool``,
``None`` and their subclasses; numbers become ``msgspec.Raw`` in Go's float64 and integer
forms (a :class:`NumberLiteral` keeps its literal text, as Go's ``json.Number`` does),
strings have lone surrogates replaced by U+FFFD. Enforces the depth limit (which
also ends reference cycles) and stops runaway sizes early, all without recursion. Pure, no
I/O, thread-safe.

>>> one, big, text = from_python({"x": (1.0, 1e21, "\ud800")})["x"]
>>> bytes(one), bytes(big), text == "\ufffd"
(b'1', b'1e+21', True)
"""

from __future__ import annotations

import math
import re
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Any, Final

import msgspec

from castore.errors import InvalidValueError, ValueTooLargeError
from castore.jsonrules import MAX_DEPTH, MAX_VALUE_BYTES, fix_str

__all__ = ["NumberLiteral", "format_float", "from_python", "int_text"]

_DECIMAL_CONTEXT: Final = Context(prec=40)  # ours, whatever the thread's context is
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class NumberLiteral(float):
    """A JSON number that keeps its literal text (``1.50``, ``1E2``, ``-0``, ``1e400``).

    It compares and computes as its float value, and is normalized as its text,
    as Go's ``json.Number`` is (and as :func:`castore.codec.normalize_json` keeps
    every literal), so a value decoded into literals and encoded again keeps
    every number byte for byte (:mod:`castore.edits`). Immutable: copies are itself.

    Raises:
        InvalidValueError: ``text`` is not a JSON number.
    """

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> NumberLiteral:
        """The number written ``text``."""
        if _JSON_NUMBER.fullmatch(text) is None:
            raise InvalidValueError(f"not a JSON number: {text[:40]!r}")
        made = super().__new__(cls, float(text))
        made.text = text
        return made

    def __copy__(self) -> NumberLiteral:
        return self

    def __deepcopy__(self, memo: object) -> NumberLiteral:
        return self

    def __reduce__(self) -> tuple[type[NumberLiteral], tuple[str]]:
        return (NumberLiteral, (self.text,))

    def __repr__(self) -> str:
        return f"NumberLiteral({self.text!r})"


def format_float(number: float) -> str:
    """Format a float as Go's encoding/json does for a float64."""
    if math.isnan(number) or math.isinf(number):
        shown = "NaN" if math.isnan(number) else ("+Inf" if number > 0 else "-Inf")
        raise InvalidValueError(f"json: unsupported value: {shown}")
    # repr has the shortest round-tripping digits, as strconv's precision -1 does; Go
    # uses 'e' form (exponent without a leading zero) outside [1e-6, 1e21), else 'f'.
    shortest = Decimal(float.__repr__(number)).normalize(_DECIMAL_CONTEXT)
    fixed = number == 0 or 1e-6 <= abs(number) < 1e21
    return format(shortest, "f" if fixed else "e")


_EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)  # integers: no rounding
_INT_BITS: Final = 128  # converted by Decimal() at once


def int_text(value: int) -> str:
    """The decimal text of an integer of any length, in sub-quadratic time.

    ``int.__repr__`` refuses past 4,300 digits, and ``str(Decimal(value))``
    is quadratic (a 1,000,000-digit integer: 13 s): the binary halves are
    converted and joined with Decimal's fast multiplication (as CPython 3.12
    does).
    """
    try:
        return int.__repr__(value)
    except ValueError:
        pass
    powers: dict[int, Decimal] = {}

    def power(bits: int) -> Decimal:  # 2**bits
        if bits not in powers:
            half = bits // 2
            powers[bits] = (
                _EXACT.power(2, bits)
                if bits <= _INT_BITS
                else _EXACT.multiply(power(half), power(bits - half))
            )
        return powers[bits]

    def convert(number: int, bits: int) -> Decimal:
        if bits <= _INT_BITS:
            return Decimal(number)
        half = bits // 2
        high = number >> half
        low = number - (high << half)
        return _EXACT.add(
            _EXACT.multiply(convert(high, bits - half), power(half)), convert(low, half)
        )

    magnitude = convert(abs(value), abs(value).bit_length())
    return ("-" if value < 0 else "") + str(magnitude)


def _scalar(item: object) -> Any:
    if item is None or item is True or item is False:
        return item
    if isinstance(item, int):
        try:
            return msgspec.Raw(int.__repr__(item))
        except ValueError:  # past sys.get_int_max_str_digits()
            return msgspec.Raw(int_text(item))
    if isinstance(item, float):
        if type(item) is NumberLiteral:
            return msgspec.Raw(item.text)
        return msgspec.Raw(format_float(item))
    raise InvalidValueError(f"json: unsupported type: {type(item).__qualname__}")


def _object_items(item: dict[Any, Any]) -> dict[str, Any]:
    for key in item:
        if not isinstance(key, str):
            kind = type(key).__qualname__
            raise InvalidValueError(f"json: unsupported key type: {kind} (keys must be str)")
    fixed = {str.__str__(key): value for key, value in item.items()}
    if any(fix_str(key) is not key for key in fixed):
        # Keys that collide once fixed: the one sorting last wins, whatever the dict order.
        fixed = {fix_str(key): fixed[key] for key in sorted(fixed)}
    return fixed


def from_python(value: object) -> Any:
    """Check a Python value and convert it to an encodable tree, without recursion.

    Args:
        value: the value to convert.

    Returns:
        A tree of ``dict`` (``str`` keys), ``list``, ``str``, ``msgspec.Raw`` (numbers),
        ``bool`` and ``None``, new containers throughout (subclasses become their base).

    Raises:
        InvalidValueError: for NaN or an infinity, a non-``str`` key, an unsupported type,
            or nesting deeper than :data:`MAX_DEPTH` (including a cycle).
        ValueTooLargeError: when a lower bound on the encoded size exceeds
            :data:`MAX_VALUE_BYTES`.
    """
    root: list[Any] = [None]
    todo: list[tuple[object, Any, Any, int]] = [(value, root, 0, 0)]
    node: Any
    size = 0  # a lower bound on the output length: stops runaway values (shared refs) early
    while todo:
        item, parent, slot, depth = todo.pop()
        if isinstance(item, str):
            parent[slot] = fix_str(str.__str__(item))
            size += len(item) + 2
        elif not isinstance(item, (dict, list, tuple)):
            parent[slot] = _scalar(item)
            size += 1
        elif depth >= MAX_DEPTH:  # also ends reference cycles
            raise InvalidValueError(f"exceeded max nesting depth {MAX_DEPTH}")
        elif isinstance(item, dict):
            children = _object_items(item)
            parent[slot] = node = dict.fromkeys(children)
            todo.extend((child, node, key, depth + 1) for key, child in children.items())
            size += 1 + 4 * len(children) + sum(map(len, children))  # {"k":v,"k":v}
        else:
            parent[slot] = node = [None] * len(item)
            todo.extend((child, node, index, depth + 1) for index, child in enumerate(item))
            size += 1 + len(item)  # [v,v]
        if size > MAX_VALUE_BYTES:
            raise ValueTooLargeError(size, MAX_VALUE_BYTES)
    return root[0]
