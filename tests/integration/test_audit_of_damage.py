"""``audit`` of a directory store whose log is damaged and not yet repaired.

Oracle: an undamaged copy of the store, whose audit is the same but for the
damaged version, and the contract (docs/CLI.md, audit): newest first, ``--since``
and ``--until`` inclusive bounds on each record's write time.
"""

from __future__ import annotations

import pathlib
import shutil
import time

import pytest

from castore import Store
from castore.audit import audit
from castore.file.records import KIND_ENTRY, decode_entry
from tests.helpers import corrupt, frames_of, ref_log_path

pytestmark = pytest.mark.integration


def _damage_version(store: Store, key: str, version: int) -> None:
    path = ref_log_path(store, key)
    frames, _ = frames_of(path)
    (frame,) = [
        f for f in frames if f.kind == KIND_ENTRY and decode_entry(f.payload).version == version
    ]
    corrupt(path, (frame.start + frame.end) // 2)


def test_a_damaged_middle_version_hides_no_intact_version_from_a_time_bounded_audit(
    tmp_path: pathlib.Path,
) -> None:
    # Found by the audit review: history shows the damaged range as an entry timed 0
    # (1970), and audit stops a key's walk at its first entry older than since=:
    # since= version 1's time printed versions 5 and 4 only (exit 0), and without
    # a bound the entry came out of newest-first order.
    root = tmp_path / "store"
    store = Store(root, dag="d", durable=False)
    for n in range(1, 6):
        store.set("k", n)
        if n == 2:
            time.sleep(0.002)
            store.set("other", 1)  # between k's versions 2 and 3
    shutil.copytree(root, tmp_path / "twin")
    _damage_version(store, "k", 3)
    damaged = Store(root, dag="d", durable=False)
    twin = Store(tmp_path / "twin", dag="d", durable=False)
    want = [(r.key, r.version, r.time_ns) for r in audit(twin)]
    got = [(r.key, r.version, r.time_ns) for r in audit(damaged)]
    assert [r for r in got if r[:2] != ("k", 3)] == [r for r in want if r[:2] != ("k", 3)]
    assert [t for *_, t in got] == sorted((t for *_, t in got), reverse=True)
    for _, _, bound in want:
        expect = [(k, v) for k, v, t in want if t >= bound and (k, v) != ("k", 3)]
        seen = [(r.key, r.version) for r in audit(damaged, since_ns=bound)]
        assert [x for x in seen if x != ("k", 3)] == expect, bound
        expect = [(k, v) for k, v, t in want if t <= bound and (k, v) != ("k", 3)]
        seen = [(r.key, r.version) for r in audit(damaged, until_ns=bound)]
        assert [x for x in seen if x != ("k", 3)] == expect, bound
    marker = next(r for r in audit(damaged) if r.key == "k" and r.version == 3)
    assert marker.operation == "damaged"
    assert damaged.check(repair=True).ok
    repaired = next(  # the repair's marker: the same time, its neighbour's
        r for r in audit(damaged) if r.key == "k" and r.version == 3
    )
    assert repaired.time_ns == marker.time_ns
