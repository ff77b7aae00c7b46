"""The file backend behind Store: what the behaviour suite (test_store.py) cannot see.

Its logs, blob deduplication on disk, the FORMAT file, temporary files, the
default store directory, and what a write leaves in a key's log.
"""

import glob
import os

import pytest

from castore import CorruptionError, Store
from castore.errors import FormatVersionError
from castore.file.frames import scan_frames
from castore.file.records import KIND_ENTRY, decode_entry
from castore.records import Entry
from tests.helpers import ref_log_path


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
    Store(tmp_path / "s")
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


def test_no_temporary_files_are_left(store):
    for i in range(5):
        store.set(f"k{i}", i)
    root = store.root
    leftovers = glob.glob(os.path.join(root, "**", "*.tmp"), recursive=True)
    assert leftovers == []
