"""Importing a Dagu dag-state directory (castore/dagu.py).

The store comes from the ``store_location`` fixture (tests/conftest.py), so every
backend imports; the Dagu directories are files below ``tmp_path``.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from castore import ConflictError, Store
from castore.codec import normalize_json
from castore.dagu import DaguImport, import_dagu
from castore.dagurecord import parse_go_time

T0 = "2026-05-25T10:00:00.123456789Z"
T1 = "2026-05-26T11:30:00.5Z"
LONG_KEY = "k" * 125  # the longest key whose file name (2 * 125 + 5 = 255 bytes) Linux allows
LONG_UTF8_KEY = "\u00e9" * 62 + "x"  # 125 UTF-8 bytes in 63 characters
LONG_NAMESPACE = "n" * 127  # a 254-byte directory name
TEMP_REASON = "temporary file left by an interrupted Dagu write"


def hexname(text: str) -> str:
    return text.encode("utf-8").hex()


def rel_path(scope: str, namespace: str, key: str, suffix: str = ".json") -> str:
    return f"v1/{scope}/{hexname(namespace)}/{hexname(key)}{suffix}"


def write_file(root: str | os.PathLike[str], rel: str, data: bytes) -> str:
    path = Path(root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def dagu_record(
    scope: str,
    namespace: str,
    key: str,
    value: Any,
    version: int,
    *,
    created: str = T0,
    updated: str = T1,
    by: dict[str, str] | None = None,
    hash_: str | None = None,
    body_key: str | None = None,
) -> bytes:
    """The bytes Dagu writes: compact JSON, fields in Dagu's order, value embedded normalized."""
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    normalized = normalize_json(raw)
    digest = hash_ or hashlib.sha256(normalized).hexdigest()
    head = json.dumps(
        {"scope": scope, "namespace": namespace, "key": body_key or key}, separators=(",", ":")
    )[:-1].encode()
    tail: dict[str, Any] = {
        "version": version,
        "hash": digest,
        "created_at": created,
        "updated_at": updated,
    }
    if by is not None:
        tail["updated_by"] = by
    rest = json.dumps(tail, separators=(",", ":"), ensure_ascii=False)[1:].encode()
    return head + b',"value":' + raw + b"," + rest


