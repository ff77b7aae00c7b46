"""Export and import of a store's full history (castore/transfer.py).

The stores come from the backend under test: the source is built once per
backend (``module_fresh_store_location``, tests/conftest.py) and every copy and
target of a test is of the same backend (``fresh_store_location`` below). The
tests that look at the file backend's logs use plain directories.
"""

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from castore import (
    ConflictError,
    CorruptionError,
    InvalidValueError,
    NotFoundError,
    Store,
    codec,
    transfer,
)
from castore.backends import is_postgres
from castore.codec import hexdigest, normalize_json
from castore.file.records import KIND_BLOB
from castore.identity import MAX_AUDIT_TEXT
from castore.records import Audit
from castore.transfer import EXPORT_FORMAT, EXPORT_VERSION, export_lines, import_lines
from tests.helpers import (
    CASTORE_ENV,
    Cli,
    frames_of,
    log_path,
    opened_at,
    ref_log_path,
    snapshot,
    underlying,
)

HEADER = b'{"format":"castore-export","version":1}\n'  # hand-written: version 1, no end line
EXPORTED = b'{"format":"castore-export","version":2}\n'  # what export writes
END = b'{"end":"castore-export","versions":%d}'
LONG_KEY = "long/" + "\u00e9" * 2045  # 4,095 UTF-8 bytes (limit 4,096)
UNICODE_KEY = "caf\u00e9/\U0001f600/\u65e5\u672c"
BIG = {
    "text": "lorem ipsum dolor " * 30_000,
    "rows": [{"id": i, "tags": ["a"]} for i in range(200)],
}


def new_store(path: str | os.PathLike[str], **kw: Any) -> Store:
    return Store(path, dag="d", durable=False, **kw)


def populate(s: Store) -> None:
    """A store with tombstones, rollbacks, several scopes, odd keys and values."""
    s.set("cursor", {"last_id": 1})
    s.set("cursor", {"last_id": 2}, reason="bump")
    s.delete("cursor", reason="reset")
    s.rollback("cursor", to_version=1)
    s.rollback("cursor", to_version=3)  # rolls back to the tombstone: a delete
    s.set("cursor", {"last_id": 3})
    s.set("null", None)
    s.set("numbers", b'{"x":1.2300,"y":-0.0,"z":1e400,"big":123456789012345678901234567890}')
    s.set("html", "<&>\u2028")
    s.set(UNICODE_KEY, "\u00e9\U0001f600")
    s.set(LONG_KEY, [1, 2])
    s.set("Cursor", "case variant")
    s.set("big", BIG)
    s.set("big-twin", BIG)  # deduplicated against big's blob
    s.set("gone", 1)
    s.delete("gone")
    s.set("k", "global", scope="global")
    s.set("k", "custom a", scope="custom", namespace="a")
    s.set("k", "custom \u00e9", scope="custom", namespace="\u00e9")
    s.set("k", "root", scope="root_dag", namespace="root")
    s.set("a:b<c>", "windows", scope="custom", namespace="a")


def blob_count(path: str) -> int:
    return sum(1 for f in frames_of(path)[0] if f.kind == KIND_BLOB)


def export_bytes(s: Store, **kw: Any) -> bytes:
    return b"".join(export_lines(s, **kw))


def lines_reader(data: bytes) -> Callable[[], Iterator[bytes]]:
    return lambda: iter(data.splitlines(keepends=True))


def records(data: bytes) -> list[dict[str, Any]]:
    """The version lines of an export, checked against its end line."""
    *lines, end = data.splitlines()[1:]
    assert json.loads(end) == {"end": "castore-export", "versions": len(lines)}
    return [json.loads(line) for line in lines]


def local_root(s: Store) -> str | None:
    """The directory of a file store, or of the file store a remote one serves; else None."""
    where = underlying(opened_at(s))
    return None if is_postgres(where) else where


def stored_anything(s: Store) -> bool:
    """Whether the backend holds any trace of a store at ``s`` (a directory, a schema)."""
    root = local_root(s)
    if root is not None:
        return os.path.exists(os.path.join(root, "refs", "dag"))
    import psycopg

    from castore.postgres.location import parse

    where = parse(underlying(opened_at(s)))
    with psycopg.connect(where.conninfo, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (where.schema,)
        ).fetchone()
    return found is not None


def state_of(s: Store) -> tuple[bytes, Any, dict[str, bytes] | None]:
    """Everything a failed import must leave as it was: the export, stats, a file store's bytes."""
    root = local_root(s)
    return export_bytes(s), s.stats(), snapshot(root) if root is not None else None


