"""Damage and races the twentieth session's review of check and repair found.

Each answer on a damaged store is compared with the same call on an undamaged
copy: equal, or ``CorruptionError``, never an older version or "not found".
"""

from __future__ import annotations

import pathlib
from typing import Any, Final

import pytest

from castore import CorruptionError, NotFoundError, Store
from castore.file import checklog
from castore.file.frames import scan_frames
from tests.helpers import keys_path, log_path, ns_dir

pytestmark = pytest.mark.integration

DAG: Final = "d"


def _answer(store: Store, key: str, version: int | None = None) -> Any:
    try:
        found = store.get(key, version=version)
    except (CorruptionError, NotFoundError) as exc:
        return type(exc).__name__
    return (found.version, found.value)


def _three(root: pathlib.Path) -> str:
    """Versions 1..3 of k (values big enough to be blob frames of their own); its log."""
    store = Store(root, dag=DAG)
    for n in (1, 2, 3):
        store.set("k", {"n": n, "pad": "x" * 300})
    store.close()
    return log_path(root, "dag", DAG, "k")


@pytest.mark.parametrize("kind", "BCH")
@pytest.mark.parametrize("which", [2, 3])
def test_an_entry_whose_kind_byte_was_damaged_is_never_read_past(tmp_path, which, kind):
    # Found by a review: an E frame whose kind byte became B, C or H passed for a
    # damaged frame of that kind, which "hides no version": get answered version 2
    # after 3, and after check --repair the next set gave version 3 again.
    intact, damaged = tmp_path / "intact", tmp_path / "damaged"
    _three(intact)
    log = _three(damaged)
    data = bytearray(pathlib.Path(log).read_bytes())
    entries = [f for f in scan_frames(bytes(data)) if f.kind == ord("E")]
    data[entries[which - 1].start + 4] = ord(kind)  # the checksum covers this byte
    pathlib.Path(log).write_bytes(bytes(data))
    twin, store = Store(intact, dag=DAG), Store(damaged, dag=DAG)
    for version in (None, 1, 2, 3):
        got, want = _answer(store, "k", version), _answer(twin, "k", version)
        if version == which or (version is None and which == 3):
            assert got == "CorruptionError", (version, got)
        else:
            assert got in (want, "CorruptionError"), (version, got)
    assert not store.check().ok
    store.check(repair=True)
    assert _answer(store, "k", which) == "CorruptionError"  # recorded as lost
    assert store.set("k", 4).version == twin.set("k", 4).version == 4  # never 3 again


def test_a_repair_on_a_log_another_repair_rewrote_changes_nothing(tmp_path, monkeypatch):
    # Found by a review: two repairs at once; the second rewrote the first's result
    # from its own, older reading, and its quarantine copy (same second) replaced
    # the first's copy of the original bytes.
    root = tmp_path / "store"
    log = _three(root)
    data = bytearray(pathlib.Path(log).read_bytes())
    blobs = [f for f in scan_frames(bytes(data)) if f.kind == ord("B")]
    data[blobs[0].start + 10] ^= 0xFF
    pathlib.Path(log).write_bytes(bytes(data))
    original = bytes(data)
    real = checklog.LogChecker.repair_log
    first: list[bool] = []

    def racing(self: checklog.LogChecker, *args: Any, **kw: Any) -> None:
        if not first:  # another repair runs to its end between this one's read and rewrite
            first.append(True)
            Store(root, dag=DAG).check(repair=True)
        real(self, *args, **kw)

    monkeypatch.setattr(checklog.LogChecker, "repair_log", racing)
    report = Store(root, dag=DAG).check(repair=True)
    assert ("the log changed while check read it", False) in {
        (f.problem, f.repaired) for f in report.findings
    }
    copies = [p.read_bytes() for p in (root / "quarantine").rglob("*.log")]
    assert copies == [original]  # one copy: the original bytes, kept
    monkeypatch.undo()
    assert Store(root, dag=DAG).check().ok
    assert Store(root, dag=DAG).get("k").value == {"n": 3, "pad": "x" * 300}


