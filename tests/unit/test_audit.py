"""The cross-key audit query (castore/audit.py).

The store comes from the ``store_location`` fixture (tests/conftest.py), so every
backend runs these.
"""

import importlib.util
import os
import types

import msgspec
import pytest

from castore import CorruptionError, InvalidRefError, InvalidValueError, Store
from castore.audit import AuditRecord, audit
from castore.file import writer as file_writer
from castore.results import rfc3339

Ident = tuple[str, str, str, int, str, str]


def handle(root: str, run_id: str = "", actor: str | None = None) -> Store:
    return Store(root, dag="d", durable=False, run_id=run_id, actor=actor, step="st")


@pytest.fixture
def populated(store_location):
    """Writes across scopes, namespaces and run ids; returns the root and the writes in order."""
    root = store_location
    r1, r2 = handle(root, "run-1", actor="alice"), handle(root, "run-2")
    writes: list[Ident] = []  # (scope, namespace, key, version, operation, run id)

    def log(scope: str, ns: str, key: str, version: int, op: str, run: str) -> None:
        writes.append((scope, ns, key, version, op, run))

    r1.set("a", 1)
    log("dag", "d", "a", 1, "set", "run-1")
    r2.set("b", 2, scope="global")
    log("global", "_", "b", 1, "set", "run-2")
    r1.set("c", 3, scope="custom", namespace="n1")
    log("custom", "n1", "c", 1, "set", "run-1")
    r2.set("c", 4, scope="custom", namespace="n2")
    log("custom", "n2", "c", 1, "set", "run-2")
    r1.set("a", 5, reason="why")
    log("dag", "d", "a", 2, "set", "run-1")
    r2.delete("a")
    log("dag", "d", "a", 3, "delete", "run-2")
    r1.rollback("a", to_version=2)
    log("dag", "d", "a", 4, "rollback", "run-1")
    r2.set("x", 6, scope="root_dag", namespace="d")
    log("root_dag", "d", "x", 1, "set", "run-2")
    r1.set("a", 7, scope="custom", namespace="d")
    log("custom", "d", "a", 1, "set", "run-1")
    return root, writes


def ident(record: AuditRecord) -> Ident:
    return (
        record.scope,
        record.namespace,
        record.key,
        record.version,
        record.operation,
        record.run_id,
    )


def test_audit_lists_every_write_newest_first(populated):
    root, writes = populated
    records = list(audit(handle(root)))
    assert [ident(r) for r in records] == writes[::-1]
    times = [r.time_ns for r in records]
    assert times == sorted(times, reverse=True)
    for r in records:
        assert r.time == rfc3339(r.time_ns)
        assert r.pid == os.getpid()
        assert r.step_name == "st"
    by = {(r.scope, r.namespace, r.key, r.version): r for r in records}
    assert by["dag", "d", "a", 2].reason == "why"
    assert by["dag", "d", "a", 2].actor == "alice"
    assert by["dag", "d", "a", 3].hash == ""
    assert by["dag", "d", "a", 4].rollback_from == 2
    assert by["dag", "d", "a", 4].hash == by["dag", "d", "a", 2].hash != ""


def test_audit_record_json_omits_empty_fields(populated):
    root, _ = populated
    records = list(audit(handle(root), scope="dag"))
    delete = next(r for r in records if r.operation == "delete")
    line = msgspec.json.decode(msgspec.json.encode(delete))
    assert list(line)[:7] == ["scope", "namespace", "key", "version", "operation", "time", "timeNs"]
    assert "hash" not in line
    assert "rollbackFrom" not in line
    assert line["runId"] == "run-2"
    assert line["stepName"] == "st"


def test_audit_is_lazy(populated):
    root, _ = populated
    it = audit(handle(root))
    assert isinstance(it, types.GeneratorType)
    first = next(it)
    assert isinstance(first, AuditRecord)
    assert (first.scope, first.key) == ("custom", "a")


