"""Dagu records Dagu could not have written, or that Go reads otherwise (dagurecord.py).

Each case sits between two good records: the bad one is skipped with its reason
(never a traceback), the others are imported, and nothing else is written. The
store comes from the ``store_location`` fixture, so every backend imports.
"""

import hashlib
import os

import pytest

from castore import Store
from castore.dagurecord import decode_record, parse_go_time
from castore.jsonrules import MAX_DEPTH
from tests.unit.test_dagu import DaguDir, dagu_record, hexname, rel_path, run_import


@pytest.fixture
def store(store_location):
    s = Store(store_location, dag="daily", durable=False)
    yield s
    s.close()


def _around(d: DaguDir) -> None:
    d.record("dag", "daily", "a-good", 1, 1)
    d.record("dag", "daily", "z-good", 2, 1)


def _outcome(store: Store, d: DaguDir, rel: str) -> str:
    """Import ``d``; the reason ``rel`` was skipped (the good records must be imported)."""
    got = run_import(store, d.root)
    for good in ("a-good", "z-good"):
        assert got[rel_path("dag", "daily", good)].status == "imported"
    assert got[rel].status == "skipped", got[rel]
    assert got[rel].problem
    assert [e.key for e in store.list().entries] == ["a-good", "z-good"]
    return got[rel].reason


def test_a_value_nested_as_deep_as_dagu_allows_is_imported(store, tmp_path):
    """Was: RecursionError at depth 998, and the records after it were never imported."""
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    deep = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)  # the record itself is one deeper
    rel = d.record("dag", "daily", "m-deep", deep, 3)
    got = run_import(store, d.root)
    assert {o.status for o in got.values()} == {"imported"}, got[rel]
    got_hash, version = store.get("m-deep").hash, store.get("m-deep").version
    assert (got_hash, version) == (hashlib.sha256(d.imported[rel][4]).hexdigest(), 3)


def test_a_record_deeper_than_dagu_reads_is_skipped(store, tmp_path):
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    deep = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH  # a value Dagu accepts, in a record it cannot read
    rel = d.bad(rel_path("dag", "daily", "m-deep"), dagu_record("dag", "daily", "m", deep, 1), "")
    assert "exceeded max depth" in _outcome(store, d, rel)


