"""Go's words for a JSON syntax error, from where Python's ``json`` stopped.

Go's scanner reads bytes and names the one it stopped at (``quoteChar``) with
the context it was in; Python's decoder stops elsewhere at times (it ends a
number sooner) and says something else. :func:`describe` bridges the two, so
castore's messages are Dagu's. Pure, no I/O.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["describe", "describe_at", "number_error", "quote_char"]

_HEX: Final = "0123456789abcdefABCDEF"
_ESCAPE_TEXT: Final = re.compile(r"\\.", re.DOTALL)
_STRING_TEXT: Final = re.compile(r'"[^"]*"')  # after escape pairs are gone
_GO_BYTE_ESCAPES: Final = {
    7: "\\a",
    8: "\\b",
    9: "\\t",
    10: "\\n",
    11: "\\v",
    12: "\\f",
    13: "\\r",
    92: "\\\\",
}
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
_TRAILING_COMMA: Final = {  # Python 3.13+ stops at the comma; Go (and 3.11) at what follows
    "Illegal trailing comma before end of object": (
        "Expecting property name enclosed in double quotes"
    ),
    "Illegal trailing comma before end of array": "Expecting value",
}

_DIGITS: Final = frozenset("0123456789")
_NUMBER_CHARS: Final = frozenset("0123456789+-.eE")
_LITERALS: Final = {"t": "true", "f": "false", "n": "null"}
_EOF: Final = "unexpected EOF"


def number_error(text: str, start: int) -> str | None:
    """Go's scanner on the number at ``start``: its error, or None when it ends well."""
    state, pos = "start", start
    while pos < len(text):
        c = text[pos]
        digit = c in _DIGITS
        if state == "start":
            state = "neg" if c == "-" else "zero" if c == "0" else "int"
        elif state == "neg":
            if not digit:
                return f"invalid character {quote_char(c)} in numeric literal"
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
            return f"invalid character {quote_char(c)} after decimal point in numeric literal"
        elif state in ("exp", "exp_sign"):
            return f"invalid character {quote_char(c)} in exponent of numeric literal"
        else:
            return None  # the number ended: the next character is the context's
        pos += 1
    return "unexpected EOF" if state in ("neg", "dot", "exp", "exp_sign") else None


def _token_error(msg: str, text: str, pos: int) -> tuple[str, int] | None:
    """Go's error inside the number or literal at or before ``pos``, where Python stopped.

    With the index it names (``len(text)`` for ``unexpected EOF``; in a number, ``pos``).
    """
    if pos > 0 and text[pos] in ".eE" and text[pos - 1] in _DIGITS:  # Python ended the number
        start = pos
        while start > 0 and text[start - 1] in _NUMBER_CHARS:
            start -= 1
        found = number_error(text, start)
        return None if found is None else (found, len(text) if found == _EOF else pos)
    word = _LITERALS.get(text[pos]) if msg == "Expecting value" else None
    if word is None:
        return None
    for k in range(1, len(word)):
        if pos + k >= len(text):
            return _EOF, len(text)
        if text[pos + k] != word[k]:
            found = quote_char(text[pos + k])
            return f"invalid character {found} in literal {word} (expecting {word[k]!r})", pos + k
    return None


def describe(msg: str, text: str, pos: int, raw: bytes | None = None) -> str:
    """Word a Python json syntax error the way Go's scanner would.

    ``raw``, when given, is the document's bytes: a byte that is not UTF-8 (U+FFFD in
    ``text``) is then named as Go names it.
    """
    return describe_at(msg, text, pos, raw)[0]


def describe_at(msg: str, text: str, pos: int, raw: bytes | None = None) -> tuple[str, int]:
    """:func:`describe`, and the index in ``text`` of what it names (its end: EOF)."""
    if raw is not None and "\ufffd" in text:
        exact = raw.decode("utf-8", "surrogateescape")  # one character per bad byte, as text
        text = exact if len(exact) == len(text) else text
    if msg in _TRAILING_COMMA:  # `{"a":1,}`: Go names the '}' after the comma
        msg = _TRAILING_COMMA[msg]
        pos = len(text) - len(text[pos + 1 :].lstrip(" \t\n\r"))
    if msg.startswith("Unterminated string") or pos >= len(text):
        return "unexpected EOF", len(text)
    token = _token_error(msg, text, pos)
    if token is not None:
        return token
    if msg == "Invalid \\escape":
        pos += 1
    elif msg == "Invalid \\uXXXX escape":  # pos is at the "u"; Go names the bad digit
        digits = text[pos + 1 : pos + 5]
        pos += 1 + len(digits) - len(digits.lstrip(_HEX))
        if pos >= len(text):
            return "unexpected EOF", len(text)
    elif msg == "Expecting value" and text[pos] == "-":
        if pos + 1 >= len(text):
            return "unexpected EOF", len(text)
        return f"invalid character {quote_char(text[pos + 1])} in numeric literal", pos + 1
    if msg == "Expecting ',' delimiter":
        inside = "array element" if _innermost(text, pos) == "[" else "object key:value pair"
        return f"invalid character {quote_char(text[pos])} after {inside}", pos
    return f"invalid character {quote_char(text[pos])} {_GO_CONTEXT.get(msg, msg)}", pos


def quote_char(char: str) -> str:
    """Go's ``quoteChar`` of the byte its scanner stopped at: the first byte of ``char``.

    A byte that is not UTF-8 is a surrogate escape here (:func:`describe`). Go quotes
    the byte as the rune of the same number (byte 0xff is ``'ÿ'``).
    """
    if char in "'\"":
        return "'\\''" if char == "'" else "'\"'"
    try:
        code = char.encode("utf-8", "surrogateescape")[0]
    except UnicodeEncodeError:  # a lone surrogate that no byte stands for
        code = char.encode("utf-8", "surrogatepass")[0]
    if code in _GO_BYTE_ESCAPES:
        return f"'{_GO_BYTE_ESCAPES[code]}'"
    if code < 0x20 or code == 0x7F:
        return f"'\\x{code:02x}'"
    return f"'{chr(code)}'" if chr(code).isprintable() else f"'\\u{code:04x}'"


def _innermost(text: str, pos: int) -> str:
    """The bracket of the innermost container still open at ``pos``.

    The text before ``pos`` parsed, so every string in it is closed.
    """
    code = _STRING_TEXT.sub("", _ESCAPE_TEXT.sub("", text[:pos]))
    open_brackets: list[str] = []
    for char in code:
        if char in "[{":
            open_brackets.append(char)
        elif char in "]}" and open_brackets:
            open_brackets.pop()
    return open_brackets[-1] if open_brackets else ""
