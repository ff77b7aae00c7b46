# mypy: disable-error-code="arg-type"
"""Arguments of the wrong Python type: a TypeError naming the argument, nothing written.

Found by a review of the library as a new developer uses it: ``reason=5`` was
acknowledged as a version that no read, write, check or export could decode
afterwards; ``on_conflict="skipp"`` overwrote histories; ``version=True`` read
version 1; a key of 5 raised AttributeError. The store comes from the
``store_location`` fixture, so every backend is covered.
"""

import os
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from castore import CorruptionError, InvalidValueError, Store, audit_records, upgrade
from castore.records import Audit
from castore.transfer import export_lines, import_lines


def _text_lines(store: Store) -> Any:
    """The export as ``str`` lines (a file opened in text mode)."""
    return [line.decode() for line in _export(store)]


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
    (
        "diff from None",
        lambda s: s.diff_versions("k", from_version=None),
        "from_version must be an int, not NoneType",
    ),
    (
        "diff to '1'",
        lambda s: s.diff_versions("k", from_version=1, to_version="1"),
        "to_version must be an int, not str",
    ),
    ("list prefix", lambda s: s.list(prefix=None), "prefix must be a str, not NoneType"),
    ("list limit", lambda s: s.list(limit=True), "limit must be an int, not bool"),
    ("keep_last=True", lambda s: s.compact(keep_last=True), "keep_last must be an int or None"),
    ("keep_last=1.5", lambda s: s.compact(keep_last=1.5), "keep_last must be an int or None"),
    ("grace '1'", lambda s: s.gc(grace_seconds="1"), "grace_seconds must be a number, not str"),
    (
        "keep_within '1'",
        lambda s: s.compact(keep_within_seconds="1"),
        "keep_within_seconds must be a number, not str",
    ),
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
    # Found by a second review: these were taken as true (`update="no"` wrote), or raised
    # AttributeError from deep inside, or StoreUnavailableError over http://.
    ("diff update", lambda s: s.diff("k", 7, update="no"), "update must be a bool, not str"),
    ("get required", lambda s: s.get("n", required="x"), "required must be a bool, not str"),
    # Found by a review: checked only when the key was missing (after the hot path).
    ("get required found", lambda s: s.get("k", required="yes"), "required must be a bool, not"),
    ("get required v1", lambda s: s.get("k", version=1, required=1), "required must be a bool"),
    ("get required bad key", lambda s: s.get("", required=None), "required must be a bool, not"),
    ("list values", lambda s: s.list(include_values=1), "include_values must be a bool, not"),
    ("gc dry_run", lambda s: s.gc(dry_run="no"), "dry_run must be a bool, not str"),
    ("compact dry", lambda s: s.compact(keep_last=1, dry_run=0), "dry_run must be a bool, not"),
    ("check repair", lambda s: s.check(repair="yes"), "repair must be a bool, not str"),
    (
        "keep_within_text",
        lambda s: s.compact(keep_last=1, keep_within_text=5),
        "keep_within_text must be a str, not int",
    ),
    ("diff expected", lambda s: s.diff("k", 7, expected_version=True), "expected_version must"),
    (
        "rollback expected",
        lambda s: s.rollback("k", to_version=1, expected_version=3.0),
        "expected_version must be an int or None, not float",
    ),
    ("incr reason", lambda s: s.incr("n", 3, reason=1), "reason must be a str, not int"),
    ("patch reason", lambda s: s.patch("k", [], reason=["x"]), "reason must be a str, not list"),
    ("list namespace", lambda s: s.list(namespace=1), "namespace must be a str or None, not"),
    ("list scope", lambda s: s.list(scope=None), "scope must be a str, not NoneType"),
    ("compact scope", lambda s: s.compact(keep_last=1, scope=["dag"]), "scope must be a str or"),
    ("retries None", lambda s: s.update("k", lambda v: v, retries=None), "retries must be an int"),
    ("retries True", lambda s: s.update("k", lambda v: v, retries=True), "retries must be an int"),
    ("caller dag", lambda s: s.for_caller(Audit(), dag=1).set("k", 9), "dag must be a str, not"),
    ("caller type", lambda s: s.for_caller({}, dag="d").set("k", 9), "caller must be an Audit"),
    (
        "caller pid",
        lambda s: s.for_caller(Audit(pid="1"), dag="d").set("k", 9),
        "caller.pid must be an int, not str",
    ),
    ("durable", lambda s: Store(s.root, durable="no").set("k", 9), "durable must be a bool, not"),
    # Found by a review of the library API: "object of type 'int' has no len()".
    ("mode", lambda s: Store(s.root, mode=1).set("k", 9), "mode must be a str or None, not int"),
    ("upgrade mode", lambda s: upgrade(s.root, mode=["group"]), "mode must be a str or None, not"),
    # Found by a review: internal errors ('NoneType' object is not callable, '<' not supported
    # between int and str, 'list' object is not callable), one raised only while iterating,
    # an InvalidValueError for by="1", or a run_id of 5 that silently matched nothing.
    ("update fn", lambda s: s.update("k", None), "fn must be callable, not NoneType"),
    ("incr by '1'", lambda s: s.incr("n", by="1"), "by must be a number, not str"),
    ("incr by True", lambda s: s.incr("n", by=True), "by must be a number, not bool"),
    ("check progress", lambda s: s.check(progress=5), "progress must be callable or None, not"),
    ("gc progress", lambda s: s.gc(progress="x"), "progress must be callable or None, not str"),
    (
        "compact progress",
        lambda s: s.compact(keep_last=1, progress=1),
        "progress must be callable or None, not int",
    ),
    ("audit since", lambda s: audit_records(s, since_ns="1"), "since_ns must be an int or None"),
    ("audit until", lambda s: audit_records(s, until_ns=1.5), "until_ns must be an int or None"),
    ("audit run_id", lambda s: audit_records(s, run_id=5), "run_id must be a str or None, not"),
    ("audit actor", lambda s: audit_records(s, actor=b"a"), "actor must be a str or None, not"),
    ("audit store", lambda s: audit_records(s.root), "store must be a Store, not str"),
    ("import read", lambda s: import_lines(s, _export(s)), "read must be callable, not list"),
    (
        "import str lines",
        lambda s: import_lines(s, lambda: _text_lines(s)),
        "read() must give lines as bytes, not str (open the file 'rb')",
    ),
    ("import store", lambda s: import_lines(s.root, list), "store must be a Store, not"),
    (
        "import progress",
        lambda s: import_lines(s, list, progress=1),
        "progress must be callable or None",
    ),
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


