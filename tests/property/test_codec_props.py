import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castore import codec, jsonparse
from castore.codec import (
    decode_value,
    encode_string,
    hexdigest,
    normalize_json,
    normalize_python,
)
from castore.errors import InvalidValueError, ValueTooLargeError

# --- independent reference models --------------------------------------------------------

_GO_NAMED = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_GO_NAMED |= {"\b": "\\b", "\f": "\\f"}


def go_quote(text: str, *, html: bool = True) -> bytes:
    """The escape table of the reference, one character at a time."""
    out = ['"']
    for char in text:
        if char in _GO_NAMED:
            out.append(_GO_NAMED[char])
        elif ord(char) < 0x20 or char in "\u2028\u2029" or (html and char in "<>&"):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out).encode()


def go_decode_utf8(data: bytes) -> str:
    """Go's range loop over a string: utf8.DecodeRune, (RuneError, 1) for any bad byte."""
    out = []
    i = 0
    while i < len(data):
        lead = data[i]
        if lead < 0x80:
            out.append(chr(lead))
            i += 1
            continue
        if 0xC2 <= lead <= 0xDF:
            size, low, high = 2, 0x80, 0xBF
        elif lead == 0xE0:
            size, low, high = 3, 0xA0, 0xBF
        elif lead == 0xED:
            size, low, high = 3, 0x80, 0x9F
        elif 0xE1 <= lead <= 0xEF:
            size, low, high = 3, 0x80, 0xBF
        elif lead == 0xF0:
            size, low, high = 4, 0x90, 0xBF
        elif 0xF1 <= lead <= 0xF3:
            size, low, high = 4, 0x80, 0xBF
        elif lead == 0xF4:
            size, low, high = 4, 0x80, 0x8F
        else:
            size, low, high = 0, 0, 0
        tail = data[i + 1 : i + size]
        if (
            size
            and len(tail) == size - 1
            and low <= tail[0] <= high
            and all(0x80 <= b <= 0xBF for b in tail[1:])
        ):
            out.append(data[i : i + size].decode())
            i += size
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def go_float(number: float) -> str:
    """strconv.FormatFloat(f, 'f' or 'e', -1, 64) as encoding/json picks it, digit by digit."""
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    sign = "-" if number < 0 else ""
    mantissa, _, exponent_text = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + int(exponent_text or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")  # abs(number) == 0.<digits> * 10**point
    if abs(number) < 1e-6 or abs(number) >= 1e21:
        exponent = point - 1
        head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{head}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}".replace(
            "e-0", "e-"
        )
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


# --- strategies ----------------------------------------------------------------------------

keys = st.text(max_size=6)
plain_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)


def json_values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
        max_leaves=20,
    )


float_free = json_values(plain_scalars)
with_floats = json_values(plain_scalars | finite_floats)
dump_options = st.fixed_dictionaries(
    {
        "ensure_ascii": st.booleans(),
        "sort_keys": st.booleans(),
        "indent": st.sampled_from([None, 0, 2, "\t", " \r"]),
        "separators": st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", "\n:\r ")]),
    }
)
number_literals = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,4})?", fullmatch=True
)
whitespace = st.text(alphabet=" \t\n\r", max_size=3)
any_chars = st.characters(exclude_categories=())  # includes lone surrogates


def shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = [(key, shuffled(child, rng)) for key, child in value.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [shuffled(child, rng) for child in value]
    return value


# --- properties ----------------------------------------------------------------------------


@given(with_floats, dump_options)
def test_normalize_json_is_idempotent(value, options):
    once = normalize_json(json.dumps(value, **options))
    assert normalize_json(once) == once
    assert normalize_json(once.decode()) == once


@given(st.lists(st.tuples(whitespace, number_literals, whitespace), max_size=8), whitespace)
def test_number_literals_survive_verbatim(parts, tail):
    text = "[" + ",".join(f"{a}{number}{b}" for a, number, b in parts) + tail + "]"
    expected = "[" + ",".join(number for _, number, _ in parts) + "]"
    assert normalize_json(text.encode()) == expected.encode()


@given(float_free, dump_options)
def test_python_and_json_paths_agree_without_floats(value, options):
    assert normalize_python(value) == normalize_json(json.dumps(value, **options))


@given(with_floats)
def test_python_output_is_a_normalize_json_fixed_point(value):
    normalized = normalize_python(value)
    assert normalize_json(normalized) == normalized


@given(finite_floats)
def test_python_floats_match_go_formatting(number):
    assert normalize_python(number) == go_float(number).encode()
    decoded = decode_value(normalize_python(number))
    assert isinstance(decoded, int | float)
    assert float(decoded) == number  # integral floats come back as int ("1.0" -> "1")


@given(st.dictionaries(keys, with_floats, min_size=1, max_size=6), dump_options, st.randoms())
def test_key_order_and_whitespace_do_not_change_the_digest(value, options, rng):
    reference = hexdigest(normalize_json(json.dumps(value)))
    other = json.dumps(shuffled(value, rng), **options)
    assert hexdigest(normalize_json(other)) == reference
    assert hexdigest(normalize_python(shuffled(value, rng))) == hexdigest(normalize_python(value))


@given(float_free)
def test_decode_value_round_trips_float_free_values(value):
    assert decode_value(normalize_python(value)) == value


@given(with_floats)
def test_decode_value_round_trips_finite_floats(value):
    assert decode_value(normalize_json(json.dumps(value))) == value


@given(st.text(any_chars, max_size=20), st.booleans())
def test_strings_with_surrogates_agree_across_paths(text, ensure_ascii):
    normalized = normalize_python(text)
    assert normalize_json(json.dumps(text, ensure_ascii=ensure_ascii)) == normalized
    assert normalize_json(normalized) == normalized
    assert normalized == encode_string(text, html=True)


@given(st.text(max_size=30))
def test_escapes_match_the_reference_table(text):
    assert normalize_python(text) == go_quote(text)
    assert encode_string(text, html=False) == go_quote(text, html=False)
    assert normalize_python({text: text}) == b"{" + go_quote(text) + b":" + go_quote(text) + b"}"


@given(st.binary(max_size=40))
def test_invalid_utf8_matches_go_byte_by_byte(data):
    payload = bytes(b for b in data if b >= 0x20 and b not in b'"\\')
    assert normalize_json(b'"' + payload + b'"') == go_quote(go_decode_utf8(payload))


@settings(max_examples=30)
@given(with_floats, st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
def test_deep_values_take_the_iterative_paths_with_the_same_result(value, wrapper):
    opener, closer = wrapper
    depth = 3000  # past the default recursion limit, under MAX_DEPTH
    inner = json.dumps(value).encode()
    expected = opener * depth + normalize_json(inner) + closer * depth
    assert normalize_json(opener * depth + inner + closer * depth) == expected
    assert normalize_json(expected) == expected


json_ish = st.text(alphabet='[]{}",:0123456789.-eE+ tfrulnsaN\\', max_size=30)


@given(json_ish | with_floats.map(json.dumps), st.booleans())
def test_iterative_parser_matches_the_c_scanner(text, fixing):
    decoder = jsonparse.DECODERS[False, fixing]
    start = len(text) - len(text.lstrip(" \t\n\r"))  # callers start at a non-space
    try:
        expected: Any = decoder.raw_decode(text, start)
    except (json.JSONDecodeError, InvalidValueError):
        expected = "error"
    try:
        actual: Any = jsonparse.parse_iterative(text, start, decoder)
    except (json.JSONDecodeError, InvalidValueError):
        actual = "error"
    assert actual == expected


@given(json_ish)
def test_arbitrary_text_either_normalizes_or_raises_invalid_value(text):
    try:
        once = normalize_json(text)
    except InvalidValueError:
        return
    assert normalize_json(once) == once


@pytest.mark.parametrize("depth", [codec.MAX_DEPTH, codec.MAX_DEPTH + 1])
def test_depth_limit_counts_only_brackets_outside_strings(depth):
    rng = random.Random(depth)
    parts = []
    for _ in range(depth):
        parts.append(rng.choice(['["]{",', '{"[":', "[", '["\\"[",']))
    text = (
        "".join(parts) + "0" + "".join("}" if p.startswith("{") else "]" for p in reversed(parts))
    )
    if depth > codec.MAX_DEPTH:
        with pytest.raises(InvalidValueError, match="depth"):
            normalize_json(text)
    else:
        assert normalize_json(normalize_json(text)) == normalize_json(text)


# --- the fast path (castore/fastjson.py) against the exact path ------------------------------

odd_python = (
    st.floats()  # NaN and infinities included
    | st.sets(st.integers(), max_size=3)
    | st.tuples(st.integers())
    | st.binary(max_size=4)
    | st.integers(min_value=2**63, max_value=2**200)
    | st.text(any_chars, max_size=6)  # lone surrogates
    | st.dictionaries(st.integers(), st.integers(), max_size=2)
    | st.sampled_from([1.0, -0.0, 1e16, 1e20, 1e21, 1e-5, 1e-6, 1e-7, 5e-324, 0.1])
)
any_python = json_values(plain_scalars | finite_floats | odd_python)


def outcome(call: Any, value: Any) -> bytes | type[Exception]:
    try:
        out: bytes = call(value)
    except (InvalidValueError, ValueTooLargeError) as exc:
        return type(exc)
    return out


@given(any_python)
def test_the_fast_python_path_gives_the_exact_paths_bytes(value):
    assert outcome(normalize_python, value) == outcome(codec._exact_python, value)


@given(any_python)
def test_the_fast_json_path_gives_the_exact_paths_bytes(value):
    try:
        text = json.dumps(value, default=repr).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return  # not JSON text
    assert outcome(normalize_json, text) == outcome(codec._exact_json, text)