@pytest.mark.parametrize("third", ["c", "d"], ids=["into-a-key", "into-no-key"])
@pytest.mark.parametrize("region", ["tail", "sorted"])
def test_a_keys_line_turned_into_another_key_hides_no_key(tmp_path, region, third):
    # Found by a review: one bit flipped in b's line of KEYS ("62" -> "63") named c
    # twice: list showed a and c, and list --prefix b nothing; and where no key c
    # exists (found by the review of that fix), list --prefix b still showed nothing.
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    for key in ("a", "b", third):
        store.set(key, 1)
    if region == "sorted":
        store.set("gone", 1)
        store.delete("gone")
        store.compact(keep_within_seconds=0)  # rewrites KEYS with every line sorted
    store.close()
    path = pathlib.Path(keys_path(root, "dag", DAG))
    data = path.read_bytes()
    assert data.count(b"\n62\n") == 1
    path.write_bytes(data.replace(b"\n62\n", b"\n63\n"))
    fresh = Store(root, dag=DAG)
    assert [e.key for e in fresh.list().entries] == ["a", "b", third]
    assert [e.key for e in Store(root, dag=DAG).list(prefix="b").entries] == ["b"]


def test_a_repair_still_repairs_a_log_a_writer_appended_to_meanwhile(tmp_path, monkeypatch):
    # Found by a review of the fix above: any append between check's read and its
    # rewrite made the repair give up, so a damaged key that is written often was
    # never repaired; and a finding recorded before the rewrite still said repaired.
    root = tmp_path / "store"
    log = _three(root)
    data = bytearray(pathlib.Path(log).read_bytes())
    blobs = [f for f in scan_frames(bytes(data)) if f.kind == ord("B")]
    data[blobs[0].start + 10] ^= 0xFF  # version 1's value: lost
    pathlib.Path(log).write_bytes(bytes(data))
    real = checklog.LogChecker.repair_log

    def appended(self: checklog.LogChecker, *args: Any, **kw: Any) -> None:
        Store(root, dag=DAG).set("k", {"n": 4})  # a writer, between the read and the rewrite
        real(self, *args, **kw)

    monkeypatch.setattr(checklog.LogChecker, "repair_log", appended)
    report = Store(root, dag=DAG).check(repair=True)
    monkeypatch.undo()
    assert all(f.repaired for f in report.findings if f.severity == "error"), report.findings
    after = Store(root, dag=DAG)
    assert after.check().ok
    assert after.get("k").value == {"n": 4}
    assert _answer(after, "k", 1) == "CorruptionError"  # lost, and recorded so
    assert _answer(after, "k", 2) == (2, {"n": 2, "pad": "x" * 300})


def test_another_namespace_s_state_copied_in_is_not_trusted(tmp_path):
    # Found by a review of STATE: a STATE copied from namespace m into n was trusted:
    # n's list showed m's version and hash of k, and check --repair then recorded
    # versions of n's healthy k as lost.
    root = tmp_path / "store"
    mine, theirs = Store(root, dag="n"), Store(root, dag="m")
    mine.set("k", {"n": 1})
    for v in range(5):
        theirs.set("k", {"m": v})
        theirs.set("x", v)
    for store in (mine, theirs):  # each list settles its keys in its namespace's STATE
        store.list()
        store.close()
    n_dir, m_dir = (pathlib.Path(ns_dir(root, "dag", ns)) for ns in ("n", "m"))
    (n_dir / "STATE").write_bytes((m_dir / "STATE").read_bytes())
    fresh = Store(root, dag="n")
    want = mine.get("k")
    assert [(e.key, e.version, e.hash) for e in fresh.list().entries] == [
        ("k", want.version, want.hash)
    ]
    assert fresh.get("x").found is False
    assert fresh.check(repair=True).ok
    assert Store(root, dag="n").get("k").value == {"n": 1}
    assert Store(root, dag="n").set("x", 1).version == 1
