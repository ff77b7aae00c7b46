import enum
import hashlib
import inspect
import math
import re
import sys
from typing import Any

import pytest

from castore import codec
from castore.codec import (
    DIGEST_ALGO,
    MAX_DEPTH,
    MAX_VALUE_BYTES,
    decode_value,
    encode_string,
    hexdigest,
    normalize,
    normalize_json,
    normalize_python,
)
from castore.errors import InvalidValueError, ValueTooLargeError
from castore.goerrors import describe_at

FFFD = "\ufffd".encode()

GOLDEN = [
    (
        b'{ "b": 2, "a": 1 }',
        b'{"a":1,"b":2}',
        "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777",
    ),
    (
        b'{"id":9007199254740993,"decimal":1.2300}',
        b'{"decimal":1.2300,"id":9007199254740993}',
        "be073068aa3b3ebf4a125582b47b14d7c999e1c5e06c770be035e5d9fb40c0a7",
    ),
    (
        b'{"last_id":123}',
        b'{"last_id":123}',
        "c475a5436a1e85bfcf9edbcefb55dd6389d937e60d8e8ba17fb5791e61a5c689",
    ),
    (
        b'{"last_id":456}',
        b'{"last_id":456}',
        "b4b805a36ca1d984f359a9f8f73c69cf194d31ae14a0538150cb52f0479acfc5",
    ),
    (b"1", b"1", "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"),
    (b"null", b"null", "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"),
    (
        b'"<a&b>"',
        b'"\\u003ca\\u0026b\\u003e"',
        "905383911f60d2bda544e6319b56d4c820fc48e1c92bc5198b0084a74bd9019d",
    ),
]


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]", inner: bytes = b"") -> bytes:
    return opener * depth + inner + closer * depth


def nested_objects(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"a":' * depth + inner + b"}" * depth


def test_constants():
    assert MAX_VALUE_BYTES == 1_048_576
    assert MAX_DEPTH == 10_000
    assert DIGEST_ALGO == "sha256"
    assert set(codec.__all__) >= {"normalize_json", "normalize_python", "JSONValue"}


@pytest.mark.parametrize(("raw", "normalized", "digest"), GOLDEN)
def test_golden_vectors(raw, normalized, digest):
    assert normalize_json(raw) == normalized
    assert hexdigest(normalize_json(raw)) == digest
    assert normalize_json(raw.decode()) == normalized
    assert normalize(raw) == normalized
    assert normalize_json(normalized) == normalized


def test_hexdigest_is_bare_lowercase_sha256():
    assert hexdigest(b"{}") == hashlib.sha256(b"{}").hexdigest()
    assert len(hexdigest(b"")) == 64


def test_key_order_is_utf8_bytewise():
    raw = '{"é":4,"a":2,"_":3,"Z":5,"B":1}'.encode()
    assert normalize_json(raw) == '{"B":1,"Z":5,"_":3,"a":2,"é":4}'.encode()
    # U+FFFF sorts before U+10000 in UTF-8 (not in UTF-16).
    raw = '{"\U00010000":1,"\uffff":2,"\ue000":3}'.encode()
    assert normalize_json(raw) == '{"\ue000":3,"\uffff":2,"\U00010000":1}'.encode()


def test_nested_key_ordering():
    raw = b'{"b":{"d":1,"c":{"f":[{"z":1,"y":2}],"e":0}},"a":[{"n":1,"m":2}]}'
    expected = b'{"a":[{"m":2,"n":1}],"b":{"c":{"e":0,"f":[{"y":2,"z":1}]},"d":1}}'
    assert normalize_json(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a":1,"a":2}', b'{"a":2}'),
        (b'{"a":1,"b":0,"a":2}', b'{"a":2,"b":0}'),
        (b'{"a":{"x":1},"a":[2]}', b'{"a":[2]}'),
        (b'[{"k":"v1","k":"v2"}]', b'[{"k":"v2"}]'),
        (b'{"\\u0061":1,"a":2}', b'{"a":2}'),
    ],
)
def test_duplicate_keys_last_wins(raw, expected):
    assert normalize_json(raw) == expected


