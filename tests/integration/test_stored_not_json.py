"""A stored value that is not JSON is damage (exit 5), never an invalid input (exit 2).

Noticed in the twenty-second session: a value edited together with its digest
and size (every checksum made to match) into bytes that are not JSON read as
``InvalidValueError``, the answer to a caller's bad input, and a ``diff`` of
that key wrote its new version, then failed. The oracle is the same store
before the forged version: every answer that does not need the forged value
is unchanged, every answer that does raises ``CorruptionError``, and nothing
is written by a call that fails.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from castore import CorruptionError, Store, export_lines
from castore.backend import NewVersion
from castore.keys import Ref
from castore.records import Audit
from tests.helpers import Cli, underlying

pytestmark = pytest.mark.integration

NOT_JSON = b'{"a": tru'
# A review: a decoder that stops after the first value took these for JSON (patch, incr).
TRAILING = [b'{"a":1}x', b"1 2", b'{"a":1} {"b":2}']


def _forge(location: str, value: bytes = NOT_JSON) -> None:
    """Append a version of ``d/k`` whose value is ``value``, consistent in every checksum."""
    store = Store(underlying(location))
    try:
        forged = NewVersion(
            op="set",
            normalized=value,
            digest_hex=hashlib.sha256(value).hexdigest(),
            audit=Audit(),
        )
        store._backend.write(Ref("dag", "d", "k"), lambda previous, view: forged)
    finally:
        store.close()


def _history(store: Store) -> list[tuple[int, str, str]]:
    return [(e.version, e.operation, e.hash) for e in store.history("k").entries]


@pytest.mark.parametrize("value", [NOT_JSON, *TRAILING])
def test_every_read_of_a_stored_value_that_is_not_json_is_damage(
    store_location: str, value: bytes
) -> None:
    store = Store(store_location, dag="d")
    store.set("k", {"a": 1})
    store.set("k", {"a": 2})
    before = _history(store)
    _forge(store_location, value)
    after = _history(store)
    assert after[1:] == before
    assert after[0][0] == 3  # the forgery
    calls: list[tuple[str, Any]] = [
        ("get", lambda: store.get("k")),
        ("get_version", lambda: store.get("k", version=3)),
        ("diff", lambda: store.diff("k", {"a": 3})),
        ("update", lambda: store.update("k", lambda old: {"a": 4})),
        ("list values", lambda: store.list("", include_values=True)),
        ("diff_versions", lambda: store.diff_versions("k", from_version=2, to_version=3)),
        ("rollback", lambda: store.rollback("k", to_version=3)),
        ("patch", lambda: store.patch("k", [{"op": "add", "path": "/b", "value": 2}])),
        ("merge patch", lambda: store.patch("k", {"b": 2}, merge=True)),
        ("incr", lambda: store.incr("k", path="/a")),
        ("incr whole", lambda: store.incr("k")),
        ("export", lambda: list(export_lines(store))),
    ]
    for name, call in calls:
        with pytest.raises(CorruptionError, match="not JSON"):
            call()
        assert _history(store) == after, name  # a failed call wrote nothing
    # What does not need the forged value answers as before it.
    assert store.get("k", version=2).value == {"a": 2}
    assert [e.key for e in store.list("").entries] == ["k"]
    assert store.set("k", {"a": 5}, expected_version=3).version == 4
    assert store.get("k").value == {"a": 5}
    store.close()


def test_the_cli_answers_damage_for_a_stored_value_that_is_not_json(
    tmp_path: Path, store_location: str
) -> None:
    cli = Cli(tmp_path, store_location, dag="d")
    cli.ok("set", "k", '{"a": 1}')
    _forge(store_location)
    history = cli.raw_ok("history", "k")
    for args in (("get", "k"), ("get", "k", "--version", "2"), ("diff", "k", '{"a": 3}')):
        proc = cli.run(*args)
        assert proc.returncode == 5, (args, proc)
        assert b"not JSON" in proc.stderr, (args, proc)
        assert proc.stdout == b"", (args, proc)
    assert cli.raw_ok("history", "k") == history


def test_check_reports_a_stored_value_that_is_not_json(store_location: str) -> None:
    store = Store(store_location, dag="d")
    store.set("k", {"a": 1})
    store.set("other", [1, 2])
    assert store.check().ok
    _forge(store_location)
    report = store.check()
    assert not report.ok
    found = [f for f in report.findings if "not JSON" in f.problem]
    assert len(found) == 1, report.findings
    assert hashlib.sha256(NOT_JSON).hexdigest() in found[0].problem
    store.check(repair=True)
    # Whatever the repair did, the forged value is never served, nor "not found",
    # and everything else answers as before the forgery.
    with pytest.raises(CorruptionError):
        store.get("k")
    assert store.get("k", version=1).value == {"a": 1}
    assert store.get("other").value == [1, 2]
    assert store.set("k", {"a": 5}).version == 3
    assert store.get("k").value == {"a": 5}
    store.close()