@pytest.fixture
def fresh_store_location(module_fresh_store_location):
    """Every store of a test is of the backend of the module's source."""
    return module_fresh_store_location


@pytest.fixture(scope="module")
def source(module_fresh_store_location):
    """Built once per backend: tests only read it."""
    with module_fresh_store_location() as location:
        with pytest.MonkeyPatch.context() as mp:
            for name in CASTORE_ENV:
                mp.delenv(name, raising=False)
            s = new_store(location, actor="alice", run_id="run-1", step="save")
            populate(s)
        yield s
        s.close()


def test_export_format(source):
    data = export_bytes(source)
    assert data.startswith(EXPORTED)
    assert json.loads(data.splitlines()[0]) == {"format": EXPORT_FORMAT, "version": EXPORT_VERSION}
    assert data.endswith(b"\n")
    recs = records(data)
    refs = [(r["scope"], r["namespace"], r["key"]) for r in recs]
    # Refs come in byte-wise order, each ref's versions oldest first and contiguous.
    order: list[tuple[str, str, str]] = []
    for ref in refs:
        if not order or order[-1] != ref:
            order.append(ref)
    assert len(order) == len(set(order))
    assert order == sorted(order, key=lambda r: tuple(part.encode() for part in r))
    cursor = [r for r in recs if r["key"] == "cursor" and r["scope"] == "dag"]
    assert [r["version"] for r in cursor] == [1, 2, 3, 4, 5, 6]
    assert [r["op"] for r in cursor] == ["set", "set", "delete", "rollback", "delete", "set"]
    assert "value" not in cursor[2]
    assert "hash" not in cursor[2]
    assert cursor[3]["audit"]["rollback_from"] == 1
    assert cursor[4]["audit"]["rollback_from"] == 3
    assert cursor[1]["audit"]["reason"] == "bump"
    assert cursor[0]["audit"]["actor"] == "alice"
    assert cursor[0]["audit"]["run_id"] == "run-1"
    assert cursor[0]["created_ns"] == cursor[1]["created_ns"] > 0
    for r in recs:
        assert set(r) <= {
            "scope",
            "namespace",
            "key",
            "version",
            "op",
            "time_ns",
            "created_ns",
            "hash",
            "audit",
            "value",
        }
        if r["op"] != "delete" and r["key"] != "numbers":  # json would turn 1e400 into inf
            assert hexdigest(normalize_json(json.dumps(r["value"]))) == r["hash"]
    # Number literals survive verbatim.
    numbers = next(line for line in data.splitlines() if b'"key":"numbers"' in line)
    assert b'"value":{"big":123456789012345678901234567890,"x":1.2300,"y":-0.0,"z":1e400}' in (
        numbers
    )
    null = next(line for line in data.splitlines() if b'"key":"null"' in line)
    assert null.endswith(b'"value":null}')


def test_round_trip_is_byte_identical(source, new_store_location):
    data = export_bytes(source)
    copy = new_store(new_store_location())
    report = import_lines(copy, lines_reader(data))
    n_refs = len({(r["scope"], r["namespace"], r["key"]) for r in records(data)})
    assert (report.refs, report.versions) == (n_refs, len(records(data)))
    assert (report.skipped_refs, report.overwritten_refs) == ([], [])
    assert export_bytes(copy) == data
    assert export_bytes(new_store(opened_at(copy))) == data  # a fresh handle too
    # And a third generation.
    third = new_store(new_store_location())
    import_lines(third, lines_reader(export_bytes(copy)))
    assert export_bytes(third) == data


def test_imported_store_behaves_like_the_source(source, new_store_location):
    copy = new_store(new_store_location())
    import_lines(copy, lines_reader(export_bytes(source)))
    for key in ("cursor", "null", "numbers", UNICODE_KEY, LONG_KEY, "big", "big-twin", "Cursor"):
        a, b = source.get(key), copy.get(key)
        assert (a.found, a.version, a.hash, a.value_json) == (
            b.found,
            b.version,
            b.hash,
            b.value_json,
        )
    assert copy.get("gone").found is False
    assert copy.get("gone", version=1).value == 1
    assert copy.get("cursor", version=2).value == {"last_id": 2}
    assert copy.history("cursor") == source.history("cursor")
    assert copy.list() == source.list()
    assert copy.list(scope="custom", namespace="a") == source.list(scope="custom", namespace="a")
    # The history continues after the import.
    assert copy.set("cursor", 9, expected_version=6).version == 7
    assert copy.rollback("cursor", to_version=2).hash == source.get("cursor", version=2).hash
    assert copy.get("big-twin").value == BIG
    assert copy.check().ok


