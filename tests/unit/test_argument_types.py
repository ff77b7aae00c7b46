# mypy: disable-error-code="arg-type"
"""Arguments of the wrong Python type: a TypeError naming the argument, nothing written.

Found by a review of the library as a new developer uses it: ``reason=5`` was
acknowledged as a version that no read, write, check or export could decode
afterwards; ``on_conflict="skipp"`` overwrote histories; ``version=True`` read
version 1; a key of 5 raised AttributeError. The store comes from the
``store_location`` fixture, so every backend is covered.
"""

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from castore import CorruptionError, InvalidValueError, Store
from castore.records import Audit
from castore.transfer import export_lines, import_lines


@pytest.fixture
def store(store_location):
    s = Store(store_location, dag="d", durable=False)
    for value in (1, 2, 3):
        s.set("k", value)
    yield s
    s.close()


def _export(store: Store) -> list[bytes]:
    return list(export_lines(store))


CALLS: list[tuple[str, Callable[[Store], Any], str]] = [
    ("get(None)", lambda s: s.get(None), "key must be a str, not NoneType"),
    ("set(5, 1)", lambda s: s.set(5, 1), "key must be a str, not int"),
    ("set(['k'], 1)", lambda s: s.set(["k"], 1), "key must be a str, not list"),
    ("namespace=5", lambda s: s.set("k", 1, namespace=5), "namespace must be a str or None"),
    ("scope=None", lambda s: s.set("k", 1, scope=None), "scope must be a str, not NoneType"),
    ("version=True", lambda s: s.get("k", version=True), "version must be an int, not bool"),
    ("version=1.0", lambda s: s.get("k", version=1.0), "version must be an int, not float"),
    ("expected='3'", lambda s: s.set("k", 9, expected_version="3"), "expected_version must be"),
    ("expected=3.0", lambda s: s.set("k", 9, expected_version=3.0), "expected_version must be"),
    ("create_only=1", lambda s: s.set("n", 9, create_only=1), "create_only must be a bool"),
    ("history limit", lambda s: s.history("k", limit=1.5), "limit must be an int, not float"),
    ("before_version", lambda s: s.history("k", before_version="2"), "before_version must be"),
    (
        "rollback to '1'",
        lambda s: s.rollback("k", to_version="1"),
        "to_version must be an int, not str",
    ),
    ("list prefix", lambda s: s.list(prefix=None), "prefix must be a str, not NoneType"),
    ("list limit", lambda s: s.list(limit=True), "limit must be an int, not bool"),
    ("keep_last=True", lambda s: s.compact(keep_last=True), "keep_last must be an int or None"),
    ("keep_last=1.5", lambda s: s.compact(keep_last=1.5), "keep_last must be an int or None"),
    ("grace '1'", lambda s: s.gc(grace_seconds="1"), "grace must be a number, not str"),
    ("reason=5", lambda s: s.set("k", 9, reason=5), "reason must be a str, not int"),
    ("reason=None", lambda s: s.delete("k", reason=None), "reason must be a str, not NoneType"),
    (
        "rollback reason",
        lambda s: s.rollback("k", to_version=1, reason=[1]),
        "reason must be a str, not list",
    ),
    ("diff reason", lambda s: s.diff("k", 7, reason=1.5), "reason must be a str, not float"),
    ("incr path", lambda s: s.incr("n", 1, path=5), "path must be a str or None, not int"),
    ("patch merge", lambda s: s.patch("k", {"a": 1}, merge="no"), "merge must be a bool, not str"),
]


@pytest.mark.parametrize(("call", "error"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_a_wrong_type_is_a_type_error_and_writes_nothing(store, call, error):
    before = _export(store)
    with pytest.raises(TypeError) as info:
        call(store)
    assert str(info.value).startswith(error), str(info.value)
    assert _export(store) == before


@pytest.mark.parametrize("field", ["actor", "run_id", "step"])
def test_audit_fields_of_the_handle_are_checked_at_the_write(store_location, field):
    s = Store(store_location, dag="d", durable=False)
    s.set("k", 1)
    setattr(s, field, 5)
    with pytest.raises(TypeError, match=f"{field} must be a str or None, not int"):
        s.set("k", 2)
    assert (s.get("k").version, s.get("k").value) == (1, 1)
    with pytest.raises(TypeError, match="dag must be a str or None, not int"):
        Store(store_location, dag=5)
    s.close()


def test_an_unknown_on_conflict_changes_nothing(store, store_location, tmp_path):
    """Was: any value but "refuse" and "skip" overwrote the stored history."""
    other = Store(str(tmp_path / "other"), dag="d", durable=False)
    for value in ("a", "b", "c", "d"):
        other.set("k", value)
    lines = _export(other)
    before = _export(store)
    with pytest.raises(InvalidValueError, match="on_conflict must be 'refuse', 'skip' or"):
        import_lines(store, lambda: lines, on_conflict="skipp")
    assert _export(store) == before
    other.close()


def test_check_reports_a_record_that_does_not_decode(tmp_path):
    """A store written before the types were checked: check names it, never raises."""
    s = Store(str(tmp_path / "s"), dag="d", durable=False)
    s.set("good", 1)
    s.set("k", 1)
    s._audit = lambda *_a, **_k: Audit(reason=5)  # type: ignore[method-assign]
    s.set("k", 2)  # what the earlier code wrote for reason=5
    fresh = Store(str(tmp_path / "s"), dag="d")
    with pytest.raises(CorruptionError):
        fresh.get("k")
    for repair in (False, True):
        report = fresh.check(repair=repair)
        assert not report.ok
        (finding,) = [f for f in report.findings if "does not decode" in f.problem]
        assert "Expected `str`, got `int`" in finding.problem
        assert not finding.repaired
    assert fresh.get("good").value == 1
    assert msgspec.json.decode(fresh.check().to_json())["ok"] is False