@pytest.mark.parametrize(
    "number",
    [
        "1.0",
        "1E5",
        "1e5",
        "1E+5",
        "1e-7",
        "-0",
        "-0.0",
        "0.10",
        "1.2300",
        "9007199254740993",
        "1e400",
        "-1.5e-10",
        "123456789012345678901234567890",
        "0",
    ],
)
def test_numbers_are_kept_verbatim(number):
    assert normalize_json(number.encode()) == number.encode()
    assert normalize_json(f"[ {number} ]".encode()) == f"[{number}]".encode()
    assert normalize_json(f'{{"n": {number}}}'.encode()) == f'{{"n":{number}}}'.encode()


def test_huge_integer_literal_is_kept():
    digits = b"7" * 5000
    assert normalize_json(digits) == digits
    assert decode_value(digits) == (10**5000 - 1) // 9 * 7
    value = decode_value(b"[" + digits + b"]")
    assert isinstance(value, list)
    assert value == [(10**5000 - 1) // 9 * 7]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"\\""', b'"\\""'),
        (b'"\\\\"', b'"\\\\"'),
        (b'"\\n"', b'"\\n"'),
        (b'"\\r"', b'"\\r"'),
        (b'"\\t"', b'"\\t"'),
        (b'"\\b"', b'"\\b"'),
        (b'"\\f"', b'"\\f"'),
        (b'"\\u0008"', b'"\\b"'),
        (b'"\\u000C"', b'"\\f"'),
        (b'"\\u0000"', b'"\\u0000"'),
        (b'"\\u0001"', b'"\\u0001"'),
        (b'"\\u000b"', b'"\\u000b"'),
        (b'"\\u001F"', b'"\\u001f"'),
        (b'"<"', b'"\\u003c"'),
        (b'">"', b'"\\u003e"'),
        (b'"&"', b'"\\u0026"'),
        (b'"\\u003C"', b'"\\u003c"'),
        ('"\u2028"'.encode(), b'"\\u2028"'),
        ('"\u2029"'.encode(), b'"\\u2029"'),
        (b'"\\u2028\\u2029"', b'"\\u2028\\u2029"'),
        (b'"\x7f"', b'"\x7f"'),
        (b'"\\u007f"', b'"\x7f"'),
        (b'"\\/"', b'"/"'),
        (b'"/"', b'"/"'),
        (b'"\\u00e9"', '"é"'.encode()),
        (b'"\\u00E9"', '"é"'.encode()),
        ('"é中😀"'.encode(), '"é中😀"'.encode()),
        (b'"\\u4e2d"', '"中"'.encode()),
        (b'"\\u0041\\u0062"', b'"Ab"'),
        (b'"\\' + b"'" + b'"', None),
        (b'"\'"', b'"\'"'),
        (b'"\\ufffd"', b'"' + FFFD + b'"'),
        ('"\ufeff"'.encode(), '"\ufeff"'.encode()),
    ],
)
def test_string_escapes(raw, expected):
    if expected is None:
        with pytest.raises(InvalidValueError):
            normalize_json(raw)
    else:
        assert normalize_json(raw) == expected


@pytest.mark.parametrize("code", range(0x20))
def test_every_control_character(code):
    named = {8: b"\\b", 9: b"\\t", 10: b"\\n", 12: b"\\f", 13: b"\\r"}
    expected = named.get(code, b"\\u%04x" % code)
    assert normalize_json(b'"\\u%04x"' % code) == b'"' + expected + b'"'
    assert normalize_python(chr(code)) == b'"' + expected + b'"'
    with pytest.raises(InvalidValueError, match="in string literal"):
        normalize_json(b'"' + bytes([code]) + b'"')  # raw control characters are invalid


