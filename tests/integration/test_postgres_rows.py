"""PostgreSQL rows edited by hand into what no write makes: damage, never a traceback.

Found by a review (twenty-second session). The oracle is the same store's answers
before the edit: after ``check --repair``, every answer the edit did not destroy is
the same again, and the next write continues the versions.
"""

from __future__ import annotations

from typing import Final

import pytest

import castore
from castore import Store
from castore.transfer import export_lines
from tests.integration.test_postgres import query

pytestmark = pytest.mark.integration

DAG: Final = "pg"
_K: Final = "ref_id = (SELECT ref_id FROM refs WHERE key = 'k')"


def _two_versions(location: str) -> Store:
    store = Store(location, dag=DAG)
    store.set("a", 1)
    store.set("k", {"n": 1})
    store.set("k", {"n": 2})
    return store


@pytest.mark.parametrize("column", ["time_ns", "created_ns", "size"])
def test_a_null_in_the_copy_of_the_newest_version_is_damage_and_repaired(postgres_location, column):
    # Before: list and set were TypeError tracebacks (or an SQL constraint error), and
    # check --repair found both the copy and the row "verify", so no write ever worked.
    before = _two_versions(postgres_location).get("k").to_dict()
    query(postgres_location, f"UPDATE refs SET {column} = NULL WHERE key = 'k'")  # noqa: S608
    fresh = Store(postgres_location, dag=DAG)
    with pytest.raises(castore.CorruptionError, match="missing or out of range"):
        fresh.get("k")
    with pytest.raises(castore.CorruptionError, match="missing or out of range"):
        fresh.set("k", {"n": 3})
    listed = fresh.list()
    assert ([e.key for e in listed.entries], listed.skipped) == (["a"], ["k"])
    assert not fresh.check().ok
    assert fresh.check(repair=True).ok
    again = Store(postgres_location, dag=DAG)
    assert again.get("k").to_dict() == before
    assert [e.key for e in again.list().entries] == ["a", "k"]
    assert again.set("k", {"n": 3}).version == 3


@pytest.mark.parametrize(
    "edit",
    [
        "time_ns = -5",
        "time_ns = 0",
        "created_ns = -7",
        "audit = convert_to('{\"pid\":-1}', 'UTF8')",
        "audit = convert_to('{\"pid\":99999999999999999999999}', 'UTF8')",
        # found by a review (thirty-second session): passed check and export, and the
        # backup was refused ("Expected `int` >= 0", "a delete carries no value")
        "op = 'damaged', damaged_from = -5, digest = NULL, inline = NULL, blob = NULL",
        "op = 'delete'",
        "audit = ''::bytea",  # its reason, user and host gone: read as an empty record
    ],
)
def test_a_version_row_an_import_would_refuse_is_reported_and_never_exported(
    postgres_location, edit
):
    # Before: check said ok and export wrote the row, so the backup failed to import.
    store = _two_versions(postgres_location)
    store.set("k", {"n": 3})
    query(postgres_location, f"UPDATE versions SET {edit} WHERE {_K} AND version = 2")  # noqa: S608
    fresh = Store(postgres_location, dag=DAG)
    report = fresh.check()
    assert not report.ok
    assert [f.path for f in report.findings if f.severity == "error"] == ["versions/dag/pg/k@2"]
    with pytest.raises(castore.CorruptionError, match="version 2"):
        list(export_lines(fresh))
    assert fresh.get("k").value == {"n": 3}  # the other versions read as before
    assert fresh.get("k", version=1).value == {"n": 1}


def test_an_audit_text_longer_than_todays_limit_is_no_damage(postgres_location):
    # Found by a review of the fix above: castore wrote audit text longer than 8,192
    # characters before that limit (2026-12-03); such a row is no damage, and exports.
    _two_versions(postgres_location)
    reason = "x" * 9000
    query(
        postgres_location,
        f"UPDATE versions SET audit = convert_to(%s, 'UTF8') WHERE {_K} AND version = 1",  # noqa: S608
        (f'{{"reason":"{reason}"}}',),
    )
    fresh = Store(postgres_location, dag=DAG)
    assert fresh.check().ok
    exported = b"".join(export_lines(fresh))
    assert reason.encode() in exported
    assert fresh.history("k").entries[-1].reason == reason


@pytest.mark.parametrize(
    "edit",
    [
        "digest = overlay(digest placing '\\x00'::bytea from 5 for 1)",
        "size = size + 1",
    ],
)
def test_list_never_shows_a_copy_that_is_not_its_row(postgres_location, edit):
    # Found by a review: a flipped byte in the copy's digest was listed as the key's hash
    # (get refused the key: its value does not hash to it).
    store = _two_versions(postgres_location)
    before = [e.to_dict() for e in store.list().entries]
    query(postgres_location, f"UPDATE refs SET {edit} WHERE key = 'k'")  # noqa: S608
    fresh = Store(postgres_location, dag=DAG)
    listed = fresh.list()
    assert ([e.key for e in listed.entries], listed.skipped) == (["a"], ["k"])
    assert fresh.check(repair=True).ok
    assert [e.to_dict() for e in Store(postgres_location, dag=DAG).list().entries] == before


@pytest.mark.parametrize("renumbered", [1, 3])
def test_a_repair_never_makes_a_stray_row_the_newest_version(postgres_location, renumbered):
    # Found by a review (thirty-second session): a row renumbered above the key's newest
    # (version 1, or 3, a delete, edited to 9) was refused by reads, and check reported
    # both the copy "older than its row" and row 9 as one the history does not name; then
    # check --repair copied row 9 into the key's copy, and get served version 1's value as
    # version 9 (or "not found"). The oracle: the same store before the edit.
    store = Store(postgres_location, dag=DAG)
    for write in ({"a": 1}, {"a": 2}, None, {"b": 1}, {"b": 2}, {"c": 3}):
        store.set("k", write) if write is not None else store.delete("k")
    before = Store(postgres_location, dag=DAG).get("k").to_dict()
    renumber = f"UPDATE versions SET version = 9 WHERE {_K} AND version = %s"  # noqa: S608
    query(postgres_location, renumber, (renumbered,))
    for handle in (Store(postgres_location, dag=DAG), store):
        with pytest.raises(castore.CorruptionError):
            handle.get("k")
    report = Store(postgres_location, dag=DAG).check(repair=True)
    assert not report.ok
    fresh = Store(postgres_location, dag=DAG)
    try:
        answer = fresh.get("k").to_dict()
    except castore.CorruptionError:
        answer = None
    assert answer in (None, before), answer  # refused, or the newest version as it was
    with pytest.raises((castore.CorruptionError, castore.ConflictError)):
        fresh.set("k", {"d": 4})  # never version 10 over a history that is not one


def test_versions_of_a_key_whose_refs_row_is_lost_are_never_left_out_of_an_export(
    postgres_location,
):
    # Found by a review (thirty-second session): export exited 0 with a complete end line
    # and without the key, whose next set in the restored store started at version 1
    # again. A directory store refuses the export of a key whose log is lost (exit 5).
    _two_versions(postgres_location)
    query(postgres_location, "DELETE FROM refs WHERE key = 'k'")
    fresh = Store(postgres_location, dag=DAG)
    with pytest.raises(castore.CorruptionError, match="refs row is lost"):
        list(export_lines(fresh))
    with pytest.raises(castore.CorruptionError, match="refs row is lost"):
        list(castore.audit_records(fresh))
    assert len(list(export_lines(fresh, scope="root_dag"))) == 2  # another scope: its lines
    assert not fresh.check().ok
