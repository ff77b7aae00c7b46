"""Behaviour of Store: the backend-independent contract, run once per backend.

The store comes from the ``store_location`` fixture (tests/conftest.py), so a
new backend runs this module by adding itself there; nothing here looks at
how a backend stores anything (that is tests/unit/test_file_backend.py).
"""

import gc
import os
import socket
import warnings

import pytest

from castore import (
    CastoreError,
    ConflictError,
    InvalidRefError,
    InvalidValueError,
    NotFoundError,
    Store,
    StoreUnavailableError,
    ValueTooLargeError,
)
from castore.backends import upgrade
from castore.records import Audit

# The behaviour suite runs on a server over PostgreSQL too (tests/conftest.py).
pytestmark = pytest.mark.remote_postgresql

HASH_123 = "c475a5436a1e85bfcf9edbcefb55dd6389d937e60d8e8ba17fb5791e61a5c689"
HASH_456 = "b4b805a36ca1d984f359a9f8f73c69cf194d31ae14a0538150cb52f0479acfc5"


@pytest.fixture
def store(store_location):
    s = Store(store_location, dag="daily-agent", durable=False)
    yield s
    s.close()


def test_dagu_store_contract(store):
    r = store.set("cursor", {"last_id": 123})
    assert (r.version, r.hash, r.created) == (1, HASH_123, True)
    g = store.get("cursor")
    assert (g.found, g.version, g.hash, g.value) == (True, 1, HASH_123, {"last_id": 123})
    assert g.value_json == b'{"last_id":123}'
    r = store.set("cursor", {"last_id": 456}, expected_version=1)
    assert (r.version, r.hash, r.created) == (2, HASH_456, False)
    with pytest.raises(ConflictError) as exc:
        store.set("cursor", 2, expected_version=99)
    assert (exc.value.expected, exc.value.actual) == (99, 2)
    assert "99" in str(exc.value)
    assert "2" in str(exc.value)


def test_create_only(store):
    assert store.set("k", "first", create_only=True).version == 1
    with pytest.raises(ConflictError) as exc:
        store.set("k", "second", create_only=True)
    assert exc.value.actual == 1
    with pytest.raises(ConflictError):
        store.set("missing", 1, create_only=True, expected_version=5)


def test_expected_version_zero_means_absent(store):
    assert store.set("k", 1, expected_version=0).version == 1
    with pytest.raises(ConflictError):
        store.set("k", 2, expected_version=0)
    with pytest.raises(ConflictError):
        store.set("other", 1, expected_version=-1)


def test_identical_value_still_makes_a_version(store):
    a = store.set("k", [1, 2])
    b = store.set("k", [1, 2])
    assert (b.version, b.hash, b.created) == (2, a.hash, False)


def test_versions_never_repeat_after_delete(store):
    store.set("k", 1)
    assert store.delete("k").deleted is True
    assert store.delete("k").deleted is False
    assert store.get("k").found is False
    with pytest.raises(ConflictError) as exc:
        store.set("k", 2, expected_version=1)  # stale version from before the delete
    assert exc.value.actual == 0
    r = store.set("k", 2, expected_version=0)
    assert (r.version, r.created) == (3, True)
    assert [(e.version, e.operation) for e in store.history("k").entries] == [
        (3, "set"),
        (2, "delete"),
        (1, "set"),
    ]


def test_delete_of_never_set_key_writes_nothing(store):
    assert store.delete("ghost").deleted is False
    assert store.history("ghost").entries == []
    assert store.set("ghost", 1).version == 1


def test_get_default_and_required(store):
    g = store.get("nope", default={"b": 1, "a": [1.0]})
    assert (g.found, g.value, g.value_json) == (False, {"a": [1], "b": 1}, b'{"a":[1],"b":1}')
    assert store.get("nope").value_json is None
    assert store.get("nope", default=None).value_json == b"null"
    with pytest.raises(NotFoundError):
        store.get("nope", required=True, default=1)


def test_bytes_are_json_text_and_keep_number_literals(store):
    store.set("n", b'{"id":9007199254740993,"decimal":1.2300}')
    g = store.get("n")
    assert g.value_json == b'{"decimal":1.2300,"id":9007199254740993}'
    assert g.hash == "be073068aa3b3ebf4a125582b47b14d7c999e1c5e06c770be035e5d9fb40c0a7"
    store.set("p", {"x": 1.0, "y": "<a&b>"})
    assert store.get("p").value_json == b'{"x":1,"y":"\\u003ca\\u0026b\\u003e"}'


