"""``gc --dry-run`` changes nothing, yet reports what a gc holding ``gc.lock`` would.

Found by a review of gc (failed before its fix): a dry run took ``gc.lock``
as gc does, opening it with ``O_CREAT``, so on a store no gc or blob-sharing
write had touched it created the file (and changed the root's mtime). It now
locks the file only if it exists; if it does not, nobody holds it, and a run
after which it still does not exist was held by nobody meanwhile (every
holder creates the file before locking it); if it appeared, the run is made
again holding it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import msgspec
import pytest

import castore.file.gc as gc_module
from castore import LockTimeoutError, Store

pytestmark = pytest.mark.integration


def _tree(root: Path) -> list[tuple[str, bytes | None, int]]:
    """Every path under ``root`` (itself included): its bytes (files) and mtime."""
    out = []
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else None
        out.append((str(path.relative_to(root)), data, st.st_mtime_ns))
    return out


def _store(root: Path) -> Store:
    store = Store(root, dag="d")
    for i in range(3):
        store.set("k", {"a": i})
    store.set("k", {"a": 0})  # version 4 takes version 1's blob back
    store.delete("gone")
    store.set("gone", 1)
    store.delete("gone")
    store.compact(keep_last=1)  # blobs nothing references: what gc would free
    os.unlink(root / "gc.lock")  # compaction made it; a copy of the store may lack it
    return store


@pytest.mark.parametrize("lock_file", [False, True])
def test_gc_dry_run_changes_nothing(tmp_path: Path, lock_file: bool) -> None:
    root = tmp_path / "s"
    store = _store(root)
    if lock_file:  # the usual case: the dry run takes the lock, still changing nothing
        store.set("k", {"a": 9})
        store.compact(keep_last=1)
    before = _tree(root)
    report = Store(root, dag="d").gc(grace_seconds=0, dry_run=True)
    assert report.blobs_freed > 0
    assert _tree(root) == before  # observed: gc.lock created
    assert Store(root, dag="d").gc(grace_seconds=0).blobs_freed == report.blobs_freed


def test_a_dry_run_during_which_gc_lock_appears_is_made_again_holding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone took ``gc.lock`` during the run (a writer sharing a blob, a gc): ask again."""
    root = tmp_path / "s"
    _store(root)
    lock = root / "gc.lock"
    real = gc_module._mark_and_sweep
    held: list[bool] = []

    def watched(*args, **kwargs):
        if not lock.exists():
            lock.write_bytes(b"")  # made meanwhile, as every holder makes it
        with open(lock, "rb") as other:  # is the run holding it exclusively?
            try:
                fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(gc_module, "_mark_and_sweep", watched)
    shown: list[int] = []
    report = Store(root, dag="d").gc(grace_seconds=0, dry_run=True, progress=shown.append)
    assert held == [False, True]
    assert report.blobs_freed > 0
    assert len(shown) == len(list(root.rglob("*.log")))  # the second run's not shown twice


def test_a_dry_run_waits_for_a_gc_in_progress(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _store(root)
    (root / "gc.lock").write_bytes(b"")
    fd = os.open(root / "gc.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a gc between its mark and its sweep
        with pytest.raises(LockTimeoutError):
            Store(root, dag="d", lock_timeout=0.2).gc(grace_seconds=0, dry_run=True)
    finally:
        os.close(fd)


def test_a_dry_run_reports_every_count_the_real_run_then_has(tmp_path: Path) -> None:
    """The logs gc would rewrite and remove, and the leftovers, not only the blobs.

    Found by a session's own check (failed before): the sweep decided nothing
    for a dry run, so ``logsRewritten`` and ``logsRemoved`` were always 0.
    """
    root = tmp_path / "s"
    store = _store(root)
    store.set("gone", 2)
    store.delete("gone")
    store.compact(keep_within_seconds=0)  # "gone"'s delete is older than 0 s: the key goes
    old = time.time() - 7200
    leftover = next(root.rglob("*.log")).parent / "left.tmp"  # a crashed write's
    leftover.write_bytes(b"x")
    os.utime(leftover, (old, old))
    for log in root.rglob("*.log"):
        os.utime(log, (old, old))
    dry = Store(root, dag="d").gc(grace_seconds=60, dry_run=True)
    real = Store(root, dag="d").gc(grace_seconds=60)
    assert (dry.logs_rewritten, dry.logs_removed, dry.leftovers_removed) == (1, 1, 1)
    assert msgspec.structs.replace(dry, dry_run=False) == real