def test_a_big_value_is_stored_once_in_a_file_copy(source, tmp_path):
    copy = new_store(tmp_path / "copy")
    import_lines(copy, lines_reader(export_bytes(source)))
    # A big value is stored once in the copy too.
    big_log = ref_log_path(copy, "big")
    twin_log = ref_log_path(copy, "big-twin")
    assert (blob_count(big_log), blob_count(twin_log)) == (1, 0)


@pytest.mark.parametrize(
    ("kwargs", "pick"),
    [
        ({"scope": "custom"}, lambda r: r["scope"] == "custom"),
        ({"scope": "dag"}, lambda r: r["scope"] == "dag"),
        ({"namespace": "a"}, lambda r: r["namespace"] == "a"),
        ({"scope": "custom", "namespace": "\u00e9"}, lambda r: r["namespace"] == "\u00e9"),
        ({"scope": "global", "namespace": "a"}, lambda r: False),
    ],
)
def test_export_filters(source, kwargs, pick):
    full = records(export_bytes(source))
    part = export_bytes(source, **kwargs)
    assert part.startswith(EXPORTED)
    assert records(part) == [r for r in full if pick(r)]


def test_export_rejects_bad_filters(source):
    with pytest.raises(ValueError, match="scope"):
        export_bytes(source, scope="nope")
    with pytest.raises(ValueError, match="namespace"):
        export_bytes(source, namespace="a/b")


def test_import_refuses_existing_keys_and_imports_nothing(source, store_location):
    data = export_bytes(source)
    target = new_store(store_location)
    target.set("null", "mine")  # conflicts
    before = state_of(target)
    with pytest.raises(ConflictError) as exc:
        import_lines(target, lines_reader(data))
    assert "null" in str(exc.value)
    assert state_of(target) == before
    assert target.get("cursor").found is False
    assert target.history("cursor").entries == []
    assert target.get("null").value == "mine"


def test_import_conflicts_with_a_deleted_key(source, store_location):
    target = new_store(store_location)
    target.set("cursor", 1)
    target.delete("cursor")
    with pytest.raises(ConflictError):
        import_lines(target, lines_reader(export_bytes(source)))
    assert target.get("big").found is False


def test_import_skip_leaves_existing_keys(source, store_location):
    data = export_bytes(source)
    target = new_store(store_location)
    target.set("null", "mine")
    target.set("k", "mine too", scope="global")
    report = import_lines(target, lines_reader(data), on_conflict="skip")
    assert sorted(report.skipped_refs) == ["dag/d/null", "global/_/k"]
    assert report.overwritten_refs == []
    assert target.get("null").value == "mine"
    assert [e.version for e in target.history("null").entries] == [1]
    assert target.get("k", scope="global").value == "mine too"
    assert target.get("big").value == BIG
    assert target.get("cursor").version == 6


def test_import_overwrite_replaces_history_and_keeps_shared_blobs(new_store_location):
    big = {"blob": ["shared value"] * 20_000}
    target = new_store(new_store_location())
    target.set("a", big)  # the blob lives in a's log
    target.set("b", big)  # b points at a's log
    src = new_store(new_store_location())
    src.set("a", "new history")
    src.set("a", [2])
    src.set("c", 3)
    report = import_lines(target, lines_reader(export_bytes(src)), on_conflict="overwrite")
    assert (report.refs, report.versions) == (2, 3)
    assert report.overwritten_refs == ["dag/d/a"]
    assert report.skipped_refs == []
    for s in (target, new_store(opened_at(target))):
        assert [e.version for e in s.history("a").entries] == [2, 1]
        assert s.get("a").value == [2]
        assert s.get("a", version=1).value == "new history"
        assert s.get("b").value == big  # deduplicated against a's old blob
        assert s.get("c").value == 3
        assert export_bytes(s, namespace="d").count(b'"key":"a"') == 2
    fresh = new_store(opened_at(target))
    assert fresh.set("a", 4, expected_version=2).version == 3
    assert fresh.set("b", big).version == 2
    assert new_store(opened_at(target)).get("b", version=1).value == big
    assert new_store(opened_at(target)).check().ok