@pytest.mark.parametrize(
    ("filters", "pick"),
    [
        ({"scope": "dag"}, lambda w: w[0] == "dag"),
        ({"scope": "custom"}, lambda w: w[0] == "custom"),
        ({"scope": "global"}, lambda w: w[0] == "global"),
        ({"namespace": "d"}, lambda w: w[1] == "d"),
        ({"namespace": "n2"}, lambda w: w[1] == "n2"),
        ({"scope": "custom", "namespace": "d"}, lambda w: w[:2] == ("custom", "d")),
        ({"run_id": "run-1"}, lambda w: w[5] == "run-1"),
        ({"run_id": "nobody"}, lambda w: False),
        ({"scope": "dag", "run_id": "run-2"}, lambda w: w[0] == "dag" and w[5] == "run-2"),
        ({"namespace": "d", "run_id": "run-1"}, lambda w: w[1] == "d" and w[5] == "run-1"),
        ({"namespace": "nothing"}, lambda w: False),
    ],
)
def test_audit_filters(populated, filters, pick):
    root, writes = populated
    got = [ident(r) for r in audit(handle(root), **filters)]
    assert got == [w for w in writes[::-1] if pick(w)]


def test_audit_time_bounds_are_inclusive(populated):
    root, _ = populated
    s = handle(root)
    records = list(audit(s))
    times = [r.time_ns for r in records]  # newest first
    assert len(set(times)) == len(times), "writes got equal timestamps"
    middle = times[4]
    since = [ident(r) for r in audit(s, since_ns=middle)]
    assert since == [ident(r) for r in records[:5]]
    until = [ident(r) for r in audit(s, until_ns=middle)]
    assert until == [ident(r) for r in records[4:]]
    both = [ident(r) for r in audit(s, since_ns=times[6], until_ns=times[2])]
    assert both == [ident(r) for r in records[2:7]]
    assert [ident(r) for r in audit(s, since_ns=middle, until_ns=middle)] == [ident(records[4])]
    assert list(audit(s, since_ns=times[0] + 1)) == []
    assert list(audit(s, until_ns=times[-1] - 1)) == []
    assert list(audit(s, since_ns=times[2], until_ns=times[6])) == []
    combined = [ident(r) for r in audit(s, since_ns=times[6], run_id="run-1", scope="dag")]
    assert combined == [ident(r) for r in records[:7] if r.scope == "dag" and r.run_id == "run-1"]
    assert len(combined) == 2


def test_audit_of_an_empty_store(store_location):
    assert list(audit(handle(store_location))) == []


def test_audit_merges_many_keys_with_long_histories(store_location):
    s = handle(store_location)
    order = []
    for i in range(60):
        key = f"k{i % 7}"
        s.set(key, i)
        order.append((key, i))
    got = [(r.key, r.version) for r in audit(s)]
    expected_versions: dict[str, int] = {}
    expected = []
    for key, _ in order:
        expected_versions[key] = expected_versions.get(key, 0) + 1
        expected.append((key, expected_versions[key]))
    assert got == expected[::-1]


def test_audit_rejects_bad_filters(store_location):
    s = handle(store_location)
    with pytest.raises(InvalidRefError):
        list(audit(s, scope="nope"))
    with pytest.raises(InvalidRefError):
        list(audit(s, namespace="a/b"))


@pytest.mark.parametrize("name", ["run_id", "actor", "step"])
def test_audit_refuses_a_text_filter_that_is_not_utf8(store_location, name):
    """Was (the audit review): a filter with a lone surrogate (``--actor`` given bytes that
    are not UTF-8) matched nothing and exited 0, as if that actor had written nothing."""
    s = handle(store_location, "run-1", actor="alice")
    s.set("k", 1)
    with pytest.raises(InvalidValueError, match=f"audit filter {name} .*not valid UTF-8"):
        audit(s, **{name: "al\udcffice"})  # type: ignore[arg-type]  # checked when called
    recorded = {"run_id": "run-1", "actor": "alice", "step": "st"}[name]
    assert [r.key for r in audit(s, **{name: recorded})] == ["k"]  # type: ignore[arg-type]