@pytest.mark.parametrize(
    ("case", "old", "new", "reason"),
    [
        ("case variant", b'"value":1', b'"value":1,"Value":2', "'Value' is not spelled 'value'"),
        ("only a variant", b'"value":1', b'"Value":1', "'Value' is not spelled 'value'"),
        ("folded variant", b'"scope"', b'"\\u017fcope"', "is not spelled 'scope'"),
        ("by variant", b'"value":1', b'"value":1,"updated_by":{"Dag_name":"x"}', "'dag_name'"),
        ("version past int64", b'"version":4', b'"version":9223372036854775808', "bad version"),
        ("version as float", b'"version":4', b'"version":4.0', "not an integer"),
        ("missing value", b'"value":1', b'"valeur":1', "missing field 'value'"),
        ("hash not a string", b'"hash":"', b'"hash":7,"x":"', "hash is not a string"),
        ("two objects", b'"value":1', b'"value":1}{"a":1', "multiple JSON values"),
        # Found by the Dagu compatibility review: Go's json.Unmarshal fails on these (Dagu
        # cannot read the key, nor list its namespace); castore imported them.
        ("scope not a string", b'"scope":"dag"', b'"scope":5', "scope is not a string"),
        ("namespace not a string", b'"namespace":"daily"', b'"namespace":[]', "namespace is not"),
        ("key not a string", b'"key":"m"', b'"key":{"k":"m"}', "key is not a string"),
        ("key as true", b'"key":"m"', b'"key":true', "key is not a string"),
        # Found by the same review: Go reads a time's bytes as written, unescaped, so an
        # escape (even of a character a time holds) fails its parse; castore decoded it.
        ("escaped time", b'00.5Z"', b'00.5\\u005a"', "bad time"),
        ("escaped digit", b'"2026-05-26T', b'"\\u0032026-05-26T', "bad time"),
    ],
)
def test_records_go_reads_otherwise_are_skipped(store, tmp_path, case, old, new, reason):
    """Was: imported as castore read them (Go matches fields case-insensitively, last wins)."""
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    data = dagu_record("dag", "daily", "m", 1, 4)
    assert data.count(old) == 1, case
    rel = d.bad(rel_path("dag", "daily", "m"), data.replace(old, new), "")
    assert reason in _outcome(store, d, rel), case


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        ("9999-12-31T23:59:59-23:00", "not after 1970-01-01T00:00:00Z and by 2262-04-11"),
        ("0001-01-01T00:00:00+01:00", "not after 1970-01-01"),  # year 0 in UTC
        ("1969-12-31T23:59:59Z", "not after 1970-01-01"),
        # Found by a review: the epoch itself was stamped "now" (a time 0 means now).
        ("1970-01-01T00:00:00Z", "not after 1970-01-01T00:00:00Z"),
        ("1970-01-01T01:00:00+01:00", "not after 1970-01-01T00:00:00Z"),
        ("\u0662\u0660\u0662\u0666-05-25T11:00:00Z", "bad time"),  # Arabic-Indic digits
        # Found by a review: "month must be in 1..12", naming neither the field nor the time.
        ("2026-13-01T00:00:00Z", "bad time '2026-13-01T00:00:00Z': month must be in 1..12"),
    ],
)
def test_times_castore_cannot_keep_or_go_cannot_read_are_skipped(store, tmp_path, when, reason):
    """Was: imported, then list and history of the namespace failed for good (year 10000)."""
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    rel = d.bad(
        rel_path("dag", "daily", "m"), dagu_record("dag", "daily", "m", 1, 1, updated=when), ""
    )
    assert reason in _outcome(store, d, rel)
    assert [e.key for e in store.list().entries] == ["a-good", "z-good"]


@pytest.mark.parametrize("field", ["dag_name", "dag_run_id", "step_name", "attempt_id"])
def test_a_record_whose_audit_no_write_could_keep_is_skipped(store, tmp_path, field):
    """Was (a review of the nineteenth session's import bounds): imported, and the store's
    own export was then refused by import; into an http:// store the whole import stopped."""
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    record = dagu_record("dag", "daily", "m", 1, 1, by={field: "x" * 9000})
    rel = d.bad(rel_path("dag", "daily", "m"), record, "")
    assert "holds 9000 characters, more than 8192" in _outcome(store, d, rel)


@pytest.mark.parametrize(
    ("ns_name", "key_name"),
    [
        (hexname("daily"), "637572736F72"),  # uppercase: Dagu's get reads 637572736f72.json
        (hexname("daily"), "63 75 72 73 6f 72"),
        ("6461696C79", hexname("cursor")),
    ],
)
def test_file_names_dagu_never_reads_are_skipped(store, tmp_path, ns_name, key_name):
    """Was: imported in place of the record Dagu serves, which was then skipped as existing."""
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    real = d.record("dag", "daily", "cursor", {"last_id": 123}, 7)
    rel = f"v1/dag/{ns_name}/{key_name}.json"
    d.bad(rel, dagu_record("dag", "daily", "cursor", {"last_id": 1}, 9), "")
    got = run_import(store, d.root)
    assert got[real].status == "imported"
    assert got[rel].status == "skipped"
    assert got[rel].reason.startswith("not a file name Dagu writes (its get never reads it): ")
    assert "lowercase hex" in got[rel].reason or "non-hexadecimal" in got[rel].reason
    assert not got[rel].problem  # Dagu's state holds no such record: nothing was lost
    assert (store.get("cursor").version, store.get("cursor").value) == (7, {"last_id": 123})