def test_invalid_values_store_nothing(store):
    store.set("k", 1)
    for bad in (b"{", b"1 2", b"", b"NaN"):
        with pytest.raises(InvalidValueError):
            store.set("k", bad)
    with pytest.raises(ValueTooLargeError):
        store.set("k", "<" * 174_763)
    with pytest.raises(InvalidValueError):
        store.set("k", {1: "non-string key"})
    assert store.get("k").version == 1


def test_invalid_refs(store):
    for key in ("../bad", "/a", "a/", "a//b", "a\\b", "  ", "a/./b"):
        with pytest.raises(InvalidRefError):
            store.set(key, 1)
    with pytest.raises(InvalidRefError):
        store.get("k", scope="custom")
    with pytest.raises(InvalidRefError):
        store.get("k", scope="Dag")
    with pytest.raises(InvalidRefError):
        store.list("a//")
    with pytest.raises(InvalidRefError):
        store.list(limit=-1)
    assert store.list().entries == []


def test_scopes_resolve_namespaces(store_location):
    s = Store(store_location, dag="child", root_dag="parent", durable=False)
    assert s.set("k", 1).namespace == "child"
    assert s.set("k", 1, scope="root_dag").namespace == "parent"
    assert s.set("k", 1, scope="global").namespace == "_"
    assert s.set("k", 1, scope="custom", namespace="shared").namespace == "shared"
    assert s.get("k", scope="dag", namespace="parent").found is False
    assert s.get("k", scope="root_dag").version == 1
    assert s.get("k", scope="custom", namespace="_").found is False  # scopes are separate
    assert Store(store_location, dag="only", durable=False).ref("k", "root_dag").namespace == "only"


def test_dag_name_from_environment(store_location, monkeypatch):
    monkeypatch.setenv("DAG_NAME", "from-env")
    monkeypatch.setenv("DAG_RUN_ID", "run-7")
    monkeypatch.setenv("DAG_RUN_STEP_NAME", "save")
    s = Store(store_location, durable=False)
    assert s.set("k", 1).namespace == "from-env"
    entry = s.history("k").entries[0]
    assert (entry.dag_name, entry.run_id, entry.step_name, entry.pid) == (
        "from-env",
        "run-7",
        "save",
        os.getpid(),
    )


def test_diff_semantics(store):
    d = store.diff("snap", {"n": 1}, update=False)
    assert (d.changed, d.found_previous, d.version, d.hash, d.previous_json) == (
        True,
        False,
        0,
        "",
        None,
    )
    assert store.get("snap").found is False
    d = store.diff("snap", {"n": 1})
    assert (d.changed, d.found_previous, d.version, d.previous_version) == (True, False, 1, 0)
    first_hash = d.hash
    d = store.diff("snap", {"n": 1})
    assert (d.changed, d.version, d.previous_version, d.hash) == (False, 1, 1, first_hash)
    assert d.previous == {"n": 1}
    d = store.diff("snap", {"n": 2}, update=False)
    assert (d.changed, d.version, d.hash, d.current) == (True, 1, first_hash, {"n": 2})
    d = store.diff("snap", {"n": 2})
    assert (d.changed, d.previous_version, d.version, d.previous) == (True, 1, 2, {"n": 1})
    with pytest.raises(ConflictError):
        store.diff("snap", {"n": 2}, expected_version=1)  # checked before "unchanged"
    with pytest.raises(ConflictError):
        store.diff("fresh", 1, expected_version=3)
    store.set("nul", None)
    d = store.diff("nul", 1)
    assert (d.previous_json, d.previous) == (b"null", None)


def test_list_order_prefix_limit_values(store):
    for key in ("b", "ab", "a/b", "a", "cursors/db", "cursors/api", "tokens/api", "curb"):
        store.set(key, {"k": key})
    store.delete("ab")
    keys = [e.key for e in store.list().entries]
    assert keys == ["a", "a/b", "b", "curb", "cursors/api", "cursors/db", "tokens/api"]
    assert [e.key for e in store.list("cursors/").entries] == ["cursors/api", "cursors/db"]
    assert [e.key for e in store.list("cur").entries] == ["curb", "cursors/api", "cursors/db"]
    assert [e.key for e in store.list("a", limit=1).entries] == ["a"]
    listed = store.list("cursors/", include_values=True).entries
    assert [e.value for e in listed] == [{"k": "cursors/api"}, {"k": "cursors/db"}]
    entry = store.list("tokens/").entries[0]
    assert entry.created_at.endswith("Z")
    assert entry.updated_at >= entry.created_at
    assert store.list("cursors/").entries[0].value_json is None