def test_import_overwrite_of_the_key_holding_a_rollback_source(new_store_location):
    """A value shared by another key is still readable after the overwrite, then re-deduplicated."""
    target = new_store(new_store_location())
    value = {"text": "x" * 5000}
    target.set("a", value)
    target.set("b", value)
    target.set("b", 0)
    src = new_store(new_store_location())
    src.set("a", "other")
    src.set("a", "newer")  # above target's version 1: an overwrite never repeats a version
    import_lines(target, lines_reader(export_bytes(src)), on_conflict="overwrite")
    fresh = new_store(opened_at(target))
    assert fresh.rollback("b", to_version=1).hash == hexdigest(
        normalize_json(b'{"text":"' + b"x" * 5000 + b'"}')
    )
    assert new_store(opened_at(target)).get("b").value == value


def bad(data_lines: list[bytes]) -> bytes:
    return b"\n".join(data_lines) + b"\n"


GOOD_1 = (
    b'{"scope":"dag","namespace":"d","key":"ok","version":1,"op":"set","time_ns":1,'
    b'"created_ns":1,"hash":"' + hexdigest(b"1").encode() + b'","value":1}'
)
GOOD_2 = (
    b'{"scope":"dag","namespace":"d","key":"ok","version":2,"op":"set","time_ns":2,'
    b'"created_ns":1,"hash":"' + hexdigest(b"2").encode() + b'","value":2}'
)
OTHER = (
    b'{"scope":"dag","namespace":"d","key":"other","version":1,"op":"set","time_ns":3,'
    b'"created_ns":3,"hash":"' + hexdigest(b"3").encode() + b'","value":3}'
)


def replace_in(line: bytes, old: bytes, new: bytes) -> bytes:
    assert old in line
    return line.replace(old, new)


