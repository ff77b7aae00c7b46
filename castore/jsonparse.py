r"""Parse and check one JSON document the way Go's ``encoding/json`` decoder does.

Decodes exactly one value (Dagu's ``json.Decoder`` loop: JSON whitespace around it, a
second value is an error), words syntax errors as Go's scanner does, repairs lone
surrogate escapes to U+FFFD, and rejects nesting deeper than Go allows
(:func:`check_depth`, run on the raw text before parsing). Deep values that exhaust
Python's recursion take an iterative path with the same result. Numbers are kept as their
literal text (``msgspec.Raw``) or decoded, as the caller asks. Pure, no I/O, thread-safe.

>>> doc = rb'[1.50, {"a": "\ud800"}]'
>>> parse_document(doc.decode(), doc, literal_numbers=False) == [1.5, {"a": "\ufffd"}]
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any, Final, TypeVar

import msgspec

from castore.errors import InvalidValueError
from castore.goerrors import describe_at, number_error, quote_char
from castore.jsonrules import MAX_DEPTH, fix_str

__all__ = [
    "DECODERS",
    "EMPTY_VALUE",
    "check_depth",
    "object_members",
    "parse_document",
    "parse_int",
    "parse_iterative",
    "with_deep_members",
    "without_lone_surrogates",
]

# Empty (or only whitespace) input. Dagu says ``invalid value: EOF`` (Go's decoder); the
# exit code is the same, the words say what to do.
EMPTY_VALUE: Final = 'empty input: give one JSON value (for an empty string, give "")'

T = TypeVar("T")
_WS: Final = re.compile(r"[ \t\n\r]*")  # JSON whitespace, as Go's isSpace
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")  # can decode to a lone surrogate
_ESCAPE_PAIR: Final = re.compile(rb"\\.", re.DOTALL)
_STRING_BODY: Final = re.compile(rb'"[^"]*(?:"|\Z)')  # after escape pairs are gone
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _reject_constant(name: str) -> Any:
    if name.startswith("-"):
        raise InvalidValueError(f"invalid character {quote_char(name[1])} in numeric literal")
    raise InvalidValueError(
        f"invalid character {quote_char(name[0])} looking for beginning of value"
    )


_INT_PART: Final = 600  # digits int() converts at once (sys.set_int_max_str_digits takes >= 640)


def parse_int(literal: str) -> int:
    """An integer literal of any length, in O(n^1.6) time.

    ``int()`` refuses past 4,300 digits, and converting whole is quadratic (a
    1 MiB literal: 25 s through ``Decimal``): the digits are split in halves,
    converted, and joined with one multiplication (CPython's Karatsuba).
    """
    digits = literal.lstrip("-")
    if len(digits) <= _INT_PART:
        return int(literal)
    magnitude = _join_digits(digits, {})
    return -magnitude if literal.startswith("-") else magnitude


def _join_digits(digits: str, powers: dict[int, int]) -> int:
    """The value of a string of decimal digits, by halves (``powers``: 10**n, cached)."""
    if len(digits) <= _INT_PART:
        return int(digits)
    low = len(digits) // 2
    if low not in powers:
        powers[low] = 10**low
    return _join_digits(digits[:-low], powers) * powers[low] + _join_digits(digits[-low:], powers)


def _fixed_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {fix_str(key): value for key, value in pairs}


# Keyed by (literal_numbers, fixing). Literal numbers become msgspec.Raw, which the encoder
# writes back verbatim; "fixing" decoders replace lone surrogates in object keys.
DECODERS: Final = {
    (literal, fixing): json.JSONDecoder(
        parse_int=msgspec.Raw if literal else parse_int,
        parse_float=msgspec.Raw if literal else float,
        parse_constant=_reject_constant,
        object_pairs_hook=_fixed_object if fixing else None,
    )
    for literal in (False, True)
    for fixing in (False, True)
}


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)  # [ \t\n\r]* matches everywhere
    return match.end() if match else pos


class _Frame:
    __slots__ = ("is_object", "items", "key")

    def __init__(self, is_object: bool) -> None:
        self.is_object = is_object
        self.items: list[Any] = []
        self.key = ""


def _read_key(text: str, pos: int, decoder: json.JSONDecoder) -> tuple[str, int]:
    pos = _skip_ws(text, pos)
    if not text.startswith('"', pos):
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
    key, pos = decoder.raw_decode(text, pos)
    pos = _skip_ws(text, pos)
    if not text.startswith(":", pos):
        raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
    return key, pos + 1


def parse_iterative(text: str, pos: int, decoder: json.JSONDecoder) -> tuple[Any, int]:
    """Parse one value without recursion; scalars go through ``decoder`` as in the C path.

    Args:
        text: the document.
        pos: where the value starts (not at whitespace).
        decoder: one of :data:`DECODERS`.

    Returns:
        The value, as ``decoder.raw_decode`` gives it, and the position after it.

    Raises:
        json.JSONDecodeError: on a syntax error, as ``decoder.raw_decode`` raises it.
        InvalidValueError: for ``NaN``, ``Infinity`` or ``-Infinity``.
    """
    fixing = decoder.object_pairs_hook is _fixed_object
    make_object: Callable[[list[tuple[str, Any]]], Any] = _fixed_object if fixing else dict
    stack: list[_Frame] = []
    while True:
        pos = _skip_ws(text, pos)
        opener = text[pos : pos + 1]
        if opener in ("[", "{"):
            frame = _Frame(opener == "{")
            pos = _skip_ws(text, pos + 1)
            if text.startswith("}" if frame.is_object else "]", pos):
                value: Any = make_object([]) if frame.is_object else []
                pos += 1
            else:
                stack.append(frame)
                if frame.is_object:
                    frame.key, pos = _read_key(text, pos, decoder)
                continue
        else:
            value, pos = decoder.raw_decode(text, pos)
        while stack:  # attach the value; close every container that ends here
            frame = stack[-1]
            frame.items.append((frame.key, value) if frame.is_object else value)
            pos = _skip_ws(text, pos)
            if text.startswith(",", pos):
                pos += 1
                if frame.is_object:
                    frame.key, pos = _read_key(text, pos, decoder)
                break
            if not text.startswith("}" if frame.is_object else "]", pos):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos += 1
            stack.pop()
            value = make_object(frame.items) if frame.is_object else frame.items
        else:
            return value, pos


def _parse_value(
    text: str, pos: int, decoder: json.JSONDecoder, raw: bytes | None = None
) -> tuple[Any, int]:
    try:
        try:
            return decoder.raw_decode(text, pos)
        except RecursionError:  # the C scanner recurses; deep values take the slow path
            return parse_iterative(text, pos, decoder)
    except json.JSONDecodeError as exc:
        raise syntax_error(exc.msg, text, exc.pos, raw) from exc


def syntax_error(msg: str, text: str, pos: int, raw: bytes | None = None) -> InvalidValueError:
    """Go's words for Python's ``msg`` at ``pos``, with the line and column it names."""
    detail, at = describe_at(msg, text, pos, raw)
    return located(InvalidValueError(detail), text, at)


def located(error: InvalidValueError, text: str, at: int) -> InvalidValueError:
    """``error``, its ``position`` the line and column of ``text[at]`` (1-based)."""
    line_start = text.rfind("\n", 0, at) + 1
    error.position = (text.count("\n", 0, at) + 1, at - line_start + 1)
    return error


def _fix_strings(root: Any) -> Any:
    """Replace lone surrogates in every string value (keys were fixed by the hook)."""
    if not isinstance(root, (dict, list)):
        return fix_str(root) if isinstance(root, str) else root
    stack = [root]
    while stack:
        node = stack.pop()
        for slot, child in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(child, str):
                node[slot] = fix_str(child)
            elif isinstance(child, (dict, list)):
                stack.append(child)
    return root


def parse_document(text: str, raw: bytes, *, literal_numbers: bool) -> Any:
    """Decode exactly one JSON value the way Dagu's Decoder loop does.

    Args:
        text: the document, decoded.
        raw: the same document as bytes; only searched for surrogate escapes.
        literal_numbers: keep numbers as ``msgspec.Raw`` literals, else decode them
            (``int`` of any size, ``float``).

    Returns:
        The value: dicts, lists, strings (lone surrogates as U+FFFD), numbers, bools and
        ``None``.

    Raises:
        InvalidValueError: when ``text`` is not exactly one JSON value (:data:`EMPTY_VALUE`
            when it is only whitespace, ``multiple JSON values`` when a second value follows).
    """
    fixing = b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None
    decoder = DECODERS[literal_numbers, fixing]
    pos = _skip_ws(text, 0)
    if pos == len(text):
        raise InvalidValueError(EMPTY_VALUE)
    value, pos = _parse_value(text, pos, decoder, raw)
    pos = _skip_ws(text, pos)
    if pos != len(text):
        _parse_value(text, pos, decoder, raw)  # Go decodes a second value: its error wins
        cut = number_error(text, pos) if text[pos] in "-0123456789" else None
        # Python ends a number sooner
        raise located(InvalidValueError(cut or "multiple JSON values"), text, pos)
    return _fix_strings(value) if fixing else value


def with_deep_members(raw: bytes, decode: Callable[[bytes], T], deep: Iterable[str]) -> T:
    """``decode(raw)`` of a JSON object whose ``deep`` members nest deeper than msgspec recurses.

    msgspec recurses through a value even where it keeps it as ``msgspec.Raw``, so a
    member nested about 1,000 levels deep raises ``RecursionError``. Here the object's
    members are found without recursion, the object decoded with ``0`` in place of each
    ``deep`` member, which is then set as its text (a ``msgspec.Raw`` field of the same
    name; the last one, as Go keeps).

    Raises:
        ValueError: not a JSON object (:class:`InvalidValueError`), not UTF-8, or a
            member not in ``deep`` nested too deeply.
        msgspec.DecodeError: what ``decode`` raises for the other members.
    """
    names = set(deep)
    members = object_members(raw.decode())
    kept = ",".join(f"{json.dumps(n)}:{'0' if n in names else t}" for n, t in members)
    try:
        decoded = decode(("{" + kept + "}").encode())
    except RecursionError:
        raise ValueError("a member is nested too deeply") from None
    texts = {n: msgspec.Raw(t.encode()) for n, t in members if n in names}
    return msgspec.structs.replace(decoded, **texts) if texts else decoded  # type: ignore[type-var]


def without_lone_surrogates(raw: bytes) -> bytes | None:
    r"""``raw`` written again with each lone surrogate escape as U+FFFD, as Go decodes it.

    For decoders that refuse such escapes (msgspec). Numbers keep their literal text. None
    when ``raw`` holds no escape that could be one, or is not one JSON document: the
    caller's decoder then words the error.

    >>> without_lone_surrogates(rb'{"a": ["\ud800", 1.50]}')
    b'{"a":["\xef\xbf\xbd",1.50]}'
    """
    if b"\\u" not in raw or _SURROGATE_ESCAPE.search(raw) is None:
        return None
    try:
        tree = parse_document(raw.decode(), raw, literal_numbers=True)
    except (UnicodeDecodeError, InvalidValueError, RecursionError):
        return None
    return msgspec.json.encode(tree)


def object_members(text: str) -> list[tuple[str, str]]:
    """The members of a document that is one JSON object, in order, values as their text.

    Duplicate keys are all kept, in order (a caller picks Go's last one, or refuses
    them). Values are parsed to find where they end, without recursion however deep
    they nest (the caller bounds the depth: :func:`check_depth`).

    Raises:
        InvalidValueError: ``text`` is not exactly one JSON object (Go's words for a
            syntax error).
    """
    decoder = DECODERS[True, False]
    pos = _skip_ws(text, 0)
    if not text.startswith("{", pos):
        raise InvalidValueError("not a JSON object")
    members: list[tuple[str, str]] = []
    pos = _skip_ws(text, pos + 1)
    closed = text.startswith("}", pos)
    while not closed:
        try:
            key, pos = _read_key(text, pos, decoder)
        except json.JSONDecodeError as exc:
            raise syntax_error(exc.msg, text, exc.pos) from None
        start = _skip_ws(text, pos)
        _, pos = _parse_value(text, start, decoder)
        members.append((key, text[start:pos]))
        pos = _skip_ws(text, pos)
        closed = text.startswith("}", pos)
        if not closed and not text.startswith(",", pos):
            raise syntax_error("Expecting ',' delimiter", text, pos)
        pos += not closed
    if _skip_ws(text, pos + 1) != len(text):
        raise InvalidValueError("multiple JSON values")
    return members


def check_depth(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Reject a document that nests deeper than ``limit`` (Go's scanner: :data:`MAX_DEPTH`).

    Only brackets outside strings count. Dropping escape pairs and then ``"..."`` runs
    agrees with the parser up to its first syntax error, so it never under-counts what it
    sees.

    Args:
        raw: the JSON text.
        limit: the depth allowed (a request's object around a value: one more).

    Raises:
        InvalidValueError: naming the first bracket past the limit.
    """
    code = _STRING_BODY.sub(b"", _ESCAPE_PAIR.sub(b"", raw))
    brackets = code.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return
    depths = accumulate(map(_BRACKET_STEP.__getitem__, brackets))
    for index, depth in enumerate(depths):
        if depth > limit:
            char = chr(brackets[index])
            raise InvalidValueError(f"invalid character {quote_char(char)} exceeded max depth")
