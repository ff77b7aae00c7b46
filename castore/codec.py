r"""Dagu-compatible JSON normalization, the value size limit, and the content digest.

The canonical form of a value is byte-for-byte what Go gives when it decodes one JSON
value with ``json.Decoder`` (``UseNumber``) and re-encodes it with ``json.Marshal``:
compact, keys sorted by UTF-8 bytes (last duplicate wins), numbers kept as their literal
text, HTML-safe escapes. The digest is the hex sha256 of those bytes. Specified in the
Dagu reference, section 2, and ``docs/FORMAT.md``.

Invariant: every output of a ``normalize*`` function is valid UTF-8, at most
:data:`MAX_VALUE_BYTES` long, at most :data:`MAX_DEPTH` deep, and a fixed point of
:func:`normalize_json`. Nothing recurses on the depth of a value without an iterative
fallback on ``RecursionError``. Pure, no I/O, thread-safe.

>>> normalize_json(b'{ "b": 2, "a": 1.50 }')
b'{"a":1.50,"b":2}'
>>> normalize_python({"x": [1.0, "<&>"]})
b'{"x":[1,"\\u003c\\u0026\\u003e"]}'
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
from collections.abc import Callable
from decimal import Context, Decimal
from itertools import accumulate
from typing import Any, Final, TypeAlias

import msgspec

from castore.errors import InvalidValueError, ValueTooLargeError

__all__ = [
    "DIGEST_ALGO",
    "MAX_DEPTH",
    "MAX_VALUE_BYTES",
    "JSONValue",
    "decode_value",
    "encode_string",
    "hexdigest",
    "normalize",
    "normalize_json",
    "normalize_python",
]

MAX_VALUE_BYTES: Final = 1 << 20  # 1 MiB, checked on raw input and on normalized bytes
MAX_DEPTH: Final = 10_000  # Go encoding/json maxNestingDepth: 10,000 ok, 10,001 rejected
DIGEST_ALGO: Final = "sha256"  # content address of the normalized bytes

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

_WS: Final = re.compile(r"[ \t\n\r]*")  # JSON whitespace, as Go's isSpace
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")  # can decode to a lone surrogate
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_ESCAPE_PAIR: Final = re.compile(rb"\\.", re.DOTALL)
_STRING_BODY: Final = re.compile(rb'"[^"]*(?:"|\Z)')  # after escape pairs are gone
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_HTML_ESCAPES: Final = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"))
_JS_ESCAPES: Final = (("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"))
_HEX: Final = "0123456789abcdefABCDEF"
_GO_REPLACE: Final = "castore.go_utf8_replace"
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


def _replace_bytewise(exc: UnicodeError) -> tuple[str, int]:
    # Python reports a maximal invalid subpart (a lead byte plus continuation bytes); Go's
    # utf8.DecodeRune returns (RuneError, 1) for each of those bytes, as continuation
    # bytes never start a rune. So one U+FFFD per byte, resuming at the same place.
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "\ufffd" * (exc.end - exc.start), exc.end


codecs.register_error(_GO_REPLACE, _replace_bytewise)


def _reject_constant(name: str) -> Any:
    if name.startswith("-"):
        raise InvalidValueError(f"invalid character {name[1]!r} in numeric literal")
    raise InvalidValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _parse_int(literal: str) -> int:
    try:
        return int(literal)
    except ValueError:  # past sys.get_int_max_str_digits(); Decimal has no such limit
        return int(Decimal(literal))


def _fix_str(text: str) -> str:
    """Replace each lone surrogate with U+FFFD and join valid surrogate pairs."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _fixed_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {_fix_str(key): value for key, value in pairs}