def test_created_at_survives_updates_and_resets_after_delete(store):
    store.set("k", 1)
    created = store.list().entries[0].created_at
    store.set("k", 2)
    assert store.list().entries[0].created_at == created
    store.delete("k")
    store.set("k", 3)
    assert store.list().entries[0].created_at > created


def test_long_and_awkward_names(store):
    long_key = "k" * 1024 + "/é" * 100
    long_ns = "n" * 1100
    assert store.set(long_key, 1, scope="custom", namespace=long_ns).version == 1
    assert store.get(long_key, scope="custom", namespace=long_ns).value == 1
    for key in ("Cursor", "cursor", "CON", "a:b<c>|d?*", "nul\x00byte"):
        store.set(key, key)
    for key in ("Cursor", "cursor", "CON", "a:b<c>|d?*", "nul\x00byte"):
        assert store.get(key).value == key
    with pytest.raises(InvalidRefError, match="4096"):
        store.set("x" * 4097, 1)


def test_second_handle_sees_writes_immediately(store_location):
    a = Store(store_location, dag="d", durable=False)
    b = Store(store_location, dag="d", durable=False)
    a.set("k", 1)
    assert b.get("k").value == 1
    a.set("k", 2)
    assert b.get("k").value == 2
    b.delete("k")
    assert a.get("k").found is False
    a.set("new", 1)
    assert [e.key for e in b.list().entries] == ["new"]