def test_escapes_in_keys():
    assert normalize_json(b'{"<k>":"\\n"}') == b'{"\\u003ck\\u003e":"\\n"}'


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\xff", FFFD),
        (b"\xfe\xff", FFFD * 2),
        (b"\x80", FFFD),
        (b"a\xffb", b"a" + FFFD + b"b"),
        (b"\xe2\x82", FFFD * 2),  # truncated 3-byte sequence: one U+FFFD per byte
        (b"\xe2\x82a", FFFD * 2 + b"a"),
        (b"\xf0\x9f\x98", FFFD * 3),  # truncated 4-byte sequence
        (b"\xf0\x9f\x98\x80", "😀".encode()),
        (b"\xed\xa0\x80", FFFD * 3),  # UTF-8-encoded surrogate
        (b"\xc0\x80", FFFD * 2),  # overlong
        (b"\xc1\xbf", FFFD * 2),
        (b"\xe0\x80\x80", FFFD * 3),
        (b"\xf4\x90\x80\x80", FFFD * 4),  # above U+10FFFF
        (b"\xf5\x80", FFFD * 2),
        (b"\xc3\xa9\xc3", "é".encode() + FFFD),
        (b"\xe2\x82\xac\xe2", "€".encode() + FFFD),
    ],
)
def test_invalid_utf8_in_strings_is_replaced_byte_by_byte(payload, expected):
    assert normalize_json(b'"' + payload + b'"') == b'"' + expected + b'"'
    assert normalize_json(b'{"' + payload + b'":[1]}') == b'{"' + expected + b'":[1]}'


def test_invalid_utf8_keys_collide_after_replacement():
    assert normalize_json(b'{"\xff":1,"\xfe":2}') == b'{"' + FFFD + b'":2}'


@pytest.mark.parametrize("raw", [b"\xff", b"[1,\xff]", b"1\xff", b"\xef\xbb\xbf1", b"[\xc3\xa9]"])
def test_invalid_utf8_outside_strings_is_a_syntax_error(raw):
    with pytest.raises(InvalidValueError):
        normalize_json(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"\\ud800"', FFFD),
        (b'"\\udc00"', FFFD),
        (b'"\\uDBFF"', FFFD),
        (b'"\\ud800x"', FFFD + b"x"),
        (b'"\\ud83d\\ude00"', "😀".encode()),
        (b'"\\uD83D\\uDE00"', "😀".encode()),
        (b'"\\ud800\\ud800\\udc00"', FFFD + "\U00010000".encode()),
        (b'"\\udc00\\ud800"', FFFD * 2),
        (b'"\\ud800\\u0041"', FFFD + b"A"),
        (b'"\\ud800\\n"', FFFD + b"\\n"),
        (b'"\\\\ud800"', b"\\\\ud800"),
    ],
)
def test_surrogate_escapes(raw, expected):
    assert normalize_json(raw) == b'"' + expected + b'"'
    assert normalize_json(b"[" + raw + b"]") == b'["' + expected + b'"]'