MALFORMED = {
    "empty file": b"",
    "header not json": bad([b"castore-export 1", GOOD_1]),
    "wrong format": bad([b'{"format":"other","version":1}', GOOD_1]),
    "wrong version": bad([b'{"format":"castore-export","version":3}', GOOD_1]),
    "cut before the end line": bad([EXPORTED.strip(), GOOD_1, GOOD_2]),
    "end line miscounted": bad([EXPORTED.strip(), GOOD_1, GOOD_2, END % 3]),
    "a line after the end line": bad([EXPORTED.strip(), GOOD_1, END % 1, GOOD_2]),
    "end line in version 1": bad([HEADER.strip(), GOOD_1, END % 1]),
    "end line with more": bad([EXPORTED.strip(), GOOD_1, END[:-1] % 1 + b',"x":1}']),
    "header missing": bad([GOOD_1, OTHER]),
    "bad json line": bad([HEADER.strip(), GOOD_1, b'{"scope":"dag",', OTHER]),
    "hash mismatch": bad([HEADER.strip(), GOOD_1, replace_in(GOOD_2, b'"value":2', b'"value":7')]),
    "same version twice": bad([HEADER.strip(), GOOD_1, GOOD_1]),
    "versions decreasing": bad([HEADER.strip(), GOOD_2, GOOD_1]),
    "ref not contiguous": bad([HEADER.strip(), GOOD_1, OTHER, GOOD_2]),
    "unknown op": bad([HEADER.strip(), replace_in(GOOD_1, b'"op":"set"', b'"op":"put"')]),
    "delete with value": bad(
        [HEADER.strip(), GOOD_1, replace_in(GOOD_2, b'"op":"set"', b'"op":"delete"')]
    ),
    "set without value": bad([HEADER.strip(), replace_in(GOOD_1, b',"value":1', b"")]),
    "bad key": bad([HEADER.strip(), GOOD_1, replace_in(OTHER, b'"key":"other"', b'"key":"../x"')]),
    "bad scope": bad([HEADER.strip(), replace_in(OTHER, b'"scope":"dag"', b'"scope":"DAG"')]),
    "missing field": bad([HEADER.strip(), replace_in(OTHER, b'"version":1,', b"")]),
    "time goes back within a ref": bad(
        [HEADER.strip(), replace_in(GOOD_1, b'"time_ns":1', b'"time_ns":5'), GOOD_2]
    ),
    "version zero": bad([HEADER.strip(), replace_in(OTHER, b'"version":1', b'"version":0')]),
    "value not json": bad([HEADER.strip(), GOOD_1, replace_in(OTHER, b'"value":3', b'"value":03')]),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_exports_import_nothing(store_location, name):
    target = new_store(store_location)
    with pytest.raises(InvalidValueError):
        import_lines(target, lines_reader(MALFORMED[name]))
    assert target.get("ok").found is False
    assert target.get("other").found is False
    assert not stored_anything(target)


def test_an_export_cut_short_imports_nothing(source, new_store_location):
    # Found by a review: an export that failed part way (or was stopped) left the header and
    # the keys before the failure; importing it restored a store without the later keys.
    lines = export_bytes(source).splitlines(keepends=True)
    target = new_store(new_store_location())
    for cut in range(1, len(lines)):  # every whole-line prefix without the end line
        with pytest.raises(InvalidValueError, match="without the export's end line"):
            import_lines(target, lines_reader(b"".join(lines[:cut])))
    assert not stored_anything(target)
    import_lines(target, lines_reader(b"".join(lines)))
    assert export_bytes(target) == b"".join(lines)


def test_a_failed_export_leaves_nothing_import_takes(tmp_path):
    """The CLI's export stops at a damaged key; what it printed is refused as a whole."""
    root = tmp_path / "s"
    s = Store(root, dag="d")
    for key in ("a", "b", "c"):
        s.set(key, {"key": key, "pad": "x" * 300})
    s.close()
    log = log_path(root, "dag", "d", "b")
    with open(log, "r+b") as f:
        f.seek(os.path.getsize(log) - 100)
        f.write(b"ZZ")  # inside the newest frame
    out = Cli(tmp_path, root).run("export")
    assert out.returncode == 5
    assert out.stdout.startswith(EXPORTED)
    assert b'"key":"a"' in out.stdout  # streamed before the damage was met
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(out.stdout)
    target = tmp_path / "t"
    message = Cli(tmp_path, target).fail(2, "import", str(dump))
    assert "without the export's end line" in message
    assert Store(target, dag="d").get("a").found is False  # nothing imported


def test_valid_hand_written_export_imports(store_location):
    target = new_store(store_location)
    report = import_lines(target, lines_reader(bad([HEADER.strip(), GOOD_1, GOOD_2, b"", OTHER])))
    assert (report.refs, report.versions) == (2, 3)
    assert target.get("ok").value == 2
    assert [e.time for e in target.history("ok").entries] == [
        "1970-01-01T00:00:00.000000002Z",
        "1970-01-01T00:00:00.000000001Z",
    ]


def test_the_export_leaves_out_request_ids(store_location):
    # A write through castore serve keeps its request id in the stored audit record (a
    # retried write is recognized by it); the export leaves it out, so a remote store
    # exports what a local one does, and export, import, export stays byte-identical.
    request_id = "0123456789abcdef0123456789abcdef"
    with_id = replace_in(
        GOOD_1, b'"value":1', b'"audit":{"request_id":"%s"},"value":1' % (request_id.encode())
    )
    target = new_store(store_location)
    import_lines(target, lines_reader(bad([HEADER.strip(), with_id, OTHER])))
    target.set("written", 1, reason="why")
    data = export_bytes(target)
    assert b"request_id" not in data
    assert b'"reason":"why"' in data
    served = new_store(underlying(store_location))  # the store itself (behind a server)
    assert export_bytes(served) == data
    ref = served.ref("ok")
    entry = served.backend.current(ref).entry
    assert entry is not None
    assert entry.audit.request_id != ""  # stored: as given by the import, or the server's
    written = served.backend.current(served.ref("written")).entry
    assert written is not None
    assert bool(written.audit.request_id) == (store_location != underlying(store_location))


def test_import_calls_read_twice_and_validates_before_writing(store_location):
    calls = []
    data = bad([HEADER.strip(), GOOD_1, OTHER])

    def read():
        calls.append(1)
        return iter(data.splitlines(keepends=True))

    target = new_store(store_location)
    import_lines(target, read)
    assert len(calls) == 2
    assert target.get("other").value == 3


def test_import_of_an_open_file_as_the_readme_shows_it(source, store_location, tmp_path):
    # Found by a review: read_lines(f) left f at its end, so the writing pass read no line
    # and said "the file is empty", although the validating pass had just read it.
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join(export_lines(source)))
    target = new_store(store_location)
    with open(path, "rb") as fh:
        fh.readline()  # read_lines starts where the file is, and goes back there
        offset = fh.tell()
        fh.seek(0)
        report = import_lines(target, lambda: transfer.read_lines(fh))
        assert fh.tell() == 0
        lines = list(transfer.read_lines(fh))
        fh.seek(offset)
        assert list(transfer.read_lines(fh)) == lines[1:]
        assert fh.tell() == offset
    assert report.versions == len(lines) - 2  # the header and the end line are no version
    assert b"".join(export_lines(target)) == path.read_bytes()