def test_a_handle_dropped_without_close_leaves_nothing_open(store_location):
    # A database connection, a remote store's keep-alive connections: closed when the
    # handle is collected, never an "unclosed socket" ResourceWarning at some later test.
    store = Store(store_location, dag="d", durable=False)
    store.set("k", 1)
    assert store.get("k").value == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del store
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize("location", ["http://c:7070", "https://c", "http://a:1,https://b:2"])
def test_a_coordinator_url_opens_the_remote_backend_and_touches_nothing(
    location, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    store = Store(location, dag="d")  # opening connects to nothing
    assert repr(store).endswith("backend='remote', dag='d')")
    with pytest.raises(CastoreError, match="upgrade the server's store on the server"):
        upgrade(location)
    assert os.listdir(tmp_path) == []  # nothing was created for it


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("http://a:1,http://A:1", "coordinator a:1 is listed twice"),
        ("http://127.0.0.1:7,http://localhost:7", "127.0.0.1:7 and localhost:7 name the same"),
        ("http://localhost:7,http://a:7,http://[::1]:7", "localhost:7 and \\[::1\\]:7 name"),
        ("http://u:pw@a:1", "must not carry a user or password: give the token in"),
        ("http://a:1/path", "no path"),
        ("http://:80", "use http://HOST:PORT"),
        ("http://a:99999", "invalid coordinator URL"),
        ("http://a:0", "invalid coordinator URL 'http://a:0': port 0"),  # was taken as port 80
    ],
)
def test_a_bad_coordinator_list_is_refused_naming_the_problem(location, problem):
    with pytest.raises(InvalidValueError, match=problem) as info:
        Store(location, dag="d")
    assert "pw" not in str(info.value)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_credentials_in_a_location_never_reach_an_error(scheme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = closed_port()
    location = (
        f"{scheme}://alice:s3cret@127.0.0.1:{port}/state?password=hunter2&sslmode=disable"
        "&connect_timeout=5"
    )
    store = Store(location, dag="d")  # connects on first use
    for call in (lambda: store.get("k"), lambda: store.set("k", 1), lambda: upgrade(location)):
        with pytest.raises(StoreUnavailableError) as caught:
            call()
        for shown in (str(caught.value), repr(caught.value), repr(store)):
            for secret in ("s3cret", "hunter2", "alice"):
                assert secret not in shown
            assert f"127.0.0.1:{port}/state" in shown
        assert "cannot connect" in str(caught.value)
    assert os.listdir(tmp_path) == []  # nothing was created for it


def test_a_bad_schema_parameter_is_refused_before_connecting():
    with pytest.raises(InvalidValueError, match="invalid schema 'Bad-Name'"):
        Store("postgresql://127.0.0.1:1/db?schema=Bad-Name", dag="d")


def test_a_fresh_location_reads_as_an_empty_store_until_a_write(store_location):
    s = Store(store_location, dag="d")
    assert s.get("k").found is False
    assert s.list().entries == []
    assert s.history("k").entries == []
    assert s.check().ok
    assert s.stats().total.keys == 0
    with pytest.raises(ConflictError):
        s.set("k", 1, expected_version=1)
    assert s.set("k", 1).version == 1
    assert Store(store_location, dag="d").get("k").value == 1


def test_the_mode_is_private_or_group(store_location, monkeypatch):
    with pytest.raises(ValueError, match="invalid mode 'world': use private or group"):
        Store(store_location, dag="d", mode="world")
    monkeypatch.setenv("CASTORE_MODE", "shared")
    with pytest.raises(ValueError, match=r"invalid mode 'shared' \(\$CASTORE_MODE\)"):
        Store(store_location, dag="d")
    assert Store(store_location, dag="d", mode="group").set("k", 1).version == 1
    monkeypatch.setenv("CASTORE_MODE", "private")
    assert Store(store_location, dag="d").get("k").value == 1


def test_for_caller_writes_as_the_caller_and_shares_the_storage(store_location, monkeypatch):
    monkeypatch.setenv("DAG_RUN_ID", "the-servers-run")  # a server's own environment: not used
    monkeypatch.setenv("CASTORE_ACTOR", "the-server")
    server = Store(store_location, dag="server-dag")
    caller = Audit(
        dag_name="daily",
        run_id="r7",
        step_name="s",
        attempt="2",
        user="bob",
        host="worker-1",
        pid=4242,
        actor="worker",
    )
    worker = server.for_caller(caller, dag="daily")
    assert worker.set("k", 1).namespace == "daily"  # the caller's DAG names the namespace
    worker.delete("k", reason="done")
    entries = server.history("k", namespace="daily").entries
    assert [(e.operation, e.reason) for e in entries] == [("delete", "done"), ("set", "")]
    for e in entries:
        assert (e.dag_name, e.run_id, e.step_name, e.attempt) == ("daily", "r7", "s", "2")
        assert (e.user, e.host, e.pid, e.actor) == ("bob", "worker-1", 4242, "worker")
    assert server.get("k", namespace="daily").found is False
    assert server.set("mine", 1).namespace == "server-dag"  # the original handle is unchanged
    assert server.history("mine").entries[0].run_id == "the-servers-run"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"grace_seconds": -1}, "grace_seconds must be from 0 to 9223372036 seconds (got -1)"),
        (
            {"grace_seconds": float("inf")},
            "grace_seconds must be from 0 to 9223372036 seconds (got inf)",
        ),
        (
            {"grace_seconds": float("nan")},
            "grace_seconds must be from 0 to 9223372036 seconds (got nan)",
        ),
        ({"keep_within_seconds": float("nan")}, "keep_within_seconds must be from 0 to 9223372036"),
        ({"keep_within_seconds": float("inf")}, "keep_within_seconds must be from 0 to 9223372036"),
        ({"keep_last": 2**70}, "keep_last must be from 1 to 9223372036854775807"),
    ],
)
def test_maintenance_arguments_out_of_range_fail_alike_on_every_backend(store, call, message):
    # Found by a review: locally gc(grace_seconds=nan) ran and compact(nan) raised a bare
    # ValueError; over http:// they were InvalidValueError, a 500, or a bare OverflowError.
    store.set("k", 1)
    store.set("k", 2)
    run = store.gc if "grace_seconds" in call else store.compact
    with pytest.raises(InvalidValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(**call)
    assert [e.version for e in store.history("k").entries] == [2, 1]


def test_a_grace_given_as_an_integer_reports_the_same_on_every_backend(store):
    # Found by a review: gc(grace_seconds=5) reported graceSeconds 5 locally and 5.0 over
    # http:// and from the CLI.
    store.set("k", 1)
    for grace in (5, 5.0):
        report = store.gc(grace_seconds=grace, dry_run=True)
        assert type(report.grace_seconds) is float
        assert b'"graceSeconds":5.0,' in report.to_json()


def test_stats_counts_as_reclaimable_what_gc_would_free(store):
    # Found by a review: stats said 0 reclaimable bytes where gc freed 4 blobs (a log's
    # second copy of a value), and 7,134 where gc freed 10,839 after a compaction.
    for n in range(6):
        store.set("k", {"i": n % 2})
    for n in range(30):
        store.set(f"k{n % 3}", {"i": n, "pad": "x" * 300})
    for _ in range(2):
        freed = store.gc(grace_seconds=0, dry_run=True)
        assert store.stats().total.reclaimable_bytes == freed.bytes_freed
        store.compact(keep_last=2)
    store.gc(grace_seconds=0)
    assert store.stats().total.reclaimable_bytes == 0
    assert store.get("k").value == {"i": 1}