# Keyed by (literal_numbers, fixing). Literal numbers become msgspec.Raw, which the encoder
# writes back verbatim; "fixing" decoders replace lone surrogates in object keys.
_DECODERS: Final = {
    (literal, fixing): json.JSONDecoder(
        parse_int=msgspec.Raw if literal else _parse_int,
        parse_float=msgspec.Raw if literal else float,
        parse_constant=_reject_constant,
        object_pairs_hook=_fixed_object if fixing else None,
    )
    for literal in (False, True)
    for fixing in (False, True)
}
_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_DECIMAL_CONTEXT: Final = Context(prec=40)  # ours, whatever the thread's context is


def _describe(msg: str, text: str, pos: int) -> str:
    """Word a Python json syntax error the way Go's scanner would."""
    if msg.startswith("Unterminated string") or pos >= len(text):
        return "unexpected EOF"
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


def _parse_iterative(text: str, pos: int, decoder: json.JSONDecoder) -> tuple[Any, int]:
    """Parse one value without recursion; scalars go through ``decoder`` as in the C path."""
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
            return _parse_iterative(text, pos, decoder)
    except json.JSONDecodeError as exc:
        raise InvalidValueError(_describe(exc.msg, text, exc.pos)) from exc


def _fix_strings(root: Any) -> Any:
    """Replace lone surrogates in every string value (keys were fixed by the hook)."""
    if not isinstance(root, (dict, list)):
        return _fix_str(root) if isinstance(root, str) else root
    stack = [root]
    while stack:
        node = stack.pop()
        for slot, child in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(child, str):
                node[slot] = _fix_str(child)
            elif isinstance(child, (dict, list)):
                stack.append(child)
    return root


def _parse_document(text: str, raw: bytes, *, literal_numbers: bool) -> Any:
    """Decode exactly one JSON value the way Dagu's Decoder loop does."""
    fixing = b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None
    decoder = _DECODERS[literal_numbers, fixing]
    pos = _skip_ws(text, 0)
    if pos == len(text):
        raise InvalidValueError("EOF")
    value, pos = _parse_value(text, pos, decoder)
    pos = _skip_ws(text, pos)
    if pos != len(text):
        _parse_value(text, pos, decoder)  # Go decodes a second value: its error wins
        raise InvalidValueError("multiple JSON values")
    return _fix_strings(value) if fixing else value


def _check_depth(raw: bytes) -> None:
    # Only brackets outside strings count. Dropping escape pairs and then "..." runs agrees
    # with the parser up to its first syntax error, so it never under-counts what it sees.
    code = _STRING_BODY.sub(b"", _ESCAPE_PAIR.sub(b"", raw))
    brackets = code.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= MAX_DEPTH:
        return
    depths = accumulate(map(_BRACKET_STEP.__getitem__, brackets))
    for index, depth in enumerate(depths):
        if depth > MAX_DEPTH:
            char = chr(brackets[index])
            raise InvalidValueError(f"invalid character {char!r} exceeded max nesting depth")


def _encode_iterative(root: Any) -> bytes:
    """Encode a tree like ``_ENCODER`` does, without recursion."""
    out: list[bytes] = []
    todo: list[Any] = [root]
    while todo:
        item = todo.pop()
        if isinstance(item, bytes):  # punctuation queued below; never a value
            out.append(item)
        elif isinstance(item, dict):
            keys = sorted(item)
            todo.append(b"}")
            for index in range(len(keys) - 1, -1, -1):
                todo.append(item[keys[index]])
                todo.append(b"," * (index > 0) + _ENCODER.encode(keys[index]) + b":")
            out.append(b"{")
        elif isinstance(item, list):
            todo.append(b"]")
            for index in range(len(item) - 1, -1, -1):
                todo.append(item[index])
                if index:
                    todo.append(b",")
            out.append(b"[")
        else:
            out.append(_ENCODER.encode(item))
    return b"".join(out)


