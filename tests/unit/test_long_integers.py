"""Integers past Python's 4,300-digit limit are converted in sub-quadratic time, never
through ``Decimal`` whole (quadratic: a 1,000,000-digit ``incr`` took 49 s)."""

import decimal

import pytest

from castore import Store, edits, pyvalues

DIGITS = 100_000


@pytest.fixture
def long_conversions(monkeypatch):
    """Records each conversion of a long int or digit string by ``Decimal``."""
    seen: list[int] = []

    class Counting(decimal.Decimal):
        def __new__(cls, value="0", context=None):
            if isinstance(value, int) and value.bit_length() > 20_000:
                seen.append(value.bit_length())
            if isinstance(value, str) and len(value) > 6_000:
                seen.append(len(value))
            return decimal.Decimal(value, context)

    for module in (edits, pyvalues):
        monkeypatch.setattr(module, "Decimal", Counting, raising=False)
    return seen


def test_a_long_integer_is_set_and_added_to_without_a_quadratic_conversion(
    tmp_path, long_conversions
):
    big = 10**DIGITS
    with Store(tmp_path / "s", dag="d", durable=False) as s:
        s.set("n", big)
        assert s.incr("n").number == big + 1
        assert s.incr("n", by=-big).number == 1
        s.set("m", -big + 7)
        assert s.get("m").value == -big + 7
        assert s.get("m").value_json == b"-" + b"9" * (DIGITS - 1) + b"3"
    assert long_conversions == []


@pytest.mark.parametrize("value", [0, 1, -1, 2**128, -(2**129) + 3, 10**4299, 10**4300 - 1])
def test_int_text_is_the_decimal_text(value):
    assert pyvalues.int_text(value) == str(decimal.Decimal(value))


def test_int_text_of_long_integers_is_exact():
    for value in (10**5000, 10**5000 - 1, -(3**20000), 7**12345 + 1):
        assert pyvalues.int_text(value) == str(decimal.Decimal(value))