def test_audit_when_the_wall_clock_steps_back(store_location, monkeypatch):
    """FORMAT.md §3: time_ns never decreases within a ref, so audit stays ordered and complete."""
    clock = iter([300, 200, 100, 50])
    stepping = types.SimpleNamespace(time_ns=lambda: next(clock))
    monkeypatch.setattr(file_writer, "time", stepping)  # the clock each backend stamps with
    if importlib.util.find_spec("psycopg") is not None:
        from castore.postgres import appends as postgres_appends

        monkeypatch.setattr(postgres_appends, "time", stepping)
    s = handle(store_location)
    s.set("a", 1)  # t=300
    s.set("b", 1)  # t=200
    s.set("a", 2)  # the clock says 100: a's version 2 must not be older than its version 1
    s.delete("b")  # the clock says 50
    history = [e.version for e in s.history("a").entries]
    assert history == [2, 1]
    got = [(r.key, r.version, r.time_ns) for r in audit(s)]
    assert sorted((k, v) for k, v, _ in got) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    times = [t for _, _, t in got]
    assert times == sorted(times, reverse=True)
    per_key = {k: [t for kk, _, t in sorted(got) if kk == k] for k in ("a", "b")}
    for key, key_times in per_key.items():
        assert key_times == sorted(key_times), key
    for bound in (0, 150, 250, 300, 301, 1000):
        expect = [(k, v) for k, v, t in got if t >= bound]
        assert [(r.key, r.version) for r in audit(s, since_ns=bound)] == expect, bound
        expect = [(k, v) for k, v, t in got if t <= bound]
        assert [(r.key, r.version) for r in audit(s, until_ns=bound)] == expect, bound


@pytest.mark.parametrize("where", ["actor", "reason", "environment"])
def test_an_audit_field_that_is_not_text_is_refused_and_writes_nothing(
    store_location, monkeypatch, where
):
    """A lone surrogate (bytes that are not UTF-8, from the environment) cannot be recorded."""
    store = Store(store_location, dag="d", actor="al\udcffice" if where == "actor" else None)
    if where == "environment":
        monkeypatch.setenv("DAG_RUN_ID", "run\udcff1")  # os.environ's form of b"run\xff1"
    with pytest.raises(InvalidValueError, match="not valid text") as raised:
        store.set("k", 1, reason="r\ud800" if where == "reason" else "")
    assert ("$DAG_RUN_ID" in str(raised.value)) == (where == "environment")
    monkeypatch.delenv("DAG_RUN_ID", raising=False)
    assert not Store(store_location, dag="d").get("k").found
    assert Store(store_location, dag="d").set("k", 2).version == 1


def test_a_key_whose_newest_versions_were_recorded_lost_is_audited(store_location):
    # Found by a review (thirty-third session): the audit read each key's newest value to
    # start its walk, and a newest entry a repair (or an import) recorded as lost raised:
    # every audit of the store failed (exit 5) for good, while check said ok. Oracle: the
    # same audit of a store with the same writes but the lost record.
    import io

    from castore.transfer import import_lines

    store = Store(store_location, dag="d")
    store.set("a", 1)
    store.set("b", 2)
    before = [ident(r) for r in audit(store)]
    header = b'{"format":"castore-export","version":2}\n'
    line = msgspec.json.encode(
        {
            "scope": "dag",
            "namespace": "d",
            "key": "k",
            "version": 5,
            "op": "damaged",
            "time_ns": 5,
            "damaged_from": 1,
        }
    )
    data = header + line + b'\n{"end":"castore-export","versions":1}\n'
    import_lines(store, lambda: io.BytesIO(data).readlines())
    records = [ident(r) for r in audit(store)]
    assert sorted(records) == sorted([*before, ("dag", "d", "k", 5, "damaged", "")])
    with pytest.raises(CorruptionError, match="versions 1-5 lost"):
        store.get("k")