def _finish(tree: Any) -> bytes:
    """Encode a tree of dict/list/str/Raw/bool/None, escape, and check the size."""
    try:
        out = _ENCODER.encode(tree)
    except RecursionError:
        out = _encode_iterative(tree)
    out = _escape(out, html=True)
    if len(out) > MAX_VALUE_BYTES:
        raise ValueTooLargeError(len(out), MAX_VALUE_BYTES)
    return out


def _escape(out: bytes, *, html: bool) -> bytes:
    # msgspec already escapes like Go except for these; outside strings they cannot occur.
    for char, escaped in (_HTML_ESCAPES + _JS_ESCAPES) if html else _JS_ESCAPES:
        if char in out:
            out = out.replace(char, escaped)
    return out


def normalize_json(data: bytes | bytearray | memoryview | str) -> bytes:
    """Normalize JSON text into its canonical (Dagu-compatible) bytes.

    Exactly one value, with JSON whitespace around it; numbers verbatim; keys sorted by
    UTF-8 bytes, last duplicate wins; each invalid UTF-8 byte in a string, and each lone
    surrogate escape, becomes U+FFFD. Idempotent. 1 MiB takes tens of milliseconds.

    Args:
        data: the JSON text; a ``str`` is UTF-8 encoded first (lone surrogates as U+FFFD).

    Returns:
        The normalized bytes.

    Raises:
        ValueTooLargeError: when the input or the normalized bytes exceed
            :data:`MAX_VALUE_BYTES`.
        InvalidValueError: when ``data`` is not exactly one JSON value (``EOF`` when it
            is empty, ``multiple JSON values`` when a second value follows) or nests
            deeper than :data:`MAX_DEPTH`.
    """
    if isinstance(data, str):
        fixed = _fix_str(data)
        text: str | None = fixed
        raw = fixed.encode()
    else:
        text = None
        raw = data if isinstance(data, bytes) else bytes(data)
    if len(raw) > MAX_VALUE_BYTES:
        raise ValueTooLargeError(len(raw), MAX_VALUE_BYTES)
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        _check_depth(raw)
    if text is None:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = raw.decode("utf-8", _GO_REPLACE)
    return _finish(_parse_document(text, raw, literal_numbers=True))


def _format_float(number: float) -> str:
    """Format a float as Go's encoding/json does for a float64."""
    if math.isnan(number) or math.isinf(number):
        shown = "NaN" if math.isnan(number) else ("+Inf" if number > 0 else "-Inf")
        raise InvalidValueError(f"json: unsupported value: {shown}")
    # repr has the shortest round-tripping digits, as strconv's precision -1 does; Go
    # uses 'e' form (exponent without a leading zero) outside [1e-6, 1e21), else 'f'.
    shortest = Decimal(float.__repr__(number)).normalize(_DECIMAL_CONTEXT)
    fixed = number == 0 or 1e-6 <= abs(number) < 1e21
    return format(shortest, "f" if fixed else "e")


def _scalar(item: object) -> Any:
    if item is None or item is True or item is False:
        return item
    if isinstance(item, int):
        try:
            return msgspec.Raw(int.__repr__(item))
        except ValueError:  # past sys.get_int_max_str_digits()
            return msgspec.Raw(str(Decimal(item)))
    if isinstance(item, float):
        return msgspec.Raw(_format_float(item))
    raise InvalidValueError(f"json: unsupported type: {type(item).__qualname__}")


def _object_items(item: dict[Any, Any]) -> dict[str, Any]:
    for key in item:
        if not isinstance(key, str):
            kind = type(key).__qualname__
            raise InvalidValueError(f"json: unsupported key type: {kind} (keys must be str)")
    fixed = {str.__str__(key): value for key, value in item.items()}
    if any(_fix_str(key) is not key for key in fixed):
        # Keys that collide once fixed: the one sorting last wins, whatever the dict order.
        fixed = {_fix_str(key): fixed[key] for key in sorted(fixed)}
    return fixed