def test_import_says_when_read_gives_no_lines_the_second_time(source, store_location, tmp_path):
    target = new_store(store_location)
    once = transfer.read_lines(iter_file := _pipe_like(b"".join(export_lines(source))))
    with pytest.raises(InvalidValueError) as exc:
        import_lines(target, lambda: once)  # the same iterator twice: empty the second time
    assert "read() gave no lines the second time" in str(exc.value)
    assert "fresh iterable on each call" in str(exc.value)
    assert "the file is empty" not in str(exc.value)
    assert iter_file.read() == b""
    assert target.list().entries == []  # nothing was written: no line to write
    with pytest.raises(InvalidValueError, match="the file is empty"):
        import_lines(target, lambda: transfer.read_lines(_pipe_like(b"")))


def _pipe_like(data: bytes) -> Any:
    """A binary stream that cannot seek (a pipe)."""
    import io

    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    return Pipe(data)


def test_a_writer_waiting_for_the_lock_writes_to_a_log_replaced_meanwhile(tmp_path):
    """An overwrite import renames a new log over the old one; a waiting writer must follow it."""
    target = new_store(tmp_path / "target")
    target.set("k", "old")
    theirs = new_store(tmp_path / "theirs")
    for value in ("n1", "n2", "n3"):
        theirs.set("k", value)
    path = ref_log_path(target, "k")
    done: dict[str, Any] = {}

    def write() -> None:
        try:
            done["result"] = new_store(opened_at(target)).set("k", "after")
        except Exception as exc:  # noqa: BLE001 - reported below
            done["error"] = exc

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.3)  # the writer opens the old log and waits for its lock
        staged = path + ".staged.tmp"
        shutil.copyfile(ref_log_path(theirs, "k"), staged)
        os.replace(staged, path)  # what an overwrite does, under the old log's lock
    finally:
        os.close(fd)  # releases the lock
    writer.join(30)
    assert "error" not in done, done
    assert done["result"].version == 4
    fresh = new_store(opened_at(target))
    assert [e.version for e in fresh.history("k").entries] == [4, 3, 2, 1]
    assert [fresh.get("k", version=v).value for v in (1, 2, 3, 4)] == ["n1", "n2", "n3", "after"]


def test_a_damaged_range_compaction_drops_reads_as_compacted(store_location):
    """Every version of a dropped damaged entry was compacted, not only its last one."""

    def line(version: int, op: str, **extra: Any) -> bytes:
        record = {"scope": "dag", "namespace": "d", "key": "k", "version": version, "op": op}
        record |= {"time_ns": 1000 + version, **extra}
        if "value" in extra:
            record["hash"] = codec.hexdigest(codec.normalize(extra["value"]))
        return json.dumps(record).encode() + b"\n"

    lines = [
        b'{"format":"castore-export","version":1}\n',
        line(1, "set", created_ns=1001, value={"a": 1}),
        line(4, "damaged", damaged_from=2),
        line(5, "set", created_ns=1005, value={"a": 5}),
        line(6, "set", created_ns=1005, value={"a": 6}),
    ]
    store = Store(store_location, dag="d")
    import_lines(store, lambda: lines)
    store.compact(keep_last=1)
    for version in range(1, 6):
        with pytest.raises(NotFoundError, match=f"version {version} was compacted"):
            store.get("k", version=version)
    assert store.get("k").value == {"a": 6}


@pytest.mark.parametrize("depth", [1_000, 9_999])
def test_a_deeply_nested_value_survives_a_round_trip(new_store_location, depth):
    # Found by a review: a value nested 1,000 levels or more was stored and exported, but
    # its export could not be imported (a RecursionError traceback from the line decoder).
    s = new_store(new_store_location())
    deep = b"[" * depth + b"{" + b'"a":' + b"1.50" + b"}" + b"]" * depth
    s.set("deep", deep)
    s.set("deep", {"flat": True})
    data = export_bytes(s)
    copy = new_store(new_store_location())
    report = import_lines(copy, lines_reader(data))
    assert (report.refs, report.versions) == (1, 2)
    assert export_bytes(copy) == data
    assert copy.get("deep", version=1).value_json == normalize_json(deep)


