"""History, get at a version, rollback and version diffs of Store (castore/history.py).

The store comes from the ``store_location`` fixture (tests/conftest.py), so every
backend runs these; the tests that look at the file backend's logs and version
index take ``file_store`` instead.
"""

import base64
import getpass
import itertools
import os
import random
import re
import socket
import threading

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore import ConflictError, CorruptionError, InvalidRefError, NotFoundError, Store
from castore.codec import hexdigest, normalize
from castore.dagurecord import parse_go_time
from castore.file import logread
from castore.file.records import KIND_BLOB
from castore.literals import decode_literal
from castore.records import OP_DELETE, OP_ROLLBACK, OP_SET
from castore.transfer import import_lines
from tests.helpers import frames_of, opened_at, read_versions, ref_log_path

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


@pytest.fixture
def store(store_location):
    s = Store(store_location, dag="d", durable=False)
    yield s
    s.close()


@pytest.fixture
def file_store(tmp_path):
    """A store of the file backend (tests of its logs and version index)."""
    s = Store(tmp_path / "store", dag="d", durable=False)
    yield s
    s.close()


def log_of(store: Store, key: str, scope: str = "dag", namespace: str | None = None) -> str:
    return ref_log_path(store, key, scope, namespace)


def blob_frames(path: str) -> int:
    return sum(1 for f in frames_of(path)[0] if f.kind == KIND_BLOB)


