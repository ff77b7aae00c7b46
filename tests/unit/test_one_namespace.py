"""A command given one namespace never lists the scope's other namespaces.

``audit``, ``export`` and ``compact`` with ``namespace`` read that namespace only: a
store of many namespaces made each of them read every namespace's ``KEYS`` header (and,
for ``export``, every ``GRAVES``) to find the one asked for. The handle's listing of
namespaces is made to fail here; the answers must equal the whole store's answers
filtered to the namespace, taken before.
"""

from __future__ import annotations

from typing import Any

from castore import Store, audit_records, export_lines

NAMESPACES = ("a", "b", "c")


def _fill(location: str) -> Store:
    store = Store(location)
    for ns in NAMESPACES:
        for n in range(3):
            store.set("x", {"n": n}, namespace=ns)
        store.set("gone", ns, namespace=ns)
        store.delete("gone", namespace=ns)
    store.compact(keep_last=3, keep_within_seconds=0, namespace="c")  # "gone" removed in c
    return store


def _blocked(*_: Any, **__: Any) -> Any:
    raise AssertionError("listed every namespace of the scope")


def test_audit_export_and_compact_of_one_namespace_read_only_it(store_location, monkeypatch):
    store = _fill(store_location)
    audited = {ns: [r for r in audit_records(store) if r.namespace == ns] for ns in NAMESPACES}
    lines = list(export_lines(store))
    exported = {
        ns: [line for line in lines if f'"namespace":"{ns}"'.encode() in line] for ns in NAMESPACES
    }
    assert all(audited.values())
    assert all(exported.values())
    removed = store.backend.removed

    def removed_of_one(scope: str, namespace: str | None = None) -> Any:
        return _blocked() if namespace is None else removed(scope, namespace)

    monkeypatch.setattr(store.backend, "namespaces", _blocked)
    monkeypatch.setattr(store.backend, "removed", removed_of_one)
    for ns in NAMESPACES:
        assert list(audit_records(store, scope="dag", namespace=ns)) == audited[ns]
        assert list(audit_records(store, namespace=ns)) == audited[ns]
        got = list(export_lines(store, scope="dag", namespace=ns))
        assert got[1:-1] == exported[ns]
    assert list(audit_records(store, namespace="none")) == []
    assert len(list(export_lines(store, namespace="none"))) == 2  # the header and the end
    report = store.compact(keep_last=1, keep_within_seconds=0, namespace="b")
    assert (report.versions_dropped, report.keys_removed) == (4, 1)  # x: 2; gone: both
    monkeypatch.undo()
    assert [e.version for e in store.history("x", namespace="a").entries] == [3, 2, 1]
    assert [e.version for e in store.history("x", namespace="b").entries] == [3]
    assert not store.get("gone", namespace="b").found
    assert [r for r in audit_records(store) if r.namespace == "a"] == audited["a"]