def test_names_that_are_not_utf8_are_reported_not_a_traceback(store, tmp_path):
    """Was: UnicodeEncodeError when the outcome was printed, and the import stopped."""
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    bad_file = os.fsencode(str(d.root / "v1" / "dag" / hexname("daily"))) + b"/\xff.json"
    bad_dir = os.fsencode(str(d.root / "v1" / "dag")) + b"/\xfe"
    os.makedirs(bad_dir)
    with open(bad_file, "wb") as fh:
        fh.write(dagu_record("dag", "daily", "x", 1, 1))
    with open(bad_dir + b"/6b.json", "wb") as fh:
        fh.write(dagu_record("dag", "daily", "k", 1, 1))
    got = run_import(store, d.root)
    for shown in (f"v1/dag/{hexname('daily')}/\\xff.json", "v1/dag/\\xfe/6b.json"):
        assert got[shown].status == "skipped", got
        assert got[shown].reason.startswith("not a file name Dagu writes"), got
        assert not got[shown].problem, got  # Dagu writes no such name: nothing was lost
    for outcome in got.values():
        outcome.file.encode("utf-8")  # printable as a JSON line
    assert [e.key for e in store.list().entries] == ["a-good", "z-good"]


def test_decode_record_keeps_go_last_wins_for_exact_duplicates():
    data = dagu_record("dag", "daily", "m", 1, 4).replace(
        b'"version":4', b'"version":3,"version":4'
    )
    assert decode_record(data).version == 4


def test_parse_go_time_takes_ascii_digits_only():
    with pytest.raises(ValueError, match="bad time"):
        parse_go_time("\u0662\u0660\u0662\u0666-05-25T11:00:00Z")


def test_entries_whose_names_are_no_records_are_harmless_whatever_they_are(store, tmp_path):
    """Was: a link named ``loop`` or a directory ``subdir`` beside the records counted as
    records not imported (exit 1 on every rerun), while a regular file so named did not."""
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    folder = d.root / "v1" / "dag" / hexname("daily")
    os.symlink("loop", folder / "loop")
    os.mkdir(folder / "subdir")
    os.mkfifo(folder / "pipe")
    os.symlink("/etc/passwd", folder / "NOTES.json")  # not Dagu's name: never read either
    linked = rel_path("dag", "daily", "linked")
    os.symlink("/etc/passwd", d.root / linked)  # a record's name: a record not imported
    got = run_import(store, d.root)
    for name in ("loop", "subdir", "pipe", "NOTES.json"):
        outcome = got[f"v1/dag/{hexname('daily')}/{name}"]
        assert outcome.status == "skipped", outcome
        assert not outcome.problem, outcome
    assert got[linked].problem
    assert got[linked].reason == "symbolic link, not followed"
    assert [e.key for e in store.list().entries] == ["a-good", "z-good"]


def test_lone_surrogate_escapes_in_the_audit_read_as_go_reads_them(store, tmp_path):
    r"""Was (the audit review): skipped as ``corrupt record: Input data was truncated`` (or
    ``invalid utf-16 surrogate pair``): msgspec refuses a lone surrogate escape, where Go's
    decoder, and so Dagu, reads each as U+FFFD and serves the record."""
    d = DaguDir(tmp_path / "dag-state")
    _around(d)
    data = dagu_record("dag", "daily", "m", 1, 4, by={"dag_run_id": "R1", "step_name": "S1"})
    data = data.replace(b'"R1"', b'"\\ud800x"').replace(b'"S1"', b'"a\\udc00"')
    data = data.replace(b'"scope":"dag"', b'"scope":"\\ud834"')  # Dagu overrides it: ignored
    rel = d.bad(rel_path("dag", "daily", "m"), data, "")
    got = run_import(store, d.root)
    assert got[rel].status == "imported", got[rel]
    (entry,) = store.history("m").entries
    assert (entry.run_id, entry.step_name) == ("\ufffdx", "a\ufffd")
