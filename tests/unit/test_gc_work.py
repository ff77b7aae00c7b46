"""gc's work grows with the store, not with the store times its logs (castore/file/gc.py).

The sweep of each log asks whether a blob is referenced anywhere; it used to
copy the store's whole set of referenced digests once per log to ask it,
which made gc (and ``gc --dry-run``) quadratic: 100,000 keys with one blob
each took 317 s for a dry run. The work is counted, not timed: how many of
the set's elements the sweeps copy or walk.
"""

from __future__ import annotations

from typing import Any

import pytest

from castore import Store
from castore.file import gc

KEYS = 40


class _CountingSet(set[bytes]):
    """The live set, counting the elements anything copies or walks (a lookup is free)."""

    touched = 0

    def _walked(self) -> None:
        _CountingSet.touched += len(self)

    def __or__(self, other: Any) -> Any:
        self._walked()
        return set(self) | other

    def __ror__(self, other: Any) -> Any:
        self._walked()
        return other | set(self)

    def __iter__(self) -> Any:
        self._walked()
        return super().__iter__()

    def union(self, *others: Any) -> Any:
        self._walked()
        return set(self).union(*others)

    def copy(self) -> Any:
        self._walked()
        return set(self)


@pytest.mark.parametrize("dry_run", [True, False])
def test_gc_sweep_never_copies_the_live_set_per_log(tmp_path, monkeypatch, dry_run):
    store = Store(str(tmp_path / "s"), durable=False)
    for n in range(KEYS):  # one log per key, each holding a blob only it references
        store.set(f"k{n}", {"n": n, "pad": "x" * 300}, scope="custom", namespace="ns")
    made = gc._Sweep.__init__

    def counted(self: Any, path: str, live: set[bytes], *args: Any) -> None:
        made(self, path, _CountingSet(live), *args)

    monkeypatch.setattr(gc._Sweep, "__init__", counted)
    _CountingSet.touched = 0
    report = store.gc(grace_seconds=0, dry_run=dry_run)
    assert (report.blobs_found, report.blobs_kept) == (KEYS, KEYS)
    # Before the fix each of the 40 sweeps copied all 40 digests: 1,600.
    assert _CountingSet.touched == 0
    store.close()