def test_surrogate_keys_collide_last_wins():
    raw = b'{"\\ud800":1,"\\udc00":2,"\\ud800":3,"z":["\\udfff"]}'
    assert normalize_json(raw) == b'{"z":["' + FFFD + b'"],"' + FFFD + b'":3}'


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b" \t\n\r1 \t\n\r", b"1"),
        (b' [ 1 , { "a" : true } , null , false ] ', b'[1,{"a":true},null,false]'),
        (b'"x"', b'"x"'),
        (b"true", b"true"),
        (b"false", b"false"),
        (b"[]", b"[]"),
        (b"{}", b"{}"),
        (b"[ ]", b"[]"),
        (b"{ }", b"{}"),
        (b'{"":""}', b'{"":""}'),
    ],
)
def test_whitespace_and_scalars(raw, expected):
    assert normalize_json(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"1 2", "multiple JSON values"),
        (b"01", "multiple JSON values"),
        (b"-01", "multiple JSON values"),
        (b"[1] [2]", "multiple JSON values"),
        (b'{}"x"', "multiple JSON values"),
        (b"truefalse", "multiple JSON values"),
        (b"", "empty input"),
        (b"   ", "empty input"),
        (b" \t\r\n", "empty input"),
        (b"{", "unexpected EOF"),
        (b"[1", "unexpected EOF"),
        (b'"abc', "unexpected EOF"),
        (b"NaN", "invalid character 'N' looking for beginning of value"),
        (b"Infinity", "invalid character 'I'"),
        (b"-Infinity", "invalid character 'I' in numeric literal"),
        (b"[NaN]", "invalid character 'N'"),
        (b"[1,]", "invalid character ']' looking for beginning of value"),
        (b'{"a":1,}', "invalid character '}' looking for beginning of object key string"),
        (b'{"a":1} x', "invalid character 'x' looking for beginning of value"),
        (b"1 x", "invalid character 'x'"),
        (b"1 NaN", "invalid character 'N'"),
        (b"[1 2]", "invalid character '2'"),
        (b'{"a" 1}', "invalid character '1' after object key"),
        (b"{1:2}", "invalid character '1' looking for beginning of object key string"),
        (b"{'a':1}", "invalid character"),
        (b"[01]", "invalid character '1'"),
        (b'"\\x"', "in string escape code"),
        (b'"\\u12"', "hexadecimal"),
        # A token cut at the end: Go's Decoder says io.ErrUnexpectedEOF (the review
        # found "invalid character 'e' looking for beginning of value" for "1e").
        (b"tru", "unexpected EOF"),
        (b"nul", "unexpected EOF"),
        (b"fals", "unexpected EOF"),
        (b"1.", "unexpected EOF"),
        (b"1e", "unexpected EOF"),
        (b"1E-", "unexpected EOF"),
        (b"-", "unexpected EOF"),
        (b"trux", "invalid character 'x' in literal true (expecting 'e')"),
        (b"[nulx]", "invalid character 'x' in literal null (expecting 'l')"),
        (b"fa", "unexpected EOF"),
        (b"fx", "invalid character 'x' in literal false (expecting 'a')"),
        (b"1.x", "invalid character 'x' after decimal point in numeric literal"),
        (b"1ex", "invalid character 'x' in exponent of numeric literal"),
        (b"2.5e-x", "invalid character 'x' in exponent of numeric literal"),
        (b"[1e]", "invalid character ']' in exponent of numeric literal"),
        (b'{"a":1.}', "invalid character '}' after decimal point in numeric literal"),
        (b"1.5.3", "invalid character '.' looking for beginning of value"),
        (b".5", "invalid character '.'"),
        (b"+1", "invalid character '+'"),
        (b"0x10", "invalid character 'x'"),
        (b"- 1", "invalid character ' ' in numeric literal"),
        (b"\x0c1", "invalid character"),
        (b"\x0b1", "invalid character"),
        ("\u00a01".encode(), "invalid character"),
        (b"[1]]", "invalid character ']'"),
        (b"//x\n1", "invalid character '/'"),
    ],
)
def test_invalid_json(raw, message):
    with pytest.raises(InvalidValueError) as info:
        normalize_json(raw)
    assert message in info.value.detail
    assert not isinstance(info.value, ValueTooLargeError)


@pytest.mark.parametrize(
    ("msg", "text", "pos", "said", "at"),
    [
        (
            "Illegal trailing comma before end of object",
            '{"a":1,}',
            6,
            "'}' looking for beginning of object key string",
            7,
        ),
        (
            "Illegal trailing comma before end of object",
            '{"a":1 , }',
            7,
            "'}' looking for beginning of object key string",
            9,
        ),
        (
            "Illegal trailing comma before end of array",
            "[1,]",
            2,
            "']' looking for beginning of value",
            3,
        ),
        (
            "Illegal trailing comma before end of array",
            "[1, \n ]",
            2,
            "']' looking for beginning of value",
            6,
        ),
    ],
)
def test_python_313_trailing_comma_errors_are_worded_as_go_words_them(msg, text, pos, said, at):
    # Found by a review on Python 3.13: its json says "Illegal trailing comma before end of
    # object" at the comma, where 3.11 and 3.12 say "Expecting property name ..." at the '}'.
    # castore said "invalid character ',' Illegal trailing comma ..." (line 1, column 7).
    assert describe_at(msg, text, pos) == (f"invalid character {said}", at)


