"""STATE files that are not this namespace's own, or that name keys only in a snapshot.

Found by mutation testing of castore/file/staterecords.py: a ``STATE`` whose
first frame names the right namespace in another scope was trusted once its
scope went unchecked, and a ``STATE`` whose keys are all in one snapshot
(as a rewrite leaves it) passed for one that names no key once the rows of
snapshots went unread; every other test let both pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from castore import Store
from castore.file.frames import encode_frame
from castore.file.staterecords import (
    ENCODE,
    KIND_SNAPSHOT,
    Row,
    boot_id,
    epoch_frame,
    whole_file,
)
from tests.helpers import keys_path, ns_dir

pytestmark = pytest.mark.integration


def test_the_same_namespaces_state_from_another_scope_is_not_trusted(tmp_path: Path) -> None:
    """Oracle: the key's own log (version 1), as with no STATE copied in."""
    root = tmp_path / "store"
    store = Store(root, dag="n")
    assert store.set("k", {"dag": 1}).version == 1
    for v in range(5):
        store.set("k", {"global": v}, scope="global", namespace="n")
        store.set("x", v, scope="global", namespace="n")
    store.list()
    store.list(scope="global", namespace="n")  # each settles its keys in its own STATE
    store.close()
    mine, theirs = (Path(ns_dir(root, scope, "n")) for scope in ("dag", "global"))
    (mine / "STATE").write_bytes((theirs / "STATE").read_bytes())
    fresh = Store(root, dag="n")
    assert fresh.get("k").value == {"dag": 1}  # never refused as behind the other's version 5
    assert [(e.key, e.version) for e in fresh.list().entries] == [("k", 1)]
    assert fresh.get("x").found is False
    assert fresh.check(repair=True).ok
    assert fresh.set("k", 2).version == 2  # never a version past the other scope's
    fresh.close()


def test_a_lost_namespace_whose_state_names_its_keys_in_a_snapshot_is_reported(
    tmp_path: Path,
) -> None:
    """KEYS, logs and indexes lost; STATE left as a rewrite makes it (its first frame, then
    one snapshot of the rows): the keys were written, so the namespace is reported."""
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set("a", 1, namespace="ns2")
    store.close()
    nsdir = Path(keys_path(root, "dag", "ns2")).parent
    for path in nsdir.iterdir():
        path.unlink()
    rows = ENCODE([Row("a", 1, "0" * 64)])
    body = epoch_frame(boot_id(), "dag", "ns2") + encode_frame(KIND_SNAPSHOT, rows)
    (nsdir / "STATE").write_bytes(whole_file(body))
    report = Store(root, dag="d").check()
    assert not report.ok
    assert "KEYS does not name its namespace" in [f.problem for f in report.findings]
