import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castore import codec, fastjson, jsonparse
from castore.codec import (
    decode_value,
    encode_string,
    hexdigest,
    normalize_json,
    normalize_python,
)
from castore.errors import InvalidValueError, ValueTooLargeError
from castore.pyvalues import NumberLiteral

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


class Text(str):
    pass


class Whole(int):
    pass


class Real(float):
    pass


class Mapping(dict[Any, Any]):
    pass


class Items(list[Any]):
    pass


class Holder:
    pass


def general_table(items: dict[Any, Any]) -> dict[Any, Any]:
    """The same items in a dict that once held a non-str key (CPython's general table)."""
    made: dict[Any, Any] = {0: None}
    del made[0]
    made.update(items)
    return made


def instance_dict(items: dict[Any, Any]) -> dict[Any, Any]:
    """The same items in an instance ``__dict__`` (a split table while its keys are str)."""
    holder = Holder()
    holder.__dict__.update(items)
    return holder.__dict__


go_floats = st.sampled_from(
    [
        *(1.0, -1.0, 0.0, -0.0, 1e15, 123456789012345.0, 1e15 + 2, 2.0**53, 1e16 - 2, 1e16),
        *(1e20, 1e21, 1e300, 1e-4, -1e-4, 9.99e-5, 1e-5, 1e-6, 1e-7, 5e-324, 2.5e-300, 0.1),
    ]
)
odd_python = (
    st.floats()  # NaN and infinities included
    | st.sets(st.integers(), max_size=3)
    | st.tuples(st.integers())
    | st.binary(max_size=4)
    | st.integers(min_value=2**63, max_value=2**200)
    | st.text(any_chars, max_size=6)  # lone surrogates
    | st.dictionaries(st.integers(), st.integers(), max_size=2)
    | go_floats
    | st.integers(-(2**60), 2**60).map(float)  # integral, some past 1e15
    | st.builds(Text, keys)
    | st.builds(Whole, st.integers())
    | st.builds(Real, finite_floats)
    | number_literals.map(NumberLiteral)
    | st.sampled_from([b"x", 1j, Ellipsis, frozenset(), Holder(), "\u2028<&>", '"\\"1.0'])
)
any_keys = keys | st.integers() | st.builds(Text, keys) | st.sampled_from([None, 1.5, True, ()])


def any_containers(kids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    str_keyed = st.dictionaries(keys, kids, max_size=4)
    return (
        st.lists(kids, max_size=4)
        | st.lists(kids, max_size=4).map(tuple)
        | str_keyed
        | str_keyed.map(general_table)
        | str_keyed.map(instance_dict)
        | st.dictionaries(any_keys, kids, max_size=3)
        | st.dictionaries(any_keys, kids, max_size=3).map(general_table)
        | st.dictionaries(any_keys, kids, max_size=3).map(instance_dict)
        | str_keyed.map(Mapping)
        | st.lists(kids, max_size=3).map(Items)
        | st.builds(lambda kid, count: [kid] * count, kids, st.integers(0, 3))  # shared
        | st.builds(lambda kid: {"a": kid, "b": (kid, [kid])}, kids)
    )


any_python = st.recursive(plain_scalars | finite_floats | odd_python, any_containers, max_leaves=20)
plain_python_values = st.recursive(
    plain_scalars | finite_floats | go_floats,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.lists(kids, max_size=4).map(tuple),
        st.dictionaries(keys, kids, max_size=4),
        st.dictionaries(keys, kids, max_size=4).map(general_table),
        st.dictionaries(keys, kids, max_size=4).map(instance_dict),
        st.builds(lambda kid, count: [kid] * count, kids, st.integers(0, 3)),
    ),
    max_leaves=30,
)


def is_plain(value: Any) -> bool:
    """The reference: exact types, str keys, finite floats (small values: no limits)."""
    if type(value) is float:
        return math.isfinite(value)
    if type(value) in (str, int, bool, type(None)):
        return True
    if type(value) is dict:
        return all(type(key) is str for key in value) and all(map(is_plain, value.values()))
    return type(value) in (list, tuple) and all(map(is_plain, value))


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