@pytest.mark.parametrize(
    ("raw", "message"),
    [  # whole messages, from Go's encoding/json (a review compared them with a Go binary)
        (b"[1 2]", "invalid character '2' after array element"),
        (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        (b'[1,{"a":[2 3]}]', "invalid character '3' after array element"),
        (b'{"a":[1,2] "b":1}', "invalid character '\"' after object key:value pair"),
        (b'["]" 1]', "invalid character '1' after array element"),  # a bracket in a string
        (b"1 2eX", "invalid character 'X' in exponent of numeric literal"),  # in the 2nd value
        (b"1 2.x", "invalid character 'x' after decimal point in numeric literal"),
        (b"1 2e", "unexpected EOF"),
        (b"1 2x", "multiple JSON values"),
        (b"[" * 10_001, "invalid character '[' exceeded max depth"),
        (b"'", "invalid character '\\'' looking for beginning of value"),
        (b'"\x07"', "invalid character '\\a' in string literal"),
        (b"\x07", "invalid character '\\a' looking for beginning of value"),
        (b"\\", "invalid character '\\\\' looking for beginning of value"),
        (b"\xff", "invalid character '\u00ff' looking for beginning of value"),
        (b"[1,\xff]", "invalid character '\u00ff' looking for beginning of value"),
        (b"\xc2\x85", "invalid character '\u00c2' looking for beginning of value"),
        (b"\x85", "invalid character '\\u0085' looking for beginning of value"),
    ],
)
def test_invalid_json_messages_are_gos(raw, message):
    """Was: "... after array element or object key:value pair", "multiple JSON values" for
    a number cut in the second value, Python's repr of the character."""
    with pytest.raises(InvalidValueError) as info:
        normalize_json(raw)
    assert info.value.detail == message


def test_size_limit_raw_input():
    raw = b' "' + b"a" * 1_048_574 + b'"'
    assert len(raw) == MAX_VALUE_BYTES + 1
    with pytest.raises(ValueTooLargeError) as info:
        normalize_json(raw)
    assert (info.value.size, info.value.limit) == (MAX_VALUE_BYTES + 1, MAX_VALUE_BYTES)
    with pytest.raises(ValueTooLargeError):
        normalize_json(raw.decode())


def test_size_limit_exactly_at_limit_is_accepted():
    raw = b'"' + b"a" * 1_048_574 + b'"'
    assert len(raw) == MAX_VALUE_BYTES
    assert normalize_json(raw) == raw
    assert normalize_python("a" * 1_048_574) == raw


def test_size_limit_normalized_output():
    raw = b'"' + b"<" * 174_763 + b'"'
    assert len(raw) == 174_765
    with pytest.raises(ValueTooLargeError) as info:
        normalize_json(raw)
    assert info.value.size == 1_048_580
    with pytest.raises(ValueTooLargeError):
        normalize_python("<" * 174_763)
    with pytest.raises(InvalidValueError):  # ValueTooLargeError is an InvalidValueError
        normalize_json(raw)


def test_size_limit_invalid_utf8_expansion():
    raw = b'"' + b"\xff" * 400_000 + b'"'
    with pytest.raises(ValueTooLargeError) as info:
        normalize_json(raw)
    assert info.value.size == 1_200_002


@pytest.mark.parametrize("kind", ["array", "object", "mixed"])
def test_depth_limit(kind):
    def build(depth: int) -> bytes:
        if kind == "array":
            return nested(depth)
        if kind == "object":
            return nested_objects(depth)
        odd = depth % 2
        return b"[" * odd + b'{"k":[' * (depth // 2) + b"0" + b"]}" * (depth // 2) + b"]" * odd

    ok = build(MAX_DEPTH)
    assert normalize_json(ok) == ok
    assert decode_value(ok) is not None
    assert normalize_json(ok.decode()) == ok
    too_deep = build(MAX_DEPTH + 1)
    with pytest.raises(InvalidValueError, match="exceeded max depth"):
        normalize_json(too_deep)


def test_depth_with_whitespace_and_content_uses_slow_paths():
    depth = MAX_DEPTH - 1  # the object inside is the last level
    raw = b"[ " * depth + b'"<x>", 1.50, {"b": 1, "a": "\\ud800"}' + b" ]" * depth
    inner = b'"\\u003cx\\u003e",1.50,{"a":"' + FFFD + b'","b":1}'
    assert normalize_json(raw) == b"[" * depth + inner + b"]" * depth


@pytest.mark.parametrize(
    "raw",
    [
        nested(MAX_DEPTH, inner=b"1,]"),
        nested(5000, inner=b'{"a" 1}'),
        nested(5000, inner=b"[1,]"),
        nested(5000)[:-1],
        nested(5000, inner=b"NaN"),
        nested(5000) + b" 1",
        nested(5000, opener=b"{", closer=b"}"),
    ],
)
def test_syntax_errors_inside_deep_values(raw):
    with pytest.raises(InvalidValueError):
        normalize_json(raw)


def test_brackets_inside_strings_do_not_count_toward_depth():
    raw = b'["' + b"[" * 20_000 + b'\\"{' * 20_000 + b'", "\\\\"]'
    assert normalize_json(raw) == raw.replace(b", ", b",")
    text = b'["\\\\", ' + nested(MAX_DEPTH - 1) + b"]"
    assert normalize_json(text) == text.replace(b", ", b",")


def test_unterminated_string_with_many_brackets():
    with pytest.raises(InvalidValueError):
        normalize_json(b'["' + b"[" * 20_000)
    with pytest.raises(InvalidValueError):  # must stay linear: many unclosed-looking quotes
        normalize_json(b'"\\"' * 200_000 + b"[" * 20_000)
    with pytest.raises(InvalidValueError):
        normalize_json(b'"' + b"\\" * 200_000 + b"[" * 20_000)


def test_depth_limit_respects_a_low_recursion_limit():
    value: list[Any] = []
    for _ in range(200):
        value = [{"k": value}]
    expected = b'[{"k":' * 200 + b"[]" + b"}]" * 200
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 60)
    try:
        assert normalize_json(nested(500)) == nested(500)
        assert normalize_python(value) == expected
        decoded = decode_value(expected)
    finally:
        sys.setrecursionlimit(old)
    assert decoded == value  # comparing nested lists recurses too


def test_str_and_buffer_inputs():
    assert normalize_json('{"b":"é","a":1}') == '{"a":1,"b":"é"}'.encode()
    assert normalize_json(bytearray(b"[1 ]")) == b"[1]"
    assert normalize_json(memoryview(b" 2")) == b"2"
    assert normalize_json('"\ud800"') == b'"' + FFFD + b'"'


def test_normalize_dispatch():
    assert normalize(b'{"a": 1}') == b'{"a":1}'
    assert normalize(bytearray(b"[1]")) == b"[1]"
    assert normalize(memoryview(b"null")) == b"null"
    assert normalize('{"a": 1}') == b'"{\\"a\\": 1}"'  # a str is a value, not JSON text
    assert normalize({"a": 1}) == b'{"a":1}'
    assert normalize(None) == b"null"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (-0.0, "-0"),
        (0.0, "0"),
        (123456789.0, "123456789"),
        (1.5e300, "1.5e+300"),
        (2.5, "2.5"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (1e-10, "1e-10"),
        (1.234e-8, "1.234e-8"),
        (9.999999999999997e-7, "9.999999999999997e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (1e16, "10000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (-1e100, "-1e+100"),
        (100.0, "100"),
        (0.5, "0.5"),
        (12345.678, "12345.678"),
    ],
)
def test_python_floats_use_go_format(value, expected):
    assert normalize_python(value) == expected.encode()
    assert normalize_python([value]) == f"[{expected}]".encode()


@pytest.mark.parametrize(
    ("value", "shown"),
    [(math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf")],
)
def test_python_non_finite_floats_are_rejected(value, shown):
    with pytest.raises(InvalidValueError, match=re.escape(f"json: unsupported value: {shown}")):
        normalize_python(value)
    with pytest.raises(InvalidValueError):
        normalize_python({"a": [value]})


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    __slots__ = ()

    def __str__(self):
        return "not this"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        ([True, 1, 1.0], b"[true,1,1]"),
        (0, b"0"),
        (-5, b"-5"),
        (2**70, str(2**70).encode()),
        ("", b'""'),
        ("<a&b>", b'"\\u003ca\\u0026b\\u003e"'),
        ((1, (2, "x")), b'[1,[2,"x"]]'),
        ([], b"[]"),
        ({}, b"{}"),
        ({"b": 1, "a": {"d": [], "c": ()}}, b'{"a":{"c":[],"d":[]},"b":1}'),
        ({"é": 1, "a": 2, "_": 3, "Z": 4}, '{"Z":4,"_":3,"a":2,"é":1}'.encode()),
        (Color.RED, b"1"),
        ({Text("k"): Text("v")}, b'{"k":"v"}'),
        (type("F", (float,), {})(2.0), b"2"),
        ("\ud800", b'"' + FFFD + b'"'),
        ("a\udc00b", b'"a' + FFFD + b'b"'),
        ("\ud83d\ude00", '"😀"'.encode()),
        ("\u2028", b'"\\u2028"'),
    ],
)
def test_normalize_python_values(value, expected):
    assert normalize_python(value) == expected
    assert normalize_json(expected) == expected


def test_python_bool_is_not_int():
    assert normalize_python([True, False, 1, 0]) == b"[true,false,1,0]"
    with pytest.raises(InvalidValueError, match="bool"):
        normalize_python({True: 1})


@pytest.mark.parametrize(
    ("value", "name"), [({1: "a"}, "int"), ({None: 1}, "NoneType"), ({(1,): 1}, "tuple")]
)
def test_python_non_str_keys_are_rejected(value, name):
    with pytest.raises(InvalidValueError, match=f"unsupported key type: {name}"):
        normalize_python(value)
    with pytest.raises(InvalidValueError):
        normalize_python([{"ok": value}])


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ({1, 2}, "set"),
        ([b"x"], "bytes"),
        (object(), "object"),
        ({"a": frozenset()}, "frozenset"),
        ([bytearray()], "bytearray"),
        (1j, "complex"),
        (Color, "EnumType"),
    ],
)
def test_python_unsupported_types(value, name):
    with pytest.raises(InvalidValueError, match=f"json: unsupported type: {name}"):
        normalize_python(value)