@pytest.mark.parametrize(
    ("caller", "error"),
    [
        (Audit(pid=-5), "caller.pid -5 is out of range"),
        (Audit(pid=2**70), f"caller.pid {2**70} is out of range"),
        (Audit(actor="\ud800"), "audit field actor is not valid text"),
    ],
)
def test_a_caller_a_write_could_not_record_is_refused(store, caller, error):
    # Found by a review: pid -5 was stored (and its export then refused by import), 2**70
    # raised OverflowError over http://, a lone surrogate UnicodeEncodeError with an empty
    # log left behind on the directory backend.
    before = _export(store)
    with pytest.raises(InvalidValueError) as info:
        store.for_caller(caller, dag="d").set("new", 1)
    assert error in str(info.value)
    assert _export(store) == before
    assert store.check().ok


def test_an_empty_path_is_refused_not_the_default_store(monkeypatch, tmp_path):
    monkeypatch.setenv("CASTORE_DIR", str(tmp_path / "default"))
    with pytest.raises(ValueError, match="path is empty"):
        Store("")
    assert Store(None).root == str(tmp_path / "default")  # None is the default store
    assert not (tmp_path / "default").exists()


def test_a_location_may_be_bytes_or_a_path_like_anywhere_and_never_empty(tmp_path, monkeypatch):
    # Found by a review: Store(b"/x") raised "a bytes-like object is required", and
    # castore.upgrade(pathlib.Path(d)) AttributeError; upgrade("") acted on the current
    # directory.
    import pathlib

    import castore

    where = tmp_path / "s"
    store = Store(os.fsencode(where), dag="d")
    assert store.set("k", 1).version == 1
    assert store.root == str(where)
    assert Store(where, dag="d").get("k").value == 1
    assert castore.upgrade(pathlib.Path(where)).to_version >= 1
    assert castore.upgrade(os.fsencode(where)).to_version >= 1
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(ValueError, match="location is empty"):
        castore.upgrade("")
    assert list(cwd.iterdir()) == []
    with pytest.raises(TypeError, match=r"path must be a str, bytes, os\.PathLike or None, not"):
        Store(5)
    with pytest.raises(TypeError, match=r"location must be a str, bytes, os\.PathLike or None"):
        castore.upgrade(5)


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