def _from_python(value: object) -> Any:
    """Check a Python value and convert it to an encodable tree, without recursion."""
    root: list[Any] = [None]
    todo: list[tuple[object, Any, Any, int]] = [(value, root, 0, 0)]
    node: Any
    size = 0  # a lower bound on the output length: stops runaway values (shared refs) early
    while todo:
        item, parent, slot, depth = todo.pop()
        if isinstance(item, str):
            parent[slot] = _fix_str(str.__str__(item))
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


def normalize_python(value: object) -> bytes:
    """Normalize a Python value into the bytes Go's ``json.Marshal`` gives for it.

    Accepts ``dict`` (``str`` keys), ``list``, ``tuple``, ``str``, ``int``, ``float``,
    ``bool``, ``None`` and their subclasses. Floats take Go's float64 form (``1.0`` ->
    ``1``, ``1e21`` -> ``1e+21``, ``1e-7`` -> ``1e-7``, ``-0.0`` -> ``-0``); a lone
    surrogate becomes U+FFFD; if two keys then collide, the one sorting last wins.

    Args:
        value: the value to encode.

    Returns:
        The normalized bytes.

    Raises:
        InvalidValueError: for NaN or an infinity, a non-``str`` key, an unsupported
            type, or nesting deeper than :data:`MAX_DEPTH` (including a cycle).
        ValueTooLargeError: when the result exceeds :data:`MAX_VALUE_BYTES` (``size`` may
            be a lower bound, found before encoding).
    """
    return _finish(_from_python(value))


def normalize(value: object) -> bytes:
    """Normalize JSON text given as bytes, or any other Python value.

    Args:
        value: ``bytes``, ``bytearray`` or ``memoryview`` holding JSON text (see
            :func:`normalize_json`); anything else is a Python value (see
            :func:`normalize_python`), so a ``str`` is a JSON string, not JSON text.

    Returns:
        The normalized bytes.

    Raises:
        InvalidValueError: when the value cannot be normalized.
        ValueTooLargeError: when the input or the result exceeds :data:`MAX_VALUE_BYTES`.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return normalize_json(value)
    return normalize_python(value)


def hexdigest(normalized: bytes) -> str:
    """Return the content digest: lowercase hex sha256 of the normalized bytes.

    Args:
        normalized: bytes from one of the ``normalize`` functions.

    Returns:
        64 lowercase hex characters, no algorithm prefix.
    """
    return hashlib.sha256(normalized).hexdigest()


def decode_value(normalized: bytes) -> JSONValue:
    """Decode normalized JSON bytes into plain Python values, at any depth.

    Integers become ``int`` (any size), other numbers ``float`` (``1e400`` is ``inf``).

    Args:
        normalized: bytes from one of the ``normalize`` functions.

    Returns:
        The decoded value.

    Raises:
        InvalidValueError: when the bytes are not exactly one JSON value.
    """
    try:
        fast: JSONValue = msgspec.json.decode(normalized)
        return fast
    except (msgspec.DecodeError, RecursionError):
        pass  # out-of-range numbers, deep nesting, lone surrogates, or not JSON
    raw = bytes(normalized)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidValueError(f"not UTF-8: {exc.reason}") from exc
    slow: JSONValue = _parse_document(text, raw, literal_numbers=False)
    return slow


def encode_string(text: str, *, html: bool) -> bytes:
    r"""Encode a string as a Go JSON string literal, quotes included.

    Escapes ``"``, ``\``, control characters (``\n``, ``\r``, ``\t``, ``\b``, ``\f``,
    else ``\u00xx``), U+2028 and U+2029; a lone surrogate becomes U+FFFD.

    Args:
        text: the string.
        html: also escape ``<``, ``>`` and ``&`` as ``json.Marshal`` does; ``False``
            matches an Encoder with ``SetEscapeHTML(false)`` (the CLI envelope).

    Returns:
        The encoded literal.
    """
    return _escape(_ENCODER.encode(_fix_str(str.__str__(text))), html=html)
