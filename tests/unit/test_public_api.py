import sys
import typing

import pytest

import castore
import castore.errors
import castore.reports


def test_all_is_exactly_the_public_names_sorted():
    public = sorted(
        n
        for n in dir(castore)  # classes, and the entry points (functions, some loaded lazily)
        if not n.startswith("_") and (n[0].isupper() or callable(getattr(castore, n)))
    )
    assert castore.__all__ == sorted(castore.__all__)
    assert set(castore.__all__) == set(public)


def test_issue_names_are_exported():
    for name in ("Store", "ConflictError", "NotFoundError", "InvalidRefError", "InvalidValueError"):
        assert name in castore.__all__


def test_every_error_is_a_castore_error():
    for name in castore.errors.__all__:
        assert issubclass(getattr(castore.errors, name), castore.errors.CastoreError)


def test_every_result_type_a_store_method_returns_is_exported():
    inherited = [vars(cls) for cls in reversed(castore.Store.__mro__[:-1])]  # base classes too
    methods = {name: member for members in inherited for name, member in members.items()}
    assert {"update", "patch", "incr"} <= set(methods)
    for name, member in methods.items():
        if name.startswith("_") or not callable(member):
            continue
        returned = typing.get_type_hints(member)["return"]
        if returned is type(None) or isinstance(returned, typing.TypeVar):
            continue
        assert returned.__module__.startswith("castore."), (name, returned)
        assert returned.__name__ in castore.__all__, (
            f"Store.{name} returns {returned.__name__}, which castore does not export"
        )
        assert getattr(castore, returned.__name__) is returned


def test_every_castore_type_a_store_method_takes_is_exported():
    """A caller can build every argument from the stable API (found by a review: ``Audit``)."""
    inherited = [vars(cls) for cls in reversed(castore.Store.__mro__[:-1])]
    methods = {name: member for members in inherited for name, member in members.items()}
    taken = set()
    for name, member in methods.items():
        if name.startswith("_") or not callable(member):
            continue
        for param, hint in typing.get_type_hints(member).items():
            for kind in (hint, *typing.get_args(hint)):
                if isinstance(kind, type) and kind.__module__.startswith("castore."):
                    taken.add((name, param, kind))
    assert any(kind.__name__ == "Audit" for _, _, kind in taken)  # for_caller's caller
    for name, param, kind in taken:
        assert kind.__name__ in castore.__all__, f"Store.{name}({param}=) takes {kind.__name__}"
        assert getattr(castore, kind.__name__) is kind


def test_the_maintenance_reports_and_retention_are_exported():
    for name in castore.reports.__all__:
        if name[0].isupper() and not name.isupper():
            assert name in castore.__all__
            assert getattr(castore, name) is getattr(castore.reports, name)


def test_the_records_of_audit_import_and_import_dagu_convert_as_every_result(tmp_path):
    # Found by a review: README says every result and report has to_json() and to_dict();
    # ImportReport, AuditRecord and DaguImport had neither.
    import json

    store = castore.Store(tmp_path / "a", dag="d")
    store.set("k", {"a": 1})
    record = next(iter(castore.audit_records(store)))
    report = castore.import_lines(
        castore.Store(tmp_path / "b"), lambda: list(castore.export_lines(store))
    )
    dagu = tmp_path / "dagu" / "v1" / "dag" / "x"
    dagu.mkdir(parents=True)
    (dagu / "k.json").write_text("{")
    (outcome,) = castore.import_dagu(castore.Store(tmp_path / "c"), str(tmp_path / "dagu"))
    for item in (record, report, outcome):
        assert item.to_dict() == json.loads(item.to_json())
    assert report.to_dict() == {
        "operation": "import",
        "refs": 1,
        "versions": 1,
        "skippedRefs": [],
        "overwrittenRefs": [],
    }
    assert list(record.to_dict())[:5] == ["scope", "namespace", "key", "version", "operation"]
    assert outcome.to_dict()["status"] == "skipped"


def test_to_dict_decodes_as_get_does_at_any_depth_and_past_float64(tmp_path):
    # Found by a review: to_dict() used msgspec's decoder, which refused 1e400
    # (ValidationError) and recursed past ~1,000 levels (RecursionError).
    import math

    store = castore.Store(tmp_path / "s", dag="d")
    deep: object = 1
    for _ in range(9_990):
        deep = {"a": deep}
    store.set("big", b'{"e": 1e400}')
    store.set("deep", deep)
    big = store.get("big").to_dict()
    assert math.isinf(big["value"]["e"])
    assert big["value"] == store.get("big").value
    same = castore.codec.normalize  # == recurses: compare the normalized bytes
    got = store.get("deep").to_dict()
    assert same(got["value"]) == same(deep)
    listed = store.list(include_values=True).to_dict()
    assert [e["key"] for e in listed["entries"]] == ["big", "deep"]
    assert same(listed["entries"][1]["value"]) == same(deep)
    diff = store.diff("deep", [deep]).to_dict()
    assert same(diff["previous"]) == same(deep)
    assert same(diff["current"]) == same([deep])
    patched = store.patch("big", [{"op": "add", "path": "/f", "value": 1}])
    assert patched.to_dict()["version"] == 2
    assert math.isinf(patched.to_dict()["value"]["e"])
    patched = store.patch("deep", [{"op": "add", "path": "/-", "value": 1}])
    assert same(patched.to_dict()["value"]) == same([deep, 1])


def test_a_misspelled_public_name_is_an_error_for_mypy(tmp_path, monkeypatch):
    # Found by a review: the lazy-import module __getattr__ (returning Any) made mypy
    # accept ``from castore import Stor``; a type checker no longer sees it.
    api = pytest.importorskip("mypy.api")
    import pathlib

    program = tmp_path / "user.py"
    program.write_text("from castore import Stor\nfrom castore import Store, audit_records\n")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    monkeypatch.setenv("MYPYPATH", str(pathlib.Path(castore.__file__).parent.parent))
    options = ["--strict", "--no-incremental", f"--config-file={config}"]
    limit = sys.getrecursionlimit()
    try:
        out, _err, status = api.run([str(program), *options, f"--cache-dir={tmp_path / 'cache'}"])
    finally:  # mypy raises it for good (2**14): other tests count on the usual limit
        sys.setrecursionlimit(limit)
    assert status == 1, out
    assert 'user.py:1: error: Module "castore" has no attribute "Stor"' in out
    assert "user.py:2" not in out
    assert callable(castore.__getattr__)  # the lazy loading is still there at run time