def test_overwrite_never_gives_the_stored_newest_version_to_another_value(new_store_location):
    # Found by a review: an overwrite whose newest version equalled the stored newest
    # gave that version number to another value, so a compare-and-swap based on the
    # old value passed.
    s = new_store(new_store_location())
    s.set("k", {"v": "orig"})
    s.set("k", {"v": "orig2"})
    other = new_store(new_store_location())
    other.set("k", {"v": "other1"})
    other.set("k", {"v": "OTHER"})
    before = export_bytes(s)
    with pytest.raises(ConflictError, match="newest version 2 is the stored one, with another"):
        import_lines(s, lines_reader(export_bytes(other)), on_conflict="overwrite")
    assert export_bytes(s) == before
    # The same history again (a re-import) is no change of what version 2 names.
    report = import_lines(s, lines_reader(before), on_conflict="overwrite")
    assert report.overwritten_refs == ["dag/d/k"]
    assert export_bytes(s) == before
    other.set("k", {"v": "third"})
    import_lines(s, lines_reader(export_bytes(other)), on_conflict="overwrite")
    assert (s.get("k").version, s.get("k").value) == (3, {"v": "third"})


def test_an_imported_lost_range_reads_as_damage_from_the_handle_that_imported_it(
    new_store_location,
):
    # Found by a review: after importing a store's `damaged` entry (versions a repair
    # recorded as lost), the importing handle (a server's) answered "not found"; a new
    # handle raised CorruptionError, as it must.
    line = (
        b'{"scope":"dag","namespace":"d","key":"k","version":3,"op":"damaged","time_ns":5,'
        b'"audit":{"reason":"log cut short"},"damaged_from":1}\n'
    )
    s = new_store(new_store_location())
    assert s.get("k").found is False  # the handle has read the key before
    import_lines(s, lines_reader(HEADER + line))
    for handle in (s, new_store(opened_at(s))):
        with pytest.raises(CorruptionError, match="versions 1-3 lost"):
            handle.get("k")
        with pytest.raises(CorruptionError, match="versions 1-3 lost"):
            handle.get("k", version=2)


_LOST_NEWEST = (
    b'{"scope":"dag","namespace":"d","key":"lost","version":3,"op":"set","time_ns":7000,'
    b'"hash":"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b","value":1}\n'
    b'{"scope":"dag","namespace":"d","key":"lost","version":7,"op":"damaged","time_ns":7001,'
    b'"damaged_from":4}\n'
    b'{"scope":"dag","namespace":"d","key":"ok","version":1,"op":"set","time_ns":7002,'
    b'"hash":"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b","value":1}\n'
)


def test_a_key_whose_newest_versions_were_lost_is_skipped_by_list(new_store_location):
    # Found by a review: PostgreSQL listed such a key as live, with an empty hash and a
    # 1970 time; the file store leaves it out and names it in ``skipped``.
    s = new_store(new_store_location())
    import_lines(s, lines_reader(HEADER + _LOST_NEWEST))
    for handle in (s, new_store(opened_at(s))):
        listed = handle.list()
        assert [e.key for e in listed.entries] == ["ok"]
        assert listed.skipped == ["lost"]
        with pytest.raises(CorruptionError, match="versions 4-7 lost"):
            handle.get("lost")


def test_check_reports_recorded_lost_versions_as_information(new_store_location):
    # Found by a differential review: the file store's check reported them, PostgreSQL's
    # said nothing.
    s = new_store(new_store_location())
    import_lines(s, lines_reader(HEADER + _LOST_NEWEST))
    report = s.check()
    assert report.ok
    assert [(f.problem, f.severity, f.repaired) for f in report.findings] == [
        ("dag/d/lost versions 4-7 were lost to damage", "info", False)
    ]


def test_a_history_ending_in_lost_versions_can_be_imported_again(new_store_location):
    # Found by a review: the re-import of the same export with ``overwrite`` was refused
    # ("with another value") when a key's newest entry was a ``damaged`` one.
    s = new_store(new_store_location())
    import_lines(s, lines_reader(HEADER + _LOST_NEWEST))
    before = export_bytes(s)
    report = import_lines(s, lines_reader(before), on_conflict="overwrite")
    assert report.overwritten_refs == ["dag/d/lost", "dag/d/ok"]
    assert export_bytes(s) == before
    other = HEADER + _LOST_NEWEST.replace(b'"damaged","time_ns":7001', b'"delete","time_ns":7001')
    other = other.replace(b',"damaged_from":4}', b"}")
    with pytest.raises(ConflictError, match="newest version 7 is the stored one, with another"):
        import_lines(s, lines_reader(other), on_conflict="overwrite")  # a delete is not a loss
    assert export_bytes(s) == before


