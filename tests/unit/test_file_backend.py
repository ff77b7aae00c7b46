"""The file backend behind Store: what the behaviour suite (test_store.py) cannot see.

Its logs, blob deduplication on disk, the FORMAT file, temporary files, the
default store directory, what a write leaves in a key's log, that reads
create nothing, and the permissions of what a store creates.
"""

import glob
import os
import stat

import pytest

from castore import ConflictError, CorruptionError, NotFoundError, Store
from castore.audit import audit
from castore.errors import FormatVersionError
from castore.file.frames import scan_frames
from castore.file.records import KIND_ENTRY, decode_entry
from castore.records import Entry
from castore.transfer import export_lines, import_lines
from tests.helpers import assert_modes, assert_modes_below, corrupt, paths_below, ref_log_path


@pytest.fixture
def store(store_dir):
    s = Store(store_dir, dag="daily-agent", durable=False)
    yield s
    s.close()


def entries_of(store: Store, key: str) -> list[Entry]:
    path = ref_log_path(store, key)
    with open(path, "rb") as fh:
        return [decode_entry(f.payload) for f in scan_frames(fh.read()) if f.kind == KIND_ENTRY]


def test_versions_across_a_delete_are_entries_of_one_log(store):
    store.set("k", 1)
    assert store.delete("k").deleted is True
    assert store.set("k", 2, expected_version=0).version == 3
    assert [(e.version, e.op) for e in entries_of(store, "k")] == [
        (1, "set"),
        (2, "delete"),
        (3, "set"),
    ]


def test_delete_of_never_set_key_creates_no_log(store):
    assert store.delete("ghost").deleted is False
    assert not os.path.exists(ref_log_path(store, "ghost"))


def test_audit_from_the_environment_is_in_the_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("DAG_NAME", "from-env")
    monkeypatch.setenv("DAG_RUN_ID", "run-7")
    monkeypatch.setenv("DAG_RUN_STEP_NAME", "save")
    s = Store(tmp_path, durable=False)
    assert s.set("k", 1).namespace == "from-env"
    audit = entries_of(s, "k")[0].audit
    assert (audit.dag_name, audit.run_id, audit.step_name, audit.pid) == (
        "from-env",
        "run-7",
        "save",
        os.getpid(),
    )


def test_blobs_are_deduplicated_across_keys_and_versions(store):
    big = {"payload": "x" * 5000}
    store.set("one", big)
    store.set("two", big)
    store.set("one", big)
    size_one = os.path.getsize(ref_log_path(store, "one"))
    size_two = os.path.getsize(ref_log_path(store, "two"))
    assert size_two < 1000  # only header + entry: the blob lives in "one"'s log
    assert size_one < 2000  # compressed once, referenced twice
    assert store.get("two").value == big
    assert Store(store.root, dag="daily-agent").get("two").value == big


def test_corrupt_blob_is_an_error_not_a_wrong_value(store):
    store.set("k", {"v": 1})
    path = ref_log_path(store, "k")
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    at = data.index(b'{"v":1}')
    data[at + 5] = ord("2")  # same length, different value: the checksum no longer matches
    with open(path, "r+b") as fh:
        fh.write(data)
    fresh = Store(store.root, dag="daily-agent")
    with pytest.raises(CorruptionError, match="daily-agent/k version 1"):
        fresh.get("k")
    fresh.set("other", 1)
    listed = fresh.list()
    assert [e.key for e in listed.entries] == ["other"]
    assert listed.skipped == ["k"]


def test_format_file_is_checked(tmp_path):
    Store(tmp_path / "s", dag="d").set("k", 1)
    (tmp_path / "s" / "FORMAT").write_text("castore-store 99\n")
    with pytest.raises(FormatVersionError, match="99"):
        Store(tmp_path / "s")
    (tmp_path / "s" / "FORMAT").write_text("something else\n")
    with pytest.raises(FormatVersionError, match="magic"):
        Store(tmp_path / "s")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(FormatVersionError, match="not empty"):
        Store(tmp_path / "home")
    assert os.listdir(tmp_path / "home") == ["notes.txt"]


