"""The CLI's quick normalizer (:mod:`castore.stdjson`) answers as the codec does, or not at all.

Oracle: :func:`castore.codec.normalize_json` on the same bytes. Wherever
:func:`plain_normalized` answers, its bytes are the codec's; where the codec
raises, it declines. Coverage properties keep the first from passing by
declining everything: JSON text of any layout, number literal, escape and
Unicode string (but a lone surrogate or NUL) is always answered.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from castore import stdjson
from castore.codec import normalize_json
from castore.errors import InvalidValueError, ValueTooLargeError
from castore.jsonrules import MAX_DEPTH
from castore.stdjson import MAX_PLAIN_BYTES, plain_normalized

_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '\\"')
plain_text = st.text(alphabet=_PRINTABLE, max_size=10)
unicode_text = st.text(st.characters(exclude_categories=["Cs"], min_codepoint=1), max_size=10)
number_literals = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,4})?", fullmatch=True
)
whitespace = st.text(alphabet=" \t\n\r", max_size=2)


@st.composite
def layouts(draw: st.DrawFn, value: Any) -> str:
    """``value`` as JSON text with random whitespace, member order and number literals."""
    space = draw(whitespace)
    if isinstance(value, dict):
        items = list(value.items())
        order = draw(st.permutations(range(len(items))))
        members = [
            f"{json.dumps(items[i][0])}{draw(whitespace)}:{draw(layouts(items[i][1]))}"
            for i in order
        ]
        return space + "{" + ",".join(members) + draw(whitespace) + "}"
    if isinstance(value, list):
        return space + "[" + ",".join(draw(layouts(item)) for item in value) + "]" + space
    if value == "<number>":
        return space + draw(number_literals)
    return space + json.dumps(value, ensure_ascii=draw(st.booleans())) + space


plain_values = st.recursive(
    st.none() | st.booleans() | st.just("<number>") | plain_text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(plain_text, kids, max_size=4),
    max_leaves=16,
)
plain_documents = plain_values.flatmap(layouts)
unicode_values = st.recursive(
    st.none() | st.booleans() | st.just("<number>") | unicode_text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(unicode_text, kids, max_size=4),
    max_leaves=16,
)
unicode_documents = unicode_values.flatmap(layouts)
json_ish = st.text(alphabet='[]{}",:0123456789.-eE+ tfrulnsaN\\<&>\t\n\x00\xe9', max_size=30)
any_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    ),
    max_leaves=12,
)


def codec_answer(raw: bytes) -> bytes | None:
    """The codec's normalized bytes, or None where it refuses the text."""
    try:
        return normalize_json(raw)
    except (InvalidValueError, ValueTooLargeError):
        return None


def assert_agrees(raw: bytes) -> bytes | None:
    quick = plain_normalized(raw)
    if quick is not None:
        assert quick == codec_answer(raw), raw
    return quick


@settings(max_examples=400)
@given(plain_documents)
def test_plain_text_is_answered_with_the_codecs_bytes(text):
    raw = text.encode("ascii")
    quick = assert_agrees(raw)
    assert quick is not None, raw  # coverage: plain text never falls back


@settings(max_examples=400)
@given(unicode_documents)
def test_escapes_and_unicode_are_answered_with_the_codecs_bytes(text):
    raw = text.encode("utf-8")
    quick = assert_agrees(raw)
    assert quick is not None, raw  # coverage: any string but a lone surrogate or NUL


@settings(max_examples=400)
@given(json_ish | st.binary(max_size=30).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_is_answered_as_the_codec_does_or_declined(text):
    assert_agrees(text.encode("utf-8", "surrogatepass"))


@given(any_values, st.booleans())
def test_dumped_python_values_agree(value, ensure_ascii):
    assert_agrees(json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass"))


def test_what_it_leaves_to_the_codec():
    for raw in (
        b'"\\ud800"',  # a lone surrogate: Go writes U+FFFD
        b'"\xff"',  # not UTF-8: Go replaces the byte
        b'"\\u0000"',  # NUL: the number marker's escape
        b"NaN",
        b"[1,]",
        b"",
        b"1 2",
        b"[" * 10001 + b"]" * 10001,  # deeper than Go's 10,000 (3.13's json parses 2,000)
        b'{"a":' * 10001 + b"1" + b"}" * 10001,
        b'"' + b"x" * MAX_PLAIN_BYTES + b'"',
    ):
        assert plain_normalized(raw) is None, raw[:20]
    deep = b"[" * 2000 + b"]" * 2000  # declined on 3.11 and 3.12, answered on 3.13
    assert plain_normalized(deep) in (None, normalize_json(deep))
    assert plain_normalized(b'{"a":1,"a":2}') == b'{"a":2}'  # the last duplicate wins, as in Go
    vectors = {
        '"\\u0001\\b\\f\\n\\r\\t\x7f"': '"\\u0001\\b\\f\\n\\r\\t\x7f"',
        '"\\u2028\u2029"': '"\\u2028\\u2029"',
        '"\\ud83d\\ude00\u00e9\\/"': '"\U0001f600\u00e9/"',
        '{"\u00e9":1,"z":2,"\U0001f600":3,"\uffff":4}': (
            '{"z":2,"\u00e9":1,"\uffff":4,"\U0001f600":3}'
        ),
    }
    for text, expected in vectors.items():
        assert plain_normalized(text.encode()) == expected.encode(), text
        assert codec_answer(text.encode()) == expected.encode(), text
    assert plain_normalized(b' {"b":[1.50,-0,1E+2],"a":"<&>"} ') == (
        b'{"a":"\\u003c\\u0026\\u003e","b":[1.50,-0,1E+2]}'
    )


def test_text_past_gos_depth_is_declined_whatever_the_recursion_limit():
    # Found by the supported-range review: the quick path relied on json's own limit
    # (the interpreter's recursion limit, which a program may raise, and which later
    # Pythons set otherwise) to decline text nested past Go's 10,000, which the codec
    # refuses; with the limit raised it answered it.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(60_000)
    try:
        for raw in (b"[" * 10001 + b"]" * 10001, b'{"a":' * 10001 + b"1" + b"}" * 10001):
            assert plain_normalized(raw) is None
        fine = b"[" * 9999 + b"]" * 9999
        assert plain_normalized(fine) == normalize_json(fine)
        brackets = b'["' + b"[{" * 6000 + b'"]'  # in a string: declined, or answered alike
        assert plain_normalized(brackets) in (None, normalize_json(brackets))
        assert stdjson._MAX_DEPTH == MAX_DEPTH
    finally:
        sys.setrecursionlimit(limit)
