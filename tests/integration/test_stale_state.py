"""An older copy of a namespace's ``STATE`` written back over it.

``STATE`` answers ``list`` without reading logs (docs/FORMAT.md §5): every
change to a log appends ``P`` for its key before it changes the log, so a
key whose last record is an ``S`` or a snapshot row names its log's newest
entry. A copy taken before later writes (a file restored from a backup, a
sync tool) lacks their ``P`` frames and answers ``list`` with older
versions and deleted keys as live. ``list`` cannot tell without reading
every log; ``check`` does (a settled record below its log's newest entry)
and ``--repair`` replaces the file, so that ``list`` reads the logs again.
Oracle: the same commands on an undamaged copy of the store.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Final

import pytest

from castore import Store
from tests.helpers import log_path

pytestmark = pytest.mark.integration

DAG: Final = "stale"


def _listing(root: Path) -> list[tuple[str, int, str]]:
    store = Store(root, dag=DAG)
    try:
        return [(e.key, e.version, e.hash) for e in store.list().entries]
    finally:
        store.close()


def _stale_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A store whose ``STATE`` is a copy from before later writes, and its undamaged twin."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    for key in ("a", "b", "c"):
        store.set(key, 1)
    store.list()  # every key settled in STATE
    state = Path(log_path(root, "dag", DAG, "a")).parent / "STATE"
    old = state.read_bytes()
    store.set("a", 2)
    store.delete("b")
    store.set("d", 1)
    store.close()
    twin = tmp_path / "twin"
    shutil.copytree(root, twin)
    state.write_bytes(old)
    return root, twin


def test_check_finds_and_repairs_an_older_copy_of_state(tmp_path: Path) -> None:
    root, twin = _stale_copy(tmp_path)
    expected = _listing(twin)
    assert [k for k, _, _ in expected] == ["a", "c", "d"]
    store = Store(root, dag=DAG)
    report = store.check()
    assert not report.ok
    stale = [f for f in report.findings if "STATE" in f.path]
    assert len(stale) == 1, report.findings  # one finding for the file, naming the keys
    assert "older" in stale[0].problem
    assert "a" in stale[0].problem
    assert stale[0].severity == "error"
    assert not stale[0].repaired
    repaired = store.check(repair=True)
    assert repaired.ok
    assert any(f.repaired for f in repaired.findings if "STATE" in f.path)
    assert store.check().findings == []
    store.close()
    assert _listing(root) == expected
    assert _listing(root) == expected  # and again, from the rebuilt file
    twin_store, store = Store(twin, dag=DAG), Store(root, dag=DAG)
    for key in ("a", "b", "c", "d"):  # the logs were never touched
        assert [h.version for h in store.history(key).entries] == [
            h.version for h in twin_store.history(key).entries
        ]
    assert store.set("a", 3).version == twin_store.set("a", 3).version == 3
    store.close()
    twin_store.close()


def test_an_undamaged_state_is_no_finding_while_writers_write(tmp_path: Path) -> None:
    """A change appends ``P`` before it changes its log: check racing writers finds nothing."""
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    keys = [f"k{n}" for n in range(8)]
    for key in keys:
        store.set(key, 0)
    store.list()
    stop = threading.Event()

    def write() -> None:
        writer, n = Store(root, dag=DAG), 0
        while not stop.is_set():
            n += 1
            writer.set(keys[n % len(keys)], n)
            if n % 5 == 0:
                writer.list()  # settles keys again: S frames and snapshots
        writer.close()

    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            report = store.check()
            assert report.findings == [], report.findings
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    store.close()