def test_python_surrogate_keys_collide_deterministically():
    high, low = chr(0xD800), chr(0xDC00)
    first = normalize_python({high: 1, low: 2})
    second = normalize_python({low: 2, high: 1})
    assert first == second == b'{"' + FFFD + b'":2}'


def test_python_depth_limit():
    ok: list[Any] = []
    for _ in range(MAX_DEPTH - 1):
        ok = [ok]
    assert normalize_python(ok) == nested(MAX_DEPTH)
    with pytest.raises(InvalidValueError, match="depth"):
        normalize_python([ok])
    obj: dict[str, Any] = {}
    for _ in range(MAX_DEPTH - 1):
        obj = {"a": obj}
    assert normalize_python(obj) == nested_objects(MAX_DEPTH - 1, b"{}")
    with pytest.raises(InvalidValueError, match="depth"):
        normalize_python({"a": obj})


def test_python_cycles_are_rejected():
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidValueError, match="depth"):
        normalize_python(loop)
    table: dict[str, Any] = {}
    table["self"] = table
    with pytest.raises(InvalidValueError, match="depth"):
        normalize_python(table)


def test_python_shared_references_blowup_is_bounded():
    value: list[Any] = [0]
    for _ in range(40):
        value = [value, value]
    with pytest.raises(ValueTooLargeError):
        normalize_python(value)