def test_the_whole_store_generators_check_their_arguments_when_called(store, tmp_path):
    # Found by a review of the library API: import_dagu and export_lines checked nothing
    # until the first item was asked for (audit_records checks when called);
    # import_dagu("x", d) raised AttributeError only at the first importable record, a
    # root of None a TypeError about stat, and an int was taken for a descriptor.
    import castore
    from tests.unit.test_dagu import build_dagu_dir

    build_dagu_dir(tmp_path / "dagu")
    before = _export(store)
    with pytest.raises(TypeError, match="store must be a Store, not str"):
        castore.import_dagu(store.root, str(tmp_path / "dagu"))
    with pytest.raises(TypeError, match="store must be a Store, not str"):
        export_lines(store.root)
    with pytest.raises(castore.InvalidRefError, match='unsupported scope "nope"'):
        export_lines(store, scope="nope")
    with pytest.raises(NotADirectoryError):
        castore.import_dagu(store, str(tmp_path / "missing"))
    fd = os.open(tmp_path / "dagu", os.O_RDONLY)
    try:
        for root in (None, fd, 1.5):
            with pytest.raises(TypeError, match=r"root must be a str, bytes or os\.PathLike, not"):
                castore.import_dagu(store, root)
    finally:
        os.close(fd)
    assert _export(store) == before
    imported = [o.status for o in castore.import_dagu(store, os.fsencode(tmp_path / "dagu"))]
    assert "imported" in imported


def test_a_str_subclass_is_refused_whatever_the_handle_resolved_before(store):
    # Found by a review of the library API: a StrEnum scope (or a str subclass as key or
    # namespace) was a TypeError on a fresh handle, and taken once the plain str had been
    # resolved by the handle's ref cache: the same call's answer hung on earlier calls.
    import enum

    class Scope(enum.StrEnum):
        DAG = "dag"

    class Name(str):
        pass

    calls: dict[str, Callable[[], Any]] = {
        "scope": lambda: store.get("k", scope=Scope.DAG),
        "key": lambda: store.set(Name("k"), 9),
        "namespace": lambda: store.get("k", namespace=Name("d")),
    }
    before = _export(store)
    for resolved_before in (False, True):
        for name, call in calls.items():
            with pytest.raises(TypeError, match=f"{name} must be a str"):
                call()
        if not resolved_before:  # the plain strs, as a caller may have given them earlier
            assert store.get("k").found
            assert store.get("k", namespace="d").found
    assert _export(store) == before


@pytest.mark.parametrize("stream", ["export.jsonl", b"{}\n", None])
def test_read_lines_of_what_is_not_a_file_is_a_type_error_when_called(stream):
    # Found by a review of the library API: AttributeError "'str' object has no
    # attribute 'readline'" (a path given for the file), and only once iterated.
    from castore import read_lines

    with pytest.raises(TypeError, match="stream must be a file object opened 'rb' "):
        read_lines(stream)
