r"""Dagu-compatible JSON normalization, the value size limit, and the content digest.

The canonical form of a value is byte-for-byte what Go gives when it decodes one JSON
value with ``json.Decoder`` (``UseNumber``) and re-encodes it with ``json.Marshal``:
compact, keys sorted by UTF-8 bytes (last duplicate wins), numbers kept as their literal
text, HTML-safe escapes. The digest is the hex sha256 of those bytes. Specified in the
Dagu reference, section 2, and ``docs/FORMAT.md``. This module holds the entry points and
the encoder; parsing JSON text is :mod:`castore.jsonparse`, converting Python values
:mod:`castore.pyvalues`, and the limits and Unicode repair they share
:mod:`castore.jsonrules`. ``jsonparse`` (and the stdlib ``json`` under it) is imported
only when a value leaves the fast path (:mod:`castore.fastjson`): a CLI ``get`` or a
``set`` of a plain value never loads it (docs/PERFORMANCE.md, "CLI start-up").

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

import hashlib
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import msgspec

from castore.decoding import DECODED
from castore.errors import CorruptionError, InvalidValueError, ValueTooLargeError
from castore.fastjson import plain_json, plain_python
from castore.jsonrules import GO_REPLACE, MAX_DEPTH, MAX_VALUE_BYTES, fix_str
from castore.pyvalues import from_python

__all__ = [
    "DIGEST_ALGO",
    "MAX_DEPTH",
    "MAX_VALUE_BYTES",
    "JSONValue",
    "decode_value",
    "encode_string",
    "hexdigest",
    "is_digest",
    "line_separators_escaped",
    "normalize",
    "normalize_json",
    "normalize_python",
    "result_value",
]

DIGEST_ALGO: Final = "sha256"  # content address of the normalized bytes

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

_HTML_ESCAPES: Final = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"))
_JS_ESCAPES: Final = (("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"))
_ENCODER: Final = msgspec.json.Encoder(order="sorted")


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
    return _checked(out)


def _checked(out: bytes) -> bytes:
    """Escape an encoding as Go does and check its size."""
    out = _escape(out, html=True)
    if len(out) > MAX_VALUE_BYTES:
        raise ValueTooLargeError(len(out), MAX_VALUE_BYTES)
    return out


def line_separators_escaped(out: bytes) -> bytes:
    r"""JSON bytes with U+2028 and U+2029 written ``\u2028`` and ``\u2029``, as Go writes them.

    A line of castore's output (a result, an audit or export record) never
    holds them raw: they end a line for JavaScript and ``str.splitlines``.
    """
    return _escape(out, html=False)


def _escape(out: bytes, *, html: bool) -> bytes:
    # msgspec already escapes like Go except for these; outside strings they cannot occur.
    for char, escaped in _HTML_ESCAPES if html else ():
        if char in out:
            out = out.replace(char, escaped)
    if b"\xe2" in out:  # U+2028 and U+2029 start with it: one search, not two, when absent
        for char, escaped in _JS_ESCAPES:
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
        InvalidValueError: when ``data`` is not exactly one JSON value (``empty ...`` when it
            is empty, ``multiple JSON values`` when a second value follows) or nests
            deeper than :data:`MAX_DEPTH`.
    """
    if isinstance(data, str):
        fixed = fix_str(data)
        text: str | None = fixed
        raw = fixed.encode()
    else:
        text = None
        raw = data if isinstance(data, bytes) else bytes(data)
    if len(raw) > MAX_VALUE_BYTES:
        raise ValueTooLargeError(len(raw), MAX_VALUE_BYTES)
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        from castore.jsonparse import check_depth

        check_depth(raw)
    if text is None:
        plain = plain_json(raw)
        if plain is not None:
            return _checked(plain)
    return _exact_json(raw, text)


def _exact_json(raw: bytes, text: str | None = None) -> bytes:
    """:func:`normalize_json` without the fast path (the reference for it)."""
    if text is None:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = raw.decode("utf-8", GO_REPLACE)
    from castore.jsonparse import parse_document

    return _finish(parse_document(text, raw, literal_numbers=True))


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
    plain = plain_python(value)
    return _checked(plain) if plain is not None else _exact_python(value)


def _exact_python(value: object) -> bytes:
    """:func:`normalize_python` without the fast path (the reference for it)."""
    return _finish(from_python(value))


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


def is_digest(text: str) -> bool:
    """Whether ``text`` is a digest as :func:`hexdigest` gives it (64 lowercase hex)."""
    return len(text) == 64 and not text.strip("0123456789abcdef")


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
    from castore.jsonparse import parse_document

    slow: JSONValue = parse_document(text, raw, literal_numbers=False)
    return slow


def decode_stored(
    normalized: bytes,
    what: object,
    version: int = 0,
    decode: Callable[[bytes], Any] = decode_value,
) -> Any:
    """:func:`decode_value` of a value read from a store: bytes that are not JSON are damage.

    A stored value was normalized before its digest named it, so it always
    decodes; one that does not was written by something else (edited with its
    digest made to match) and is never an error of the caller's input.
    ``what`` (a ref, a blob's name) and ``version`` (0: none) name it only in
    the error: a get's hot path formats nothing. ``decode``: another decoder
    of normalized JSON that raises ``InvalidValueError`` (an edit's literals).

    Raises:
        CorruptionError: the bytes are not JSON.
    """
    try:
        return decode(normalized)
    except InvalidValueError as exc:
        where = f"{what} version {version}" if version else str(what)
        raise CorruptionError(f"{where}: the stored value is not JSON ({exc.detail})") from exc


_SKIP: Final = msgspec.json.Decoder(msgspec.Raw)  # checks a document's structure only


def check_stored(normalized: bytes, what: object, version: int = 0) -> None:
    """:func:`decode_stored` without building the value, for ``check`` and ``export``.

    msgspec skims the structure (5x cheaper than a decode) and the bytes are
    checked as UTF-8; what that refuses (a depth past msgspec's, as well as
    damage) goes to :func:`decode_stored`, which decides.

    Raises:
        CorruptionError: the bytes are not JSON.
    """
    try:
        _SKIP.decode(normalized)
        bytes(normalized).decode()
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        decode_stored(normalized, what, version)


def result_value(normalized: bytes, what: object, version: int = 0) -> Any:
    """A stored value as a result's ``value``: decoded (None in ``decoding.printing``).

    Either way bytes that are not JSON are damage (``CorruptionError``), checked
    before the result is made (:mod:`castore.decoding`).
    """
    if DECODED.get():
        return decode_stored(normalized, what, version)
    check_stored(normalized, what, version)
    return None


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
    return _escape(_ENCODER.encode(fix_str(str.__str__(text))), html=html)