def test_python_huge_int():
    big = 10**5000 - 1
    assert normalize_python(big) == b"9" * 5000
    assert normalize_python(-big) == b"-" + b"9" * 5000


@pytest.mark.parametrize(
    ("normalized", "expected"),
    [
        (b'{"a":1,"b":[true,false,null,"x"]}', {"a": 1, "b": [True, False, None, "x"]}),
        (b"1.0", 1.0),
        (b"-0", 0),
        (b"1E5", 100000.0),
        (b"9007199254740993", 9007199254740993),
        (b"123456789012345678901234567890", 123456789012345678901234567890),
        (b"1e400", math.inf),
        (b"-1e400", -math.inf),
        (b"1e-400", 0.0),
        (b'"\\u003c"', "<"),
        (b'"\\ud800"', "\ufffd"),
        (b'"\\ud83d\\ude00"', "😀"),
        (b'{"a":1,"a":2}', {"a": 2}),
    ],
)
def test_decode_value(normalized, expected):
    value = decode_value(normalized)
    assert value == expected
    assert type(value) is type(expected)


def test_decode_value_types():
    assert type(decode_value(b"1")) is int
    assert type(decode_value(b"1.0")) is float
    assert decode_value(b"[1e400, 1]") == [math.inf, 1]  # the slow path keeps ints as int
    slow: Any = decode_value(b"[1e400,-0]")
    assert type(slow[1]) is int


