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
from collections.abc import Callable
from decimal import Decimal
from itertools import accumulate
from typing import Any, Final

import msgspec

from castore.errors import InvalidValueError
from castore.jsonrules import MAX_DEPTH, fix_str

__all__ = ["DECODERS", "EMPTY_VALUE", "check_depth", "parse_document", "parse_iterative"]

# Empty (or only whitespace) input. Dagu says ``invalid value: EOF`` (Go's decoder); the
# exit code is the same, the words say what to do.
EMPTY_VALUE: Final = 'empty input: give one JSON value (for an empty string, give "")'

_WS: Final = re.compile(r"[ \t\n\r]*")  # JSON whitespace, as Go's isSpace
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")  # can decode to a lone surrogate
_ESCAPE_PAIR: Final = re.compile(rb"\\.", re.DOTALL)
_STRING_BODY: Final = re.compile(rb'"[^"]*(?:"|\Z)')  # after escape pairs are gone
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_HEX: Final = "0123456789abcdefABCDEF"
_GO_CONTEXT: Final = {  # Python json message -> Go scanner wording
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": (
        "looking for beginning of object key string"
    ),
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after array element or object key:value pair",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
    "Invalid \\uXXXX escape": "in \\u hexadecimal character escape",
}


def _reject_constant(name: str) -> Any:
    if name.startswith("-"):
        raise InvalidValueError(f"invalid character {name[1]!r} in numeric literal")
    raise InvalidValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _parse_int(literal: str) -> int:
    try:
        return int(literal)
    except ValueError:  # past sys.get_int_max_str_digits(); Decimal has no such limit
        return int(Decimal(literal))


def _fixed_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {fix_str(key): value for key, value in pairs}


# Keyed by (literal_numbers, fixing). Literal numbers become msgspec.Raw, which the encoder
# writes back verbatim; "fixing" decoders replace lone surrogates in object keys.
DECODERS: Final = {
    (literal, fixing): json.JSONDecoder(
        parse_int=msgspec.Raw if literal else _parse_int,
        parse_float=msgspec.Raw if literal else float,
        parse_constant=_reject_constant,
        object_pairs_hook=_fixed_object if fixing else None,
    )
    for literal in (False, True)
    for fixing in (False, True)
}


_DIGITS: Final = frozenset("0123456789")
_NUMBER_CHARS: Final = frozenset("0123456789+-.eE")
_LITERALS: Final = {"t": "true", "f": "false", "n": "null"}


def _number_error(text: str, start: int) -> str | None:
    """Go's scanner on the number at ``start``: its error, or None when it ends well."""
    state, pos = "start", start
    while pos < len(text):
        c = text[pos]
        digit = c in _DIGITS
        if state == "start":
            state = "neg" if c == "-" else "zero" if c == "0" else "int"
        elif state == "neg":
            if not digit:
                return f"invalid character {c!r} in numeric literal"
            state = "zero" if c == "0" else "int"
        elif state in ("zero", "int", "frac") and c in "eE":
            state = "exp"
        elif state in ("zero", "int") and c == ".":
            state = "dot"
        elif state in ("int", "frac", "exp_digits") and digit:
            pass
        elif state in ("dot", "exp", "exp_sign") and digit:
            state = "frac" if state == "dot" else "exp_digits"
        elif state == "exp" and c in "+-":
            state = "exp_sign"
        elif state == "dot":
            return f"invalid character {c!r} after decimal point in numeric literal"
        elif state in ("exp", "exp_sign"):
            return f"invalid character {c!r} in exponent of numeric literal"
        else:
            return None  # the number ended: the next character is the context's
        pos += 1
    return "unexpected EOF" if state in ("neg", "dot", "exp", "exp_sign") else None


def _token_error(msg: str, text: str, pos: int) -> str | None:
    """Go's error inside the number or literal at or before ``pos``, where Python stopped."""
    if pos > 0 and text[pos] in ".eE" and text[pos - 1] in _DIGITS:  # Python ended the number
        start = pos
        while start > 0 and text[start - 1] in _NUMBER_CHARS:
            start -= 1
        return _number_error(text, start)
    word = _LITERALS.get(text[pos]) if msg == "Expecting value" else None
    if word is None:
        return None
    for k in range(1, len(word)):
        if pos + k >= len(text):
            return "unexpected EOF"
        if text[pos + k] != word[k]:
            return f"invalid character {text[pos + k]!r} in literal {word} (expecting {word[k]!r})"
    return None


def _describe(msg: str, text: str, pos: int) -> str:
    """Word a Python json syntax error the way Go's scanner would."""
    if msg.startswith("Unterminated string") or pos >= len(text):
        return "unexpected EOF"
    token = _token_error(msg, text, pos)
    if token is not None:
        return token
    if msg == "Invalid \\escape":
        pos += 1
    elif msg == "Invalid \\uXXXX escape":  # pos is at the "u"; Go names the bad digit
        digits = text[pos + 1 : pos + 5]
        pos += 1 + len(digits) - len(digits.lstrip(_HEX))
        if pos >= len(text):
            return "unexpected EOF"
    elif msg == "Expecting value" and text[pos] == "-":
        if pos + 1 >= len(text):
            return "unexpected EOF"
        return f"invalid character {text[pos + 1]!r} in numeric literal"
    return f"invalid character {text[pos]!r} {_GO_CONTEXT.get(msg, msg)}"


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


def _parse_value(text: str, pos: int, decoder: json.JSONDecoder) -> tuple[Any, int]:
    try:
        try:
            return decoder.raw_decode(text, pos)
        except RecursionError:  # the C scanner recurses; deep values take the slow path
            return parse_iterative(text, pos, decoder)
    except json.JSONDecodeError as exc:
        raise InvalidValueError(_describe(exc.msg, text, exc.pos)) from exc


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
    value, pos = _parse_value(text, pos, decoder)
    pos = _skip_ws(text, pos)
    if pos != len(text):
        _parse_value(text, pos, decoder)  # Go decodes a second value: its error wins
        raise InvalidValueError("multiple JSON values")
    return _fix_strings(value) if fixing else value


def check_depth(raw: bytes) -> None:
    """Reject a document that nests deeper than :data:`MAX_DEPTH`, as Go's scanner does.

    Only brackets outside strings count. Dropping escape pairs and then ``"..."`` runs
    agrees with the parser up to its first syntax error, so it never under-counts what it
    sees.

    Args:
        raw: the JSON text.

    Raises:
        InvalidValueError: naming the first bracket past the limit.
    """
    code = _STRING_BODY.sub(b"", _ESCAPE_PAIR.sub(b"", raw))
    brackets = code.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= MAX_DEPTH:
        return
    depths = accumulate(map(_BRACKET_STEP.__getitem__, brackets))
    for index, depth in enumerate(depths):
        if depth > MAX_DEPTH:
            char = chr(brackets[index])
            raise InvalidValueError(f"invalid character {char!r} exceeded max nesting depth")