def random_text(size: int, seed: int = 7) -> str:
    """Incompressible printable text (base64 of random bytes) of about ``size`` chars."""
    rng = random.Random(seed)
    return base64.b64encode(rng.randbytes(size * 3 // 4)).decode("ascii")


# -- history -------------------------------------------------------------------------


def process_user() -> str:
    """The audit's user (docs/CLI.md): ``getpass.getuser()``'s, the uid in decimal where
    it finds none (a uid without a password database entry, no ``$LOGNAME`` or ``$USER``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def test_history_lists_every_version_newest_first_with_audit(store_location, monkeypatch):
    monkeypatch.setenv("DAG_NAME", "daily")
    monkeypatch.setenv("DAG_RUN_ID", "env-run")
    monkeypatch.setenv("DAG_RUN_STEP_NAME", "env-step")
    monkeypatch.setenv("DAG_RUN_ATTEMPT_ID", "attempt-1")
    monkeypatch.setenv("CASTORE_ACTOR", "env-actor")
    plain = Store(store_location, dag="d", durable=False)
    named = Store(
        store_location, dag="d", durable=False, actor="alice", run_id="run-7", step="save"
    )
    h1 = plain.set("k", {"a": 1}).hash
    h2 = named.set("k", {"a": 2}, reason="bump").hash
    plain.delete("k", reason="gone")
    named.rollback("k", to_version=1, reason="undo")
    plain.diff("k", {"a": 3}, reason="via diff")

    result = plain.history("k")
    assert (result.scope, result.namespace, result.key) == ("dag", "d", "k")
    assert result.next_before_version == 0
    entries = result.entries
    assert [e.version for e in entries] == [5, 4, 3, 2, 1]
    assert [e.operation for e in entries] == [OP_SET, OP_ROLLBACK, OP_DELETE, OP_SET, OP_SET]
    assert [e.hash for e in entries][1:] == [h1, "", h2, h1]
    assert entries[0].hash == hexdigest(b'{"a":3}')
    for e in entries:
        assert RFC3339.fullmatch(e.time), e.time
        assert (e.dag_name, e.attempt, e.pid) == ("d", "attempt-1", os.getpid())  # dag= wins
        assert e.host == socket.gethostname()
        assert e.user == process_user()
    times = [parse_go_time(e.time) for e in entries]  # trimmed fractions do not sort as text
    assert times == sorted(times, reverse=True)
    # The environment gives run id, step and actor unless the Store overrides them.
    by_version = {e.version: e for e in entries}
    for v in (1, 3, 5):
        e = by_version[v]
        assert (e.run_id, e.step_name, e.actor) == ("env-run", "env-step", "env-actor")
    for v in (2, 4):
        e = by_version[v]
        assert (e.run_id, e.step_name, e.actor) == ("run-7", "save", "alice")
    assert [e.reason for e in entries] == ["via diff", "undo", "gone", "bump", ""]
    assert [e.rollback_from for e in entries] == [0, 1, 0, 0, 0]


def test_history_without_environment_leaves_audit_fields_empty(store):
    store.set("k", 1)
    (e,) = store.history("k").entries
    assert e.dag_name == "d"  # the store's dag=
    assert (e.run_id, e.step_name, e.attempt, e.actor, e.reason) == ("",) * 5
    assert e.pid == os.getpid()


def test_history_of_other_scopes_and_missing_key(store):
    store.set("k", 1, scope="custom", namespace="ns")
    store.set("k", 2, scope="global")
    assert [e.version for e in store.history("k", scope="custom", namespace="ns").entries] == [1]
    assert store.history("k", scope="global").entries[0].hash == hexdigest(b"2")
    assert store.history("k").entries == []
    assert store.history("never").next_before_version == 0


def test_history_paging(store):
    for i in range(10):
        store.set("k", i)
    pages = []
    before = None
    while True:
        page = store.history("k", limit=3, before_version=before)
        pages.append([e.version for e in page.entries])
        if not page.next_before_version:
            break
        before = page.next_before_version
        assert before == page.entries[-1].version
    assert pages == [[10, 9, 8], [7, 6, 5], [4, 3, 2], [1]]
    # A page that ends exactly at version 1 has no next page.
    last = store.history("k", limit=3, before_version=4)
    assert [e.version for e in last.entries] == [3, 2, 1]
    assert last.next_before_version == 0
    assert [e.version for e in store.history("k", limit=1).entries] == [10]
    assert [e.version for e in store.history("k", before_version=3).entries] == [2, 1]
    assert store.history("k", before_version=1).entries == []
    assert len(store.history("k", before_version=10**6).entries) == 10
    assert len(store.history("k", limit=0).entries) == 10
    assert len(store.history("k", limit=100).entries) == 10


def test_history_pages_and_old_versions_do_not_scan_the_log(file_store, monkeypatch):
    """FORMAT.md §5: with the version index in step, a page never reads the whole log."""
    for i in range(300):
        file_store.set("k", {"i": i})
    file_store.get("k", version=1)  # the first reader that needs the index builds it
    fresh = Store(file_store.root, dag="d", durable=False)

    def no_scan(fd):
        raise AssertionError("scanned the whole log")

    monkeypatch.setattr(logread, "scan", no_scan)
    page = fresh.history("k", limit=5, before_version=120)
    assert [e.version for e in page.entries] == [119, 118, 117, 116, 115]
    assert page.next_before_version == 115
    assert fresh.get("k", version=37).value == {"i": 36}
    assert fresh.diff_versions("k", from_version=1, to_version=2).patch == [
        {"op": "replace", "path": "/i", "value": 1}
    ]


@pytest.mark.parametrize("kwargs", [{"limit": -1}, {"before_version": 0}, {"before_version": -5}])
def test_history_rejects_bad_paging(store, kwargs):
    store.set("k", 1)
    with pytest.raises(InvalidRefError):
        store.history("k", **kwargs)


def test_history_rejects_bad_refs(store):
    with pytest.raises(InvalidRefError):
        store.history("../x")
    with pytest.raises(InvalidRefError):
        store.history("k", scope="custom")


@pytest.mark.parametrize("damage", ["missing", "garbage", "short", "shuffled", "past-end"])
def test_history_and_versions_survive_a_damaged_version_index(file_store, damage):
    for i in range(1, 8):
        file_store.set("k", {"i": i})
    file_store.delete("k")
    file_store.get("k", version=1)  # the first reader that needs the index builds it
    vix = log_of(file_store, "k")[: -len(".log")] + ".vix"
    assert os.path.exists(vix)
    if damage == "missing":
        os.unlink(vix)
    elif damage == "garbage":
        with open(vix, "r+b") as fh:
            fh.write(os.urandom(os.path.getsize(vix)))
    elif damage == "shuffled":  # every offset points at the entry of another version
        with open(vix, "rb") as fh:
            table = fh.read()
        records = [table[i : i + 8] for i in range(0, len(table), 8)]
        with open(vix, "wb") as fh:
            fh.write(b"".join(records[1:] + records[:1]))
    elif damage == "past-end":  # plausible offsets beyond the end of the log
        with open(vix, "wb") as fh:
            fh.write(b"".join((10**9 + i).to_bytes(8, "little") for i in range(8)))
    else:
        os.truncate(vix, 12)
    fresh = Store(file_store.root, dag="d", durable=False)
    assert [e.version for e in fresh.history("k").entries] == list(range(8, 0, -1))
    assert [e.version for e in fresh.history("k", limit=2, before_version=5).entries] == [4, 3]
    assert fresh.get("k", version=3).value == {"i": 3}
    assert fresh.get("k", version=8).found is False
    # The next write repairs the index; everything still reads back.
    fresh.set("k", {"i": 9})
    assert [fresh.get("k", version=v).value for v in range(1, 8)] == [{"i": i} for i in range(1, 8)]
    assert fresh.history("k", limit=1).entries[0].version == 9


# -- get at a version ------------------------------------------------------------------


def test_get_version_reads_each_version(store):
    store.set("k", b'{"n":1.2300,"s":"<&>"}')
    store.set("k", [1, None])
    store.delete("k")
    store.set("k", None)
    v1 = store.get("k", version=1)
    assert (v1.found, v1.version, v1.value) == (True, 1, {"n": 1.23, "s": "<&>"})
    assert v1.value_json == b'{"n":1.2300,"s":"\\u003c\\u0026\\u003e"}'
    assert v1.hash == hexdigest(v1.value_json)
    assert store.get("k", version=2).value == [1, None]
    v3 = store.get("k", version=3)
    assert (v3.found, v3.version, v3.hash, v3.value, v3.value_json) == (False, 0, "", None, None)
    with pytest.raises(NotFoundError):
        store.get("k", version=3, required=True)
    v4 = store.get("k", version=4)
    assert (v4.found, v4.value_json) == (True, b"null")
    assert store.get("k").version == 4


def test_get_version_after_the_key_was_deleted(store):
    store.set("k", "old")
    store.delete("k")
    assert store.get("k").found is False
    assert store.get("k", version=1).value == "old"


@pytest.mark.parametrize("version", [0, -1])
def test_get_version_must_be_positive(store, version):
    store.set("k", 1)
    with pytest.raises(InvalidRefError):
        store.get("k", version=version)


def test_get_version_that_does_not_exist(store):
    store.set("k", 1)
    with pytest.raises(NotFoundError) as exc:
        store.get("k", version=2)
    assert "2" in str(exc.value)
    with pytest.raises(NotFoundError):
        store.get("never", version=1)
    with pytest.raises(NotFoundError):
        store.get("k", version=2, default=5)


@pytest.mark.parametrize("version", [2**61, 10**20])
def test_huge_version_numbers_are_simply_not_found(store, version):
    """A version far past the end is NotFoundError, whatever its size (not OverflowError)."""
    store.set("k", 1)
    with pytest.raises(NotFoundError):
        store.get("k", version=version)
    with pytest.raises(NotFoundError):
        store.rollback("k", to_version=version)
    with pytest.raises(NotFoundError):
        store.diff_versions("k", from_version=1, to_version=version)
    assert [e.version for e in store.history("k", before_version=version).entries] == [1]


# -- rollback ---------------------------------------------------------------------------


def test_rollback_restores_an_old_version_as_a_new_one(store):
    a = store.set("k", {"v": "a"})
    b = store.set("k", {"v": "b"})
    r = store.rollback("k", to_version=1, reason="bad deploy")
    assert (r.scope, r.namespace, r.key) == ("dag", "d", "k")
    assert (r.version, r.hash, r.to_version, r.deleted, r.created) == (3, a.hash, 1, False, False)
    got = store.get("k")
    assert (got.version, got.hash, got.value) == (3, a.hash, {"v": "a"})
    top = store.history("k").entries[0]
    assert (top.operation, top.rollback_from, top.reason, top.hash) == (
        OP_ROLLBACK,
        1,
        "bad deploy",
        a.hash,
    )
    # Rolling back to a rollback, and forward again.
    assert store.rollback("k", to_version=2).hash == b.hash
    assert store.rollback("k", to_version=3).hash == a.hash
    assert store.get("k", version=5).value == {"v": "a"}
    assert store.get("k").version == 5
    assert store.list().entries[0].version == 5


def test_rollback_to_a_compacted_or_lost_version_fails_as_a_get_of_it_does(store):
    # Found by a review: over http:// a rollback to a compacted version said "has no
    # version 1" and one to a version in a damaged range NotFoundError (exit 4),
    # where a local store says "was compacted" and CorruptionError (exit 5).
    store.set("a", 1)
    store.set("a", 2)
    store.compact(keep_last=1)
    with pytest.raises(NotFoundError, match="version 1 was compacted") as read:
        store.get("a", version=1)
    with pytest.raises(NotFoundError) as rolled:
        store.rollback("a", to_version=1)
    assert str(rolled.value) == str(read.value)
    header = b'{"format":"castore-export","version":1}\n'
    lost = (
        b'{"scope":"custom","namespace":"imp","key":"k","version":3,"op":"damaged",'
        b'"damaged_from":1,"time_ns":5,"created_ns":5,"hash":"","audit":{}}\n'
    )
    import_lines(store, lambda: [header, lost])
    with pytest.raises(CorruptionError, match="versions 1-3 lost") as lost_read:
        store.get("k", scope="custom", namespace="imp", version=2)
    with pytest.raises(CorruptionError) as lost_rolled:
        store.rollback("k", scope="custom", namespace="imp", to_version=2)
    assert str(lost_rolled.value) == str(lost_read.value)
    assert [e.version for e in store.history("a").entries] == [2]


def test_rollback_to_a_tombstone_deletes_and_back_recreates(store):
    store.set("k", 1)
    store.delete("k")
    store.set("k", 2)
    created_at = store.list().entries[0].created_at
    r = store.rollback("k", to_version=2)
    assert (r.version, r.hash, r.deleted, r.created) == (4, "", True, False)
    assert store.get("k").found is False
    assert store.list().entries == []
    top = store.history("k").entries[0]
    assert (top.operation, top.rollback_from, top.hash) == (OP_DELETE, 2, "")
    r = store.rollback("k", to_version=1)
    assert (r.version, r.deleted, r.created) == (5, False, True)
    assert store.get("k").value == 1
    # A rollback after a delete starts a new incarnation: created_at is new.
    assert parse_go_time(store.list().entries[0].created_at) > parse_go_time(created_at)


def test_rollback_keeps_created_at_of_a_live_key(store):
    store.set("k", 1)
    created = store.list().entries[0].created_at
    store.set("k", 2)
    store.rollback("k", to_version=1)
    entry = store.list().entries[0]
    assert entry.created_at == created
    assert parse_go_time(entry.updated_at) > parse_go_time(created)


def test_rollback_expected_version(store):
    store.set("k", 1)
    store.set("k", 2)
    with pytest.raises(ConflictError) as exc:
        store.rollback("k", to_version=1, expected_version=1)
    assert (exc.value.expected, exc.value.actual) == (1, 2)
    assert len(store.history("k").entries) == 2
    assert store.rollback("k", to_version=1, expected_version=2).version == 3
    store.delete("k")
    with pytest.raises(ConflictError) as exc:
        store.rollback("k", to_version=2, expected_version=4)
    assert exc.value.actual == 0
    assert store.rollback("k", to_version=2, expected_version=0).version == 5
    assert store.get("k").value == 2


def test_rollback_conflict_is_checked_before_the_target(store):
    store.set("k", 1)
    with pytest.raises(ConflictError):
        store.rollback("k", to_version=99, expected_version=7)


def test_rollback_to_a_missing_version(store):
    store.set("k", 1)
    with pytest.raises(NotFoundError):
        store.rollback("k", to_version=2)
    with pytest.raises(NotFoundError):
        store.rollback("k", to_version=10**9)
    assert [e.version for e in store.history("k").entries] == [1]
    with pytest.raises(InvalidRefError):
        store.rollback("k", to_version=0)
    with pytest.raises(InvalidRefError):
        store.rollback("k", to_version=-3)
    assert len(store.history("k").entries) == 1


def test_rollback_of_a_missing_key_writes_nothing(store):
    with pytest.raises(NotFoundError):
        store.rollback("never", to_version=1)
    assert store.get("never").found is False
    assert store.history("never").entries == []
    assert store.list().entries == []
    # The key can still be created normally afterwards.
    assert store.set("never", 1, expected_version=0).version == 1


def test_rollback_copies_no_blob(file_store):
    big = {"payload": random_text(300_000)}
    first = file_store.set("k", big)
    file_store.set("k", {"small": True})
    path = log_of(file_store, "k")
    size_before = os.path.getsize(path)
    blobs_before = blob_frames(path)
    r = file_store.rollback("k", to_version=1)
    assert r.hash == first.hash
    growth = os.path.getsize(path) - size_before
    assert growth < 4096, growth
    assert blob_frames(path) == blobs_before
    fresh = Store(file_store.root, dag="d", durable=False)
    assert fresh.get("k").value == big
    versions = read_versions(file_store.root, path)
    assert versions[-1].entry.blob == versions[0].entry.blob
    assert versions[-1].value == versions[0].value


def test_rollback_to_a_value_stored_in_another_keys_log(file_store):
    big = {"payload": random_text(200_000, seed=3)}
    file_store.set("a", big)
    file_store.set("b", big)  # deduplicated against a's blob
    file_store.set("b", 0)
    path = log_of(file_store, "b")
    size_before = os.path.getsize(path)
    r = file_store.rollback("b", to_version=1)
    assert os.path.getsize(path) - size_before < 4096
    assert r.hash == hexdigest(file_store.get("a").value_json or b"")
    assert Store(file_store.root, dag="d", durable=False).get("b").value == big


def test_rollback_to_a_big_value_another_key_shares(store):
    """On every backend: a rollback to a large (compressed) value shared by two keys."""
    big = {"payload": random_text(200_000, seed=5), "text": "lorem ipsum " * 10_000}
    first = store.set("a", big)
    assert store.set("b", big).hash == first.hash
    store.set("b", 0)
    store.delete("a")
    r = store.rollback("b", to_version=1)
    assert (r.version, r.hash, r.created) == (3, first.hash, False)
    fresh = Store(opened_at(store), dag="d", durable=False)
    got = fresh.get("b")
    assert (got.version, got.hash, got.value) == (3, first.hash, big)
    assert fresh.get("a", version=1).value == big
    assert fresh.rollback("a", to_version=1).created is True
    assert fresh.get("a").value == big
    assert fresh.check().ok


def test_concurrent_rollbacks_with_expected_version_let_one_win(store_location):
    root = store_location
    Store(root, dag="d", durable=False).set("k", 1)
    Store(root, dag="d", durable=False).set("k", 2)
    workers = 8
    barrier = threading.Barrier(workers)
    outcomes: list[object] = []
    lock = threading.Lock()

    def work() -> None:
        s = Store(root, dag="d", durable=False)  # one handle per thread
        barrier.wait()
        try:
            out: object = s.rollback("k", to_version=1, expected_version=2).version
        except ConflictError as exc:
            out = ("conflict", exc.actual)
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes, key=str) == sorted([3] + [("conflict", 3)] * (workers - 1), key=str)
    assert [e.version for e in Store(root, dag="d").history("k").entries] == [3, 2, 1]


# -- version diffs ---------------------------------------------------------------------


def test_diff_versions_is_a_json_patch_from_a_to_b(store):
    a = store.set("k", {"a": 1, "b": [1, 2], "gone": True}).hash
    b = store.set("k", {"a": 2, "b": [1, 3], "c": "<x>"}).hash
    d = store.diff_versions("k", from_version=1, to_version=2)
    assert (d.scope, d.namespace, d.key) == ("dag", "d", "k")
    assert (d.from_version, d.to_version, d.from_hash, d.to_hash) == (1, 2, a, b)
    old, new = store.get("k", version=1).value, store.get("k", version=2).value
    assert jsonpatch.apply_patch(old, d.patch) == new
    assert {op["path"] for op in d.patch} == {"/a", "/b/1", "/c", "/gone"}
    back = store.diff_versions("k", from_version=2, to_version=1)
    assert jsonpatch.apply_patch(new, back.patch) == old
    assert store.diff_versions("k", from_version=1, to_version=1).patch == []


def test_diff_versions_defaults_to_the_newest_version(store):
    store.set("k", [1])
    store.set("k", [1, 2])
    store.set("k", [2])
    d = store.diff_versions("k", from_version=1)
    assert d.to_version == 3
    assert jsonpatch.apply_patch([1], d.patch) == [2]
    store.delete("k")
    d = store.diff_versions("k", from_version=1)
    assert (d.to_version, d.to_hash) == (4, "")
    assert jsonpatch.apply_patch([1], d.patch) is None


def test_diff_versions_compares_a_tombstone_as_null(store):
    store.set("k", {"x": 1})
    store.delete("k")
    store.set("k", {"x": 2})
    d = store.diff_versions("k", from_version=2, to_version=3)
    assert d.from_hash == ""
    assert jsonpatch.apply_patch(None, d.patch) == {"x": 2}
    d = store.diff_versions("k", from_version=1, to_version=2)
    assert jsonpatch.apply_patch({"x": 1}, d.patch) is None


def test_diff_versions_errors(store):
    with pytest.raises(NotFoundError):
        store.diff_versions("never", from_version=1)
    store.set("k", 1)
    with pytest.raises(NotFoundError):
        store.diff_versions("k", from_version=2)
    with pytest.raises(NotFoundError):
        store.diff_versions("k", from_version=1, to_version=2)
    with pytest.raises(InvalidRefError):
        store.diff_versions("k", from_version=0)
    with pytest.raises(InvalidRefError):
        store.diff_versions("k", from_version=1, to_version=-1)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=20,
)


def test_diff_versions_patch_always_applies(store):
    keys = (f"k{n}" for n in itertools.count())  # a fresh key per example, one store

    @given(old=json_values, new=json_values)
    def check(old, new):
        key = next(keys)
        store.set(key, old)
        store.set(key, new)
        a, b = store.get(key, version=1).value_json, store.get(key, version=2).value_json
        patch = store.diff_versions(key, from_version=1, to_version=2).patch
        # Compare as the stored bytes: Python's == would take 1 for True, 0 for -0.
        assert normalize(jsonpatch.apply_patch(decode_literal(a), patch)) == b

    check()


# JSON texts whose numbers are written in the forms normalization keeps as they are
# (``1.50``, ``1e2``, ``-0``, ``1e400``, long fractions): two of them that differ only
# there are two values, with two hashes.
NUMBER_FORMS = ["1", "1.0", "1.5", "1.50", "1e2", "100", "1E2", "-0", "0", "-0.0", "1e400"]
NUMBER_FORMS += ["1e401", "0.1", "0.1000000000000000000001", "1234567890123456789012345"]
number_texts = st.sampled_from([*NUMBER_FORMS, "true", "null"])
json_texts = st.recursive(
    number_texts,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
        | st.dictionaries(st.sampled_from("abc"), inner, max_size=3).map(
            lambda members: "{" + ",".join(f'"{k}":{v}' for k, v in members.items()) + "}"
        )
    ),
    max_leaves=8,
)


def test_a_version_diff_shows_every_change_of_a_number_literal(store):
    # Found by a review: 1.50 -> 1.5 (and 0.1000000000000000000001 -> 0.1, -0 -> 0)
    # gave an empty patch though the hashes differ, and a diff showed 1e400 as null.
    keys = (f"n{n}" for n in itertools.count())

    @given(old=json_texts, new=json_texts)
    def check(old, new):
        key = next(keys)
        first, second = store.set(key, old.encode()), store.set(key, new.encode())
        a = store.get(key, version=1).value_json
        b = store.get(key, version=2).value_json
        diff = store.diff_versions(key, from_version=1, to_version=2)
        assert (diff.patch == []) == (first.hash == second.hash), (old, new, diff.patch)
        applied = normalize(jsonpatch.apply_patch(decode_literal(a), diff.patch))
        assert applied == b, (old, new, diff.patch)
        shown = decode_literal(diff.to_json())["patch"]  # the line's bytes, as the CLI writes them
        assert normalize(jsonpatch.apply_patch(decode_literal(a), shown)) == b, diff.to_json()

    check()


def test_a_history_limit_past_a_bigint_is_every_version(store_location):
    store = Store(store_location, dag="d")
    for i in range(3):
        store.set("k", i)
    page = store.history("k", limit=2**63)
    assert [e.version for e in page.entries] == [3, 2, 1]


def test_rollback_and_an_unchanged_patch_store_no_second_copy(store):
    """On every backend: found by a review, a rollback or a no-op patch through a server
    wrote a second copy of a small value (gc's to reclaim) where a local store wrote none."""
    store.set("k", {"big": "x" * 200})
    store.set("k", 2)
    before = store.stats().total
    assert store.rollback("k", to_version=1).version == 3
    assert store.patch("k", []).version == 4
    after = store.stats().total  # PostgreSQL keeps a small value in each version's row
    assert (after.versions, after.reclaimable_bytes) == (before.versions + 2, 0)


def test_a_page_ending_at_the_oldest_kept_version_names_no_next_page(store):
    # Found by a review: after compaction kept versions 4 and 5, a page of 2 gave
    # next_before_version 4, and that page was empty.
    for n in range(5):
        store.set("k", n)
    store.compact(keep_last=2)
    page = store.history("k", limit=2)
    assert ([e.version for e in page.entries], page.next_before_version) == ([5, 4], 0)
    page = store.history("k", limit=1)
    assert ([e.version for e in page.entries], page.next_before_version) == ([5], 5)
    page = store.history("k", limit=1, before_version=5)
    assert ([e.version for e in page.entries], page.next_before_version) == ([4], 0)
    assert store.history("k", limit=3).next_before_version == 0