def test_decode_value_deep():
    value: Any = decode_value(nested(MAX_DEPTH, inner=b"1e400"))
    for _ in range(MAX_DEPTH):
        assert isinstance(value, list)
        value = value[0]
    assert value == math.inf


@pytest.mark.parametrize("raw", [b"", b"1 2", b"NaN", b"[1,]", b'"\xff"', b"{"])
def test_decode_value_rejects_invalid(raw):
    with pytest.raises(InvalidValueError):
        decode_value(raw)


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, "x", None, True], "b": {"c": "<&>\u2028"}},
        "é\U0001f600",
        [],
        {"": {}},
        2**80,
    ],
)
def test_decode_value_round_trip(value):
    normalized = normalize_python(value)
    assert decode_value(normalized) == value
    assert normalize_python(decode_value(normalized)) == normalized


@pytest.mark.parametrize(
    ("text", "html", "expected"),
    [
        ("<a&b>", True, b'"\\u003ca\\u0026b\\u003e"'),
        ("<a&b>", False, b'"<a&b>"'),
        ("\u2028\u2029", False, b'"\\u2028\\u2029"'),
        ("\u2028\u2029", True, b'"\\u2028\\u2029"'),
        ('"\\\n\r\t\b\f\x00\x1f\x7f', False, b'"\\"\\\\\\n\\r\\t\\b\\f\\u0000\\u001f\x7f"'),
        ("é😀", False, '"é😀"'.encode()),
        ("\ud800", False, b'"' + FFFD + b'"'),
        ("", True, b'""'),
    ],
)
def test_encode_string(text, html, expected):
    assert encode_string(text, html=html) == expected


def test_idempotent_examples():
    for raw in [b'{ "b": [1.0, "\\u00e9\\/"], "a": "\xff" }', b'"\\ud800<"', nested(MAX_DEPTH)]:
        once = normalize_json(raw)
        assert normalize_json(once) == once


def test_plain_values_take_the_fast_path_and_others_do_not():
    from castore import fastjson

    plain = {"b": [1, 2.5, "x<y", None, True], "a": {"n": -3, "f": 0.125}}
    assert fastjson.plain_python(plain) == b'{"a":{"f":0.125,"n":-3},"b":[1,2.5,"x<y",null,true]}'
    assert fastjson.plain_python({"x": 1.0, "y": 1e21}) == b'{"x":1,"y":1e+21}'  # floats fixed
    assert fastjson.plain_python((1, [2.0])) == b"[1,[2]]"  # tuples are arrays on both paths
    for odd in (
        {1, 2},
        b"x",
        float("nan"),
        [1e400],
        {1: 2},
        "\ud800",
        [[0, 0]] * 600_000,
        True.__class__,
    ):
        assert fastjson.plain_python(odd) is None, odd
    assert fastjson.plain_json(b'{"b": 1.50, "a": [1E5, 2]}') == b'{"a":[1E5,2],"b":1.50}'
    for odd_text in (b"-0", b"[1, -0]", b'"\xff"', b"[1] [2]", b""):
        assert fastjson.plain_json(odd_text) is None, odd_text