def test_audit_text_too_long_for_an_export_line_is_refused_before_anything_is_written(
    new_store_location, monkeypatch
):
    # Found by a review: a 5 MiB reason was written (through a server's backend protocol
    # too), and the key's export line was then refused by import, so it could not move.
    s = new_store(new_store_location())
    s.set("k", 1, reason="r" * MAX_AUDIT_TEXT)
    long = "\x01" * (MAX_AUDIT_TEXT + 1)  # 6 bytes each once JSON-escaped
    for write in (
        lambda: s.set("k", 2, reason=long),
        lambda: s.delete("k", reason=long),
        lambda: s.for_caller(Audit(run_id=long), dag="d").set("k", 2),
        lambda: s.for_caller(Audit(run_id="r"), dag="d").set("k", 2, reason=long),
    ):
        with pytest.raises(InvalidValueError, match=f"holds {MAX_AUDIT_TEXT + 1} characters"):
            write()
    monkeypatch.setenv("DAG_RUN_ID", long)
    with pytest.raises(InvalidValueError, match=r"run_id \(from \$DAG_RUN_ID unless given\)"):
        new_store(opened_at(s)).set("k", 2)
    monkeypatch.delenv("DAG_RUN_ID")
    assert s.get("k").version == 1
    new_store(opened_at(s), actor="a" * MAX_AUDIT_TEXT).set("k", 2, reason="\x01" * MAX_AUDIT_TEXT)
    data = export_bytes(s)
    copy = new_store(new_store_location())
    import_lines(copy, lines_reader(data))
    assert export_bytes(copy) == data


def test_writes_after_an_imported_time_at_the_limit_stay_within_it(new_store_location):
    # Found by a review: after an import of a version timed 2**63-1 (the largest allowed),
    # later writes were timed 2**63 and above, and the store's export was then refused.
    line = (
        b'{"scope":"dag","namespace":"d","key":"k","version":1,"op":"set",'
        b'"time_ns":9223372036854775807,"created_ns":1,"hash":"'
        + hexdigest(b"1").encode()
        + b'","value":1}\n'
    )
    s = new_store(new_store_location())
    import_lines(s, lines_reader(HEADER + line))
    s.set("k", 2)
    s.set("k", 3)
    assert {r["time_ns"] for r in records(export_bytes(s))} == {2**63 - 1}
    data = export_bytes(s)
    copy = new_store(new_store_location())
    import_lines(copy, lines_reader(data))
    assert export_bytes(copy) == data


@pytest.mark.parametrize("write", ["set", "delete"])
def test_an_overwrite_never_erases_a_write_made_between_its_two_passes(
    new_store_location, monkeypatch, write
):
    # Found by a review: the writing pass replaced the history without checking that it was
    # still the one the validating pass saw, so a set acknowledged in between was erased.
    src = new_store(new_store_location())
    for n in range(1, 21):
        src.set("k", {"imported": n})
        src.set("z", {"imported": n})
    exported = export_bytes(src)
    dst = new_store(new_store_location())
    for n in range(1, 6):
        dst.set("k", {"mine": n})
        dst.set("z", {"mine": n})
    other = new_store(opened_at(dst))
    between = []
    real = transfer._validated

    def validated(*args: Any, **kw: Any) -> Any:
        found = real(*args, **kw)
        if write == "set":
            between.append(other.set("z", {"mine": "between"}).version)
        else:
            assert other.delete("z").deleted
            between.append(other.history("z").entries[0].version)
        return found

    monkeypatch.setattr(transfer, "_validated", validated)
    with pytest.raises(ConflictError, match="changed since the import checked it") as raised:
        import_lines(dst, lines_reader(exported), on_conflict="overwrite")
    assert (raised.value.expected, raised.value.actual) == (5, 6)
    assert between == [6]
    if write == "set":
        assert dst.get("z").to_dict()["value"] == {"mine": "between"}  # the write is kept
    else:
        assert not dst.get("z").found
    assert [e.version for e in dst.history("z").entries] == [6, 5, 4, 3, 2, 1]
    assert dst.get("k").value == {"imported": 20}  # the key before it was written, whole
    monkeypatch.setattr(transfer, "_validated", real)
    report = import_lines(dst, lines_reader(exported), on_conflict="overwrite")  # run again
    assert report.overwritten_refs == ["dag/d/k", "dag/d/z"]
    assert dst.get("z").value == {"imported": 20}