@given(any_python)
def test_the_fast_python_path_takes_only_plain_values(value):
    if not is_plain(value):
        assert fastjson._walk(value)[0] == -1
        assert fastjson.plain_python(value) is None


@given(plain_python_values)
def test_the_fast_python_path_takes_every_small_plain_value(value):
    out = fastjson.plain_python(value)
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        assert out is None  # a lone surrogate: the exact path replaces it
        return
    assert out is not None
    assert codec._checked(out) == codec._exact_python(value)
    odd, references = fastjson._walk(value)
    assert odd in (0, 1)
    if not odd:
        assert out == fastjson._ENCODER.encode(value)
    assert out.count(b"[") + out.count(b"{") <= len(out) - references - 1  # _too_big's bound


odd_keys = st.builds(Text, keys) | st.sampled_from([0, None, 1.5, True, (), ("t", 1)])


@given(plain_python_values, odd_keys, st.sampled_from([dict, general_table, instance_dict]))
def test_a_key_that_is_not_a_str_anywhere_leaves_the_fast_path(value, key, table):
    # msgspec refuses most (sorting needs str keys) and writes a str subclass as its str,
    # as the exact path does; the walk turns them all away itself.
    odd = table({key: value})
    for _ in range(3):
        assert fastjson._walk(odd)[0] == -1
        assert fastjson.plain_python(odd) is None
        assert outcome(normalize_python, odd) == outcome(codec._exact_python, odd)
        odd = [value, {"k": odd, "v": value}]


@given(any_python)
def test_go_floats_rewrites_only_the_numbers(value):
    try:
        out = fastjson._ENCODER.encode(value)
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
        return
    if b"NaN" in out or b"Infinity" in out:
        return  # not from a plain value
    assert fastjson._go_floats(out) == fastjson._go_floats_by_tokens(out)


@pytest.mark.parametrize(
    ("opener", "closer"), [(b"", b""), (b"[" * 100, b"]" * 100), (b"[" * 3000, b"]" * 3000)]
)
def test_go_floats_on_deep_values_and_long_integers(opener, closer):
    long = b"9" * 5000  # past sys.get_int_max_str_digits()
    out = opener + b'[1.0,"1.0",1e16,[-0.0],' + long + b"]" + closer
    expected = opener + b'[1,"1.0",10000000000000000,[-0],' + long + b"]" + closer
    assert fastjson._go_floats(out) == expected == fastjson._go_floats_by_tokens(out)


@pytest.mark.parametrize(
    "value",
    [
        [{"a": 1}, general_table({1: 2})],
        [[{"a": 1, "b": [1.5]}], {"k": {Text("s"): 1}}],
        {"x": [0, instance_dict({"a": 1, 2: 3})]},
        [general_table({"a": 1, "b": {None: 1}})],
        [{"a": 1}, 2, "s", [3], general_table({"a": 1}), {"b": (1, {1.5: 2})}],
        [[[[[[float("nan")]]]]]],
        [[[[[[float("-inf")]]]]]],
        [1e308, 1e308],  # a sum that overflows: still finite
        [0.5, Real(0.5)],
        {"a": [Whole(1)]},
        {"a": (1, [NumberLiteral("1.50")])},
        Mapping(a=1),
        [Items([1])],
    ],
)
def test_the_fast_path_on_odd_tables_and_types(value):
    assert outcome(normalize_python, value) == outcome(codec._exact_python, value)
    assert (fastjson.plain_python(value) is None) == (not is_plain(value))


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        (["[" * codec.MAX_DEPTH], False),  # brackets in strings count: the exact path decides
        (["[" * (codec.MAX_DEPTH - 1)], True),
        ([[]] * 9_000 + ["{" * 999], True),
        ([[]] * 9_000 + ["{" * 1_000], False),
        ("[" * 20_000, False),
    ],
)
def test_the_bracket_count_of_the_fast_path(value, fast):
    assert (fastjson.plain_python(value) is not None) == fast
    assert outcome(normalize_python, value) == outcome(codec._exact_python, value)