class DaguDir:
    """A Dagu dag-state directory built file by file, with the expected import outcome."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.imported: dict[
            str, tuple[str, str, str, int, bytes]
        ] = {}  # rel -> ref, version, value
        self.skipped: dict[str, str] = {}  # rel -> reason fragment

    def record(
        self, scope: str, namespace: str, key: str, value: Any, version: int, **kw: Any
    ) -> str:
        data = dagu_record(scope, namespace, key, value, version, **kw)
        rel = write_file(self.root, rel_path(scope, namespace, key), data)
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.imported[rel] = (scope, namespace, key, version, normalize_json(raw))
        return rel

    def bad(self, rel: str, data: bytes, reason: str) -> str:
        write_file(self.root, rel, data)
        self.skipped[rel] = reason
        return rel


BY = {"dag_name": "daily", "dag_run_id": "run-9", "attempt_id": "att-2", "step_name": "save"}


def build_dagu_dir(root: str | os.PathLike[str]) -> DaguDir:
    d = DaguDir(root)
    d.record("dag", "daily", "cursor", {"last_id": 3}, 3, by=BY)
    d.record("dag", "daily", "Cursor", "upper case twin", 1)
    d.record("dag", "daily", "a:b<c>", {"windows": "a:b<c>?*|"}, 2, by={"dag_run_id": "r2"})
    d.record("dag", "daily", "cursors/feed", b'{"n":1.2300,"h":"\\u003cb\\u003e"}', 5)
    d.record("dag", "daily", LONG_KEY, [1, 2, 3], 7)
    d.record("dag", "daily", LONG_UTF8_KEY, "long utf-8", 1)
    d.record("dag", "daily", "spaced", b'{ "b" : 1,  "a" : [ 2 ] }', 4)  # hash is of normalized
    d.record("dag", "daily", "null", None, 1)
    d.record("dag", "daily", "file-name-wins", 1, 1, body_key="the body says otherwise")
    d.record("custom", LONG_NAMESPACE, "k", "long namespace", 2)
    d.record("global", "_", "g", True, 9, created="2026-01-01T00:00:00Z", updated=T0)
    d.record(
        "root_dag",
        "root",
        "offset",
        1,
        1,
        created="2026-05-25T12:00:00.5+02:00",
        updated="2026-05-25T12:00:00.5+02:00",
    )
    daily = hexname("daily")
    d.bad(rel_path("dag", "daily", "cursor", ".json.tmp.12345"), b'{"partial', TEMP_REASON)
    d.bad(rel_path("dag", "daily", "broken"), b"not json {", "corrupt record")
    d.bad(rel_path("dag", "daily", "empty"), b"", "corrupt record")
    d.bad(
        rel_path("dag", "daily", "tampered"),
        dagu_record("dag", "daily", "tampered", {"x": 1}, 2, hash_="0" * 64),
        "hash mismatch",
    )
    d.bad(
        rel_path("dag", "daily", "zero"),
        dagu_record("dag", "daily", "zero", 1, 0),
        "bad version",
    )
    d.bad(
        rel_path("dag", "daily", "badtime"),
        dagu_record("dag", "daily", "badtime", 1, 1, updated="yesterday"),
        "corrupt record",
    )
    d.bad(
        rel_path("dag", "daily", "../escape"),
        dagu_record("dag", "daily", "../escape", 1, 1),
        "valid namespace and key",
    )
    d.bad(f"v1/dag/{daily}/zz.json", b"{}", "not a file name Dagu writes")
    d.bad(f"v1/dag/{daily}/notes.txt", b"hello", "not a Dagu state record")
    d.bad(rel_path("weird", "daily", "k"), dagu_record("weird", "daily", "k", 1, 1), "scope")
    # Dagu's lock directory sits beside v1/ and is not state.
    write_file(root, ".dagu_record_locks/ab/.dagu_lock/owner", b"host-1-abc")
    return d


def digest_tree(root: str | os.PathLike[str]) -> dict[str, str]:
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(base, name), root) + "/"] = "dir"
        for name in files:
            with open(os.path.join(base, name), "rb") as fh:
                out[os.path.relpath(os.path.join(base, name), root)] = hashlib.sha256(
                    fh.read()
                ).hexdigest()
    return out


@pytest.fixture
def store(store_location):
    s = Store(store_location, dag="daily", durable=False)
    yield s
    s.close()


@pytest.fixture
def dagu(tmp_path):
    return build_dagu_dir(tmp_path / "dag-state")


def run_import(store: Store, root: str | os.PathLike[str]) -> dict[str, DaguImport]:
    outcomes = list(import_dagu(store, str(root)))
    for o in outcomes:
        assert isinstance(o, DaguImport)
    return {o.file: o for o in outcomes}


def test_parse_go_time():
    assert parse_go_time("1970-01-01T00:00:00Z") == 0
    assert parse_go_time("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_go_time("2026-05-25T10:00:00.123456789Z") == 1779703200_123456789
    assert parse_go_time("2026-05-25T12:00:00.123456789+02:00") == 1779703200_123456789
    assert parse_go_time("2026-05-25T07:30:00.123456789-02:30") == 1779703200_123456789
    assert parse_go_time("1969-12-31T23:59:59.5Z") == -500_000_000
    # Go truncates a fraction past nanoseconds (parseNanoseconds)
    assert parse_go_time("1970-01-01T00:00:01.1234567891Z") == 1_123_456_789
    bad_ones = (
        "2026-05-25",
        "2026-05-25T10:00:00",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "",
        # Go's parseStrictRFC3339 refuses these (review, thirty-fourth session)
        "2026-05-25T10:00:00+05:99",  # timezone minute out of range
        "2026-05-25T10:00:00+24:00",  # timezone hour out of range
        "2026-05-25T10:00:00z",  # Z is upper case only
        "2026-05-25t10:00:00Z",  # and so is T
    )
    for bad in bad_ones:
        with pytest.raises(ValueError, match=r"time|month|day|hour|range"):
            parse_go_time(bad)


def test_import_dagu_outcomes(store, dagu):
    store.set("existing", "castore wins")
    existing = dagu.record("dag", "daily", "existing", "dagu loses", 4)
    del dagu.imported[existing]
    dagu.skipped[existing] = "castore and Dagu differ"  # castore's version 4 is not Dagu's
    got = run_import(store, dagu.root)
    assert set(got) == set(dagu.imported) | set(dagu.skipped)
    for rel, (scope, namespace, key, version, _) in dagu.imported.items():
        o = got[rel]
        assert (o.status, o.reason) == ("imported", ""), (rel, o)
        assert (o.scope, o.namespace, o.key, o.version) == (scope, namespace, key, version)
    for rel, reason in dagu.skipped.items():
        assert got[rel].status == "skipped", rel
        assert reason in got[rel].reason, (rel, got[rel].reason)
    assert got[existing].key == "existing"
    assert got[existing].problem  # counted as not imported: exit 1
    assert store.get("existing").value == "castore wins"
    assert store.get("existing").version == 1


def test_imported_records_read_back(store, dagu):
    run_import(store, dagu.root)
    for scope, namespace, key, version, normalized in dagu.imported.values():
        g = store.get(key, scope=scope, namespace=namespace)
        assert (g.found, g.version, g.value_json) == (True, version, normalized), key
        assert g.hash == hashlib.sha256(normalized).hexdigest()
        assert store.get(key, scope=scope, namespace=namespace, version=version).found
        (entry,) = store.history(key, scope=scope, namespace=namespace).entries
        assert (entry.version, entry.operation) == (version, "set")
        assert entry.reason == "imported from Dagu"
    assert store.get("Cursor").value == "upper case twin"
    assert store.get("cursor").value == {"last_id": 3}
    assert store.get("file-name-wins").value == 1
    assert store.get("spaced").value_json == b'{"a":[2],"b":1}'
    assert store.get("cursors/feed").value_json == b'{"h":"\\u003cb\\u003e","n":1.2300}'
    assert store.get("null").value_json == b"null"


def test_imported_times_and_updated_by(store, dagu):
    run_import(store, dagu.root)
    (entry,) = store.history("cursor").entries
    assert entry.time == T1
    assert (entry.dag_name, entry.run_id, entry.attempt, entry.step_name) == (
        "daily",
        "run-9",
        "att-2",
        "save",
    )
    assert store.history("a:b<c>").entries[0].run_id == "r2"
    assert store.history("Cursor").entries[0].run_id == ""
    listed = {e.key: e for e in store.list().entries}
    assert (listed["cursor"].created_at, listed["cursor"].updated_at) == (T0, T1)
    assert listed[LONG_KEY].version == 7
    g = store.list(scope="global").entries[0]
    assert (g.created_at, g.updated_at, g.version) == ("2026-01-01T00:00:00Z", T0, 9)
    r = store.list(scope="root_dag", namespace="root").entries[0]
    assert (r.created_at, r.updated_at) == ("2026-05-25T10:00:00.5Z", "2026-05-25T10:00:00.5Z")
    assert "file-name-wins" in listed
    assert "the body says otherwise" not in listed
    assert set(listed) == {
        "Cursor",
        "a:b<c>",
        "cursor",
        "cursors/feed",
        "file-name-wins",
        LONG_KEY,
        LONG_UTF8_KEY,
        "null",
        "spaced",
    }


def test_expected_version_keeps_working_after_import(store, dagu):
    run_import(store, dagu.root)
    with pytest.raises(ConflictError) as exc:
        store.set("cursor", {"last_id": 4}, expected_version=1)
    assert exc.value.actual == 3
    r = store.set("cursor", {"last_id": 4}, expected_version=3)
    assert (r.version, r.created) == (4, False)
    assert [e.version for e in store.history("cursor").entries] == [4, 3]
    assert store.list().entries[1].created_at == T0  # the incarnation Dagu created
    assert store.diff("cursors/feed", {"n": 2}, expected_version=5).version == 6
    assert (
        store.set("k", 1, scope="custom", namespace=LONG_NAMESPACE, expected_version=2).version == 3
    )
    with pytest.raises(Exception, match="no version 1"):
        store.get("cursor", version=1)
    with pytest.raises(Exception, match="no version 2"):
        store.rollback("cursor", to_version=2)
    assert (
        store.rollback("cursor", to_version=3).hash == hashlib.sha256(b'{"last_id":3}').hexdigest()
    )


def test_import_dagu_history_paging_with_a_gap(store, dagu):
    run_import(store, dagu.root)
    for i in range(3):
        store.set("cursor", i)
    first = store.history("cursor", limit=2)
    assert [e.version for e in first.entries] == [6, 5]
    second = store.history("cursor", limit=2, before_version=first.next_before_version)
    assert [e.version for e in second.entries] == [4, 3]
    assert second.next_before_version == 0  # versions 1 and 2 were never imported
    rest = store.history("cursor", limit=2, before_version=3)
    assert (rest.entries, rest.next_before_version) == ([], 0)


def test_import_dagu_never_modifies_the_source(store, dagu):
    before = digest_tree(dagu.root)
    stat_before = {
        p: os.stat(os.path.join(dagu.root, p)).st_mtime_ns for p in before if not p.endswith("/")
    }
    run_import(store, dagu.root)
    run_import(store, dagu.root)
    assert digest_tree(dagu.root) == before
    for p, mtime in stat_before.items():
        assert os.stat(os.path.join(dagu.root, p)).st_mtime_ns == mtime


HOLDS = "castore holds this record's version"


def test_second_import_skips_what_exists(store, dagu):
    run_import(store, dagu.root)
    again = run_import(store, dagu.root)
    for rel in dagu.imported:
        assert (again[rel].status, again[rel].reason) == ("skipped", HOLDS)
        assert not again[rel].problem
    for rel in dagu.skipped:
        assert again[rel].status == "skipped"
    assert store.get("cursor").version == 3
    assert len(store.history("cursor").entries) == 1


def test_import_dagu_accepts_the_v1_directory_itself(store, dagu):
    got = run_import(store, dagu.root / "v1")
    assert store.get("cursor").version == 3
    assert any(o.status == "imported" for o in got.values())


def test_import_dagu_of_an_empty_or_missing_directory(store, tmp_path):
    (tmp_path / "empty" / "v1").mkdir(parents=True)
    assert run_import(store, tmp_path / "empty") == {}
    with pytest.raises(NotADirectoryError):
        list(import_dagu(store, str(tmp_path / "missing")))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        list(import_dagu(store, str(tmp_path / "file")))


def test_import_dagu_of_a_huge_version_does_not_crash(store, tmp_path):
    """Dagu versions are int64: a record at version 2**62 is imported or skipped, never a crash."""
    d = DaguDir(tmp_path / "dag-state")
    rel = d.record("dag", "daily", "huge", 1, 2**62)
    d.record("dag", "daily", "zz-after", 2, 1)
    got = run_import(store, d.root)
    assert got[rel].status in ("imported", "skipped")
    assert got[rel_path("dag", "daily", "zz-after")].status == "imported"
    if got[rel].status == "imported":
        assert store.get("huge").version == 2**62
        assert [e.version for e in store.history("huge").entries] == [2**62]
        assert store.set("huge", 2, expected_version=2**62).version == 2**62 + 1
    else:
        assert store.get("huge").found is False