def test_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CASTORE_DIR", str(tmp_path / "a"))
    assert Store().root == str(tmp_path / "a")
    monkeypatch.delenv("CASTORE_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Store().root == str(tmp_path / "xdg" / "castore")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Store().root == str(tmp_path / "home" / ".local" / "share" / "castore")
    # found by a review: a relative one was taken relative to the current directory (the
    # XDG specification says to ignore it)
    monkeypatch.setenv("XDG_DATA_HOME", "xdg")
    assert Store().root == str(tmp_path / "home" / ".local" / "share" / "castore")


def test_no_temporary_files_are_left(store):
    for i in range(5):
        store.set(f"k{i}", i)
    root = store.root
    leftovers = glob.glob(os.path.join(root, "**", "*.tmp"), recursive=True)
    assert leftovers == []


# -- a read never creates a store (issue 11) ---------------------------------------------------


def read_everything(s: Store) -> None:
    """Every read of the library, and every write that writes nothing, as on an empty store."""
    assert s.get("k").found is False
    assert s.get("k", default={"a": 1}).value == {"a": 1}
    for call in (
        lambda: s.get("k", required=True),
        lambda: s.get("k", version=1),
        lambda: s.diff_versions("k", from_version=1),
        lambda: s.rollback("k", to_version=1),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert s.list().entries == []
    assert s.list(scope="global").entries == []
    assert s.history("k").entries == []
    assert s.diff("k", 1, update=False).found_previous is False
    assert s.delete("k").deleted is False
    with pytest.raises(ConflictError):
        s.set("k", 1, expected_version=2)
    with pytest.raises(ConflictError):
        s.diff("k", 1, expected_version=2)
    assert (s.check().ok, s.check().logs) == (True, 0)
    assert s.check(repair=True).findings == []
    assert s.gc(grace_seconds=0).blobs_found == 0
    assert s.compact(keep_last=1).refs_examined == 0
    assert s.compact(keep_within_seconds=0, dry_run=True).refs_examined == 0
    assert s.stats().total.versions == 0
    assert list(audit(s)) == []
    header = list(export_lines(s))
    assert len(header) == 2  # the header and the end line: no version
    assert import_lines(s, lambda: header).refs == 0  # an import of nothing writes nothing
    assert s.backend.exists(s.ref("k")) is False


@pytest.mark.parametrize("where", ["missing", "missing/below", "empty", "hidden-only"])
def test_reads_on_a_location_without_a_store_create_nothing(tmp_path, where):
    (tmp_path / "empty").mkdir()
    (tmp_path / "hidden-only").mkdir()
    (tmp_path / "hidden-only" / ".keep").write_text("")
    before = paths_below(tmp_path)
    with Store(tmp_path / where, dag="d") as s:
        read_everything(s)
    assert paths_below(tmp_path) == before  # not a file, not a directory, not a lock
    with Store(tmp_path / where, dag="d") as s:  # the first write creates the store
        assert s.set("k", 1).version == 1
    assert {"FORMAT", "refs"} <= set(os.listdir(tmp_path / where))
    assert Store(tmp_path / where, dag="d").get("k").value == 1


def test_a_mistyped_default_directory_is_not_created(tmp_path, monkeypatch):
    monkeypatch.setenv("CASTORE_DIR", str(tmp_path / "typo" / "store"))
    with Store(dag="d") as s:
        read_everything(s)
    assert os.listdir(tmp_path) == []


def test_a_handle_opened_before_the_store_existed_sees_it(tmp_path):
    early = Store(tmp_path / "s", dag="d")
    assert early.list().entries == []
    Store(tmp_path / "s", dag="d").set("k", 1)
    assert early.get("k").value == 1
    assert early.set("k", 2, expected_version=1).version == 2
    assert early.check().ok


def test_a_file_is_not_a_store(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FormatVersionError, match="not a directory"):
        Store(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


# -- permissions (issue 11) ---------------------------------------------------------------------


def make_every_kind_of_file(s: Store) -> None:
    """Logs, KEYS, GRAVES, .vix, index shards, gc.lock, quarantine copies, rewrites."""
    big = {"payload": "x" * 5000}
    s.set("a", big)
    s.set("b", big)  # points at a's blob: gc.lock, an index shard
    s.set("a", 2)
    assert s.get("a", version=1).value == big  # the version index
    s.set("g", 1, scope="global")
    s.delete("b")
    assert s.compact(keep_within_seconds=0).keys_removed == 1  # GRAVES, rewritten logs
    s.gc(grace_seconds=0)  # the blob index rebuilt
    with open(ref_log_path(s, "a"), "ab") as fh:
        fh.write(b"\x07torn")
    s.set("a", 3)  # quarantine/torn/
    for n in range(3):
        s.set("c", {"n": n, "pad": "y" * 300})
    path = ref_log_path(s, "c")
    corrupt(path, os.path.getsize(path) // 2)
    assert s.check(repair=True).ok  # quarantine/<time>/


def test_files_are_private_by_default(tmp_path, umask):
    with Store(tmp_path / "parent" / "s", dag="d", durable=False) as s:
        make_every_kind_of_file(s)
    assert stat.S_IMODE(os.stat(tmp_path / "parent").st_mode) == 0o700
    assert_modes(str(tmp_path / "parent" / "s"), 0o600, 0o700)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_group_mode(tmp_path, umask, monkeypatch, how):
    if how == "environment":
        monkeypatch.setenv("CASTORE_MODE", "group")
    with Store(
        tmp_path / "s", dag="d", durable=False, mode="group" if how == "argument" else None
    ) as s:
        make_every_kind_of_file(s)
    assert_modes(str(tmp_path / "s"), 0o660, 0o2770)


def test_a_store_without_a_chosen_mode_follows_its_directory(tmp_path, umask):
    Store(tmp_path / "g", dag="d", mode="group").set("first", 1)
    with Store(tmp_path / "g", dag="d", durable=False) as s:  # no mode: follows the store
        make_every_kind_of_file(s)
    assert_modes(str(tmp_path / "g"), 0o660, 0o2770)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2770)  # noqa: S103  # an administrator's: setgid and group-writable
    Store(shared, dag="d").set("k", 1)
    assert_modes_below(str(shared), 0o660, 0o2770)
    plain = tmp_path / "plain"
    plain.mkdir()
    os.chmod(plain, 0o755)  # noqa: S103  # a directory as mkdir makes it
    Store(plain, dag="d").set("k", 1)
    assert stat.S_IMODE(os.stat(plain).st_mode) == 0o755  # not made by castore: left alone
    assert_modes_below(str(plain), 0o600, 0o700)
    Store(plain, dag="d", mode="group").set("k2", 1)  # a chosen mode wins for what it makes
    assert stat.S_IMODE(os.stat(plain / "refs").st_mode) == 0o700  # existing: left alone


def test_a_mode_that_is_not_one_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="invalid mode 'public'"):
        Store(tmp_path / "s", mode="public")
    monkeypatch.setenv("CASTORE_MODE", "0644")
    with pytest.raises(ValueError, match="CASTORE_MODE"):
        Store(tmp_path / "s")
    assert os.listdir(tmp_path) == []


def test_an_open_refused_by_the_system_names_the_whole_path(tmp_path, monkeypatch):
    # Found by a review: a user without rights on a store saw "castore: Permission
    # denied: FORMAT", naming neither the store nor the path.
    import errno as errno_module

    from castore.file.tree import Tree

    (tmp_path / "FORMAT").write_text("x")
    tree = Tree(str(tmp_path))
    real = os.open

    def denied(path, flags, mode=0o777, *, dir_fd=None):
        if path == "FORMAT":
            raise PermissionError(errno_module.EACCES, "Permission denied", path)
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError) as exc:
        tree.open(str(tmp_path / "FORMAT"), os.O_RDONLY)
    assert exc.value.filename == str(tmp_path / "FORMAT")


def test_a_write_that_writes_nothing_in_a_new_namespace_leaves_check_ok(tmp_path):
    """A failed guard may leave the namespace's empty directory: harmless, not a finding."""
    Store(tmp_path, dag="d1").set("k", 1)
    with pytest.raises(ConflictError):
        Store(tmp_path, dag="d2").set("k", 1, expected_version=3)
    report = Store(tmp_path).check()
    assert report.ok, report.findings
    assert report.findings == []
    assert Store(tmp_path, dag="d2").set("k", 1).version == 1


def test_a_rollback_of_a_key_never_written_leaves_no_file(tmp_path):
    # Found by a review: it left the key's version index, which check then reported
    # ("version index without its log"); a failed get at a version leaves nothing.
    store = Store(tmp_path, dag="d")
    store.set("seed", 1)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(NotFoundError, match="has no version 1"):
        store.rollback("new", to_version=1)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert Store(tmp_path).check().findings == []
