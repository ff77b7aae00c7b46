"""gc never removes a log that is the last evidence of a key's versions.

Found by a review hunting for repeated versions (each test failed before its fix):

- gc asked the handle's graveyard whether ``GRAVES`` holds a removed key's
  last version, and a handle keeps the graves it read (so that its own
  writes never lower one). With ``GRAVES`` lost under a long-lived handle,
  that handle's gc removed the log whose ``C`` frame was the last record of
  the versions, and the key started again at version 1. gc now reads the
  file as it is.
- A log cut to its header, whose versions only ``STATE`` records (a lost
  log, FORMAT.md §7, refused by readers and writers), was removed by gc as
  an emptied holder of blobs: once ``STATE`` dropped the key, ``check``
  said ok and the key started again at version 1.
- Compaction removing a key in a namespace whose ``KEYS`` was lost died
  with a ``FileNotFoundError`` traceback.

The oracle: every version acknowledged before the damage stays reserved.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castore import CorruptionError, Store
from tests.helpers import keys_path, log_path, ns_dir

pytestmark = pytest.mark.integration


def test_gc_of_a_handle_that_read_graves_keeps_the_last_record_of_a_removed_key(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    handle = Store(root, dag="d")  # long-lived: a server's, a worker's
    for i in range(3):
        handle.set("k", {"i": i})
    handle.delete("k")  # version 4
    assert handle.compact(keep_within_seconds=0).keys_removed == 1
    handle.set("other", 1)  # the handle reads GRAVES
    os.unlink(os.path.join(ns_dir(root, "dag", "d"), "GRAVES"))  # lost
    assert handle.gc(grace_seconds=0).logs_removed == 0
    assert os.path.exists(log_path(root, "dag", "d", "k"))  # its C frame names 1-4
    fresh = Store(root, dag="d")
    report = fresh.check(repair=True)
    assert any("GRAVES lacks the last version (4)" in f.problem for f in report.findings)
    assert fresh.set("k", "new").version == 5
    handle.close()
    fresh.close()


def test_gc_keeps_a_log_whose_versions_only_state_records(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root, dag="d")
    for i in range(3):
        store.set("k", {"i": i})
    store.list()  # STATE records k at version 3
    store.close()
    log = log_path(root, "dag", "d", "k")
    with open(log, "rb") as f:
        header = int.from_bytes(f.read(4), "little")
    os.truncate(log, header + 25)  # cut after its header frame: every entry gone
    store = Store(root, dag="d")
    with pytest.raises(CorruptionError):
        store.set("k", "x")
    assert store.gc(grace_seconds=0).logs_removed == 0
    assert os.path.exists(log)
    for i in range(300):  # STATE's snapshot rewrites drop keys whose last record is P
        store.set("z", i)
    store.list()
    with pytest.raises(CorruptionError):
        Store(root, dag="d").set("k", "x")
    assert not store.check().ok
    store.check(repair=True)
    assert store.set("k", "new").version == 4
    store.close()


def test_compaction_removes_a_key_where_keys_was_lost(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set("k", 1)
    store.delete("k")
    store.close()
    os.unlink(keys_path(root, "dag", "d"))
    store = Store(root, dag="d")
    assert store.compact(keep_within_seconds=0).keys_removed == 1
    assert not store.get("k").found
    assert store.set("k", 2).version == 3
    store.close()
