"""Damage is never absence, staleness or a repeated version (issue 7; FORMAT.md §7).

Each test builds a small store, damages it the way the issue found, and
compares every answer with what the undamaged store said.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from castore import ConflictError, CorruptionError, Store, codec
from castore.backends import upgrade
from castore.dagu import import_dagu
from castore.errors import FormatVersionError
from castore.file.frames import scan_frames
from castore.file.records import KIND_ENTRY
from castore.transfer import export_lines, import_lines
from tests.helpers import (
    Cli,
    corrupt,
    file_id,
    keys_path,
    log_path,
    ns_dir,
    served_location,
)

DAG = "d"


def store_at(root: Path, **kw: Any) -> Store:
    return Store(root, dag=DAG, **kw)


def five_keys(root: Path) -> None:
    store = store_at(root)
    for n in range(1, 6):
        store.set(f"k{n}", {"i": n})


def flip_entry(root: Path, key: str, index: int) -> None:
    """Flip a bit in the middle of ``key``'s ``index``-th entry frame (0 = the first)."""
    path = log_path(root, "dag", DAG, key)
    with open(path, "rb") as fh:
        frames = list(scan_frames(fh.read()))
    entry = [f for f in frames if f.kind == KIND_ENTRY][index]
    corrupt(path, (entry.start + entry.end) // 2)


def newest_entry_middle(path: str) -> int:
    with open(path, "rb") as fh:
        frames = list(scan_frames(fh.read()))
    last = [f for f in frames if f.kind == KIND_ENTRY][-1]
    return (last.start + last.end) // 2


def test_the_issue_scenario_answers_damage_everywhere(tmp_path: Path) -> None:
    # Five keys set once; one byte flipped in the middle of k1's (only, newest) entry.
    root = tmp_path / "s"
    five_keys(root)
    path = log_path(root, "dag", DAG, "k1")
    corrupt(path, newest_entry_middle(path))
    with open(path, "rb") as fh:
        damaged = fh.read()
    with pytest.raises(CorruptionError, match=r"k1.*damaged bytes at offset"):
        store_at(root).get("k1")
    with pytest.raises(CorruptionError, match="nothing was written"):
        store_at(root).set("k1", {"i": 100}, expected_version=0)
    with open(path, "rb") as fh:
        assert fh.read() == damaged  # nothing appended, nothing cut
    for n in range(2, 6):  # other keys are never blocked
        assert store_at(root).get(f"k{n}").value == {"i": n}
    report = store_at(root).check()
    assert not report.ok
    assert any("damaged bytes" in f.problem for f in report.findings)
    repaired = store_at(root).check(repair=True)
    assert repaired.ok
    kept = glob.glob(str(root / "quarantine" / "*" / "refs" / "dag" / "*" / "*.log"))
    assert [Path(k).read_bytes() for k in kept] == [damaged]
    after = store_at(root).check()
    assert after.ok
    lost = [f for f in after.findings if "lost to damage" in f.problem]
    assert [f.severity for f in lost] == ["info"]  # kept reported, never plain ok
    entries = store_at(root).history("k1").entries
    assert [(e.operation, e.damaged_from or e.version) for e in entries] == [("damaged", 1)]
    with pytest.raises(CorruptionError, match="lost"):
        store_at(root).get("k1")
    res = store_at(root).set("k1", {"i": 100})
    assert res.version > 1  # above every version that existed
    assert store_at(root).get("k1").value == {"i": 100}


def test_a_damaged_key_answers_the_same_errors_over_a_server(tmp_path: Path) -> None:
    # Found by a review: over http://, a write to a key with damaged bytes after its newest
    # entry said what a read says, without "; nothing was written".
    root = tmp_path / "s"
    five_keys(root)
    store_at(root).set("k1", {"i": 10})
    path = log_path(root, "dag", DAG, "k1")
    corrupt(path, newest_entry_middle(path))
    with open(path, "rb") as fh:
        damaged = fh.read()
    calls: dict[str, Callable[[Store], object]] = {
        "get": lambda s: s.get("k1"),
        "set": lambda s: s.set("k1", 1),
        "delete": lambda s: s.delete("k1"),
        "incr": lambda s: s.incr("k1"),
        "rollback": lambda s: s.rollback("k1", to_version=1),
    }

    def answers(store: Store) -> dict[str, tuple[str, str]]:
        out = {}
        for name, call in calls.items():
            with pytest.raises(CorruptionError) as info:
                call(store)
            out[name] = (type(info.value).__name__, str(info.value))
        store.close()
        return out

    local = answers(store_at(root))
    assert all(m.endswith("nothing was written") for n, (_, m) in local.items() if n != "get")
    with served_location(contextlib.nullcontext(str(root))) as url:  # no server path sent
        assert answers(Store(url, dag=DAG)) == {
            name: (kind, message.replace(str(root), "<store>"))
            for name, (kind, message) in local.items()
        }
    with open(path, "rb") as fh:
        assert fh.read() == damaged


def test_cli_names_key_file_and_offset_with_exit_5(tmp_path: Path) -> None:
    root = tmp_path / "s"
    five_keys(root)
    path = log_path(root, "dag", DAG, "k3")
    corrupt(path, newest_entry_middle(path))
    cli = Cli(tmp_path, root, dag=DAG)
    for args in (["get", "k3"], ["set", "k3", "1", "--expected-version", "1"], ["history", "k3"]):
        message = cli.fail(5, *args)
        assert "dag/d/k3" in message
        assert os.path.basename(path) in message
        assert "offset" in message


def test_older_damaged_version_is_damaged_not_absent(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = store_at(root)
    for n in range(1, 5):
        store.set("k", {"n": n})
    flip_entry(root, "k", 1)
    store = store_at(root)
    assert store.get("k").version == 4  # the newest is intact: reads and writes go on
    with pytest.raises(CorruptionError):
        store.get("k", version=2)
    marked = [(e.version, e.operation) for e in store.history("k").entries]
    assert marked == [(4, "set"), (3, "set"), (2, "damaged"), (1, "set")]
    assert store.set("k", {"n": 5}, expected_version=4).version == 5
    store.check(repair=True)
    with pytest.raises(CorruptionError, match="lost"):
        store_at(root).get("k", version=2)
    assert store_at(root).get("k", version=3).value == {"n": 3}


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe castore", b"", b"castore-store\n", b"x" * 100_000, b"castore-store 9\n"],
    ids=["not-utf8", "empty", "no-version", "huge", "future"],
)
def test_damaged_format_is_one_clean_error(tmp_path: Path, content: bytes) -> None:
    root = tmp_path / "s"
    five_keys(root)
    (root / "FORMAT").write_bytes(content)
    with pytest.raises(FormatVersionError):
        store_at(root)
    assert "FORMAT" in Cli(tmp_path, root, dag=DAG).fail(1, "get", "k1")


def removed_key(root: Path) -> int:
    """``gone`` reaches version 3, is deleted (4) and removed by compaction."""
    store = store_at(root)
    for n in range(3):
        store.set("gone", n)
    store.delete("gone")
    store.compact(keep_within_seconds=0)
    assert (
        not os.path.exists(log_path(root, "dag", DAG, "gone")) or not store.history("gone").entries
    )
    return 4


def test_graves_record_survives_one_damaged_copy(tmp_path: Path) -> None:
    root = tmp_path / "s"
    last = removed_key(root)
    graves = os.path.join(ns_dir(root, "dag", DAG), "GRAVES")
    size = os.path.getsize(graves)
    corrupt(graves, size // 4)  # inside the first copy
    assert store_at(root).set("gone", "back").version == last + 1
    assert store_at(root).check().ok


def test_graves_lost_entirely_keeps_versions_above_a_floor(tmp_path: Path) -> None:
    root = tmp_path / "s"
    last = removed_key(root)
    graves = os.path.join(ns_dir(root, "dag", DAG), "GRAVES")
    with open(graves, "r+b") as fh:
        fh.write(bytes(os.path.getsize(graves)))  # both copies zeroed
    with pytest.raises(CorruptionError, match="GRAVES"):
        store_at(root).set("gone", "back")
    assert not store_at(root).check().ok
    assert store_at(root).check(repair=True).ok
    floor = [f for f in store_at(root).check().findings if "floor" in f.problem]
    assert [f.severity for f in floor] == ["info"]
    assert store_at(root).set("gone", "back").version > last


def test_import_never_reuses_a_removed_keys_versions(tmp_path: Path) -> None:
    root = tmp_path / "s"
    removed_key(root)
    source = store_at(tmp_path / "src")
    source.set("gone", "imported")
    lines = list(export_lines(source))
    with pytest.raises(ConflictError, match="repeat"):
        import_lines(store_at(root), lambda: lines)
    assert store_at(root).set("gone", "later").version == 5


def test_a_write_whose_fdatasync_fails_is_never_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    store = store_at(root)
    store.set("k", 1)
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="injected"):
        store.set("k", 2)
    monkeypatch.setattr(os, "fdatasync", real)
    assert store_at(root).get("k").version == 1  # the failed version is not visible
    assert store.set("k", 3).version == 2  # and its number is free: it never existed


def test_blob_index_failure_after_the_commit_is_not_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    store = store_at(root)
    big = {"pad": "x" * 400}  # indexed for deduplication (>= 256 bytes)
    real_open = os.open

    def no_space_for_the_index(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if str(path).endswith(".idx"):
            raise OSError(errno.ENOSPC, "injected")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", no_space_for_the_index)
    res = store.set("k", big)  # committed: must succeed, not raise
    monkeypatch.setattr(os, "open", real_open)
    assert res.version == 1
    assert store_at(root).get("k").value == big
    assert store_at(root).set("k", big).version == 2


def test_keys_damage_never_hides_a_key(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = store_at(root)
    for key in ("alpha", "beta", "gamma"):
        store.set(key, 1)
    path = keys_path(root, "dag", DAG)
    with open(path, "rb") as fh:
        data = fh.read()
    line = b"beta".hex().encode()
    at = data.index(line)
    # '6' -> '7' keeps the line valid hex: it now names another key.
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(bytes([line[0] ^ 0x01]))
    listed = [e.key for e in store_at(root).list().entries]
    assert listed == ["alpha", "beta", "gamma"]
    assert not store_at(root).check().ok  # the key missing from KEYS is reported


def test_upgrade_converts_a_format_1_store(tmp_path: Path) -> None:
    root = tmp_path / "s"
    nsdir = Path(ns_dir(root, "dag", DAG))
    nsdir.mkdir(parents=True)
    (root / "FORMAT").write_text("castore-store 1\n")
    (nsdir / "GRAVES").write_bytes(b"%s 7\n%s 3\n" % (b"gone".hex().encode(), b"x".hex().encode()))
    with pytest.raises(FormatVersionError, match="castore upgrade"):
        store_at(root)
    report = upgrade(str(root))
    assert (report.from_version, report.to_version, report.graves_converted) == (1, 2, 1)
    assert store_at(root).set("gone", 1).version == 8
    assert store_at(root).set("x", 1).version == 4
    assert upgrade(str(root)).graves_converted == 0  # idempotent
    assert file_id("gone") + ".log" in os.listdir(nsdir)


def test_import_dagu_skips_a_record_that_would_repeat_a_removed_version(tmp_path: Path) -> None:
    root = tmp_path / "s"
    removed_key(root)  # "gone" reached version 4 and was removed
    ns = tmp_path / "dagu" / "v1" / "dag" / DAG.encode().hex()
    ns.mkdir(parents=True)
    record = (
        b'{"version":2,"hash":"%s","value":1,"created_at":"2026-01-01T00:00:00Z",'
        b'"updated_at":"2026-01-01T00:00:00Z"}'
    )
    (ns / (b"gone".hex() + ".json")).write_bytes(record % codec.hexdigest(b"1").encode())
    outcomes = list(import_dagu(store_at(root), str(tmp_path / "dagu")))
    assert [o.status for o in outcomes] == ["skipped"]
    assert "repeat" in outcomes[0].reason
    assert store_at(root).set("gone", 2).version == 5


def test_recorded_losses_survive_export_and_import(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = store_at(root)
    for n in range(1, 5):
        store.set("k", {"n": n})
    flip_entry(root, "k", 1)
    store_at(root).check(repair=True)
    lines = list(export_lines(store_at(root)))
    assert any(b'"op":"damaged"' in line for line in lines)
    copy = store_at(tmp_path / "copy")
    import_lines(copy, lambda: lines)
    assert list(export_lines(store_at(tmp_path / "copy"))) == lines  # byte-identical
    with pytest.raises(CorruptionError, match="lost"):
        store_at(tmp_path / "copy").get("k", version=2)
    assert store_at(tmp_path / "copy").set("k", {"n": 5}).version == 5


def test_a_write_completed_and_indexed_during_a_scan_is_not_a_cut(tmp_path, monkeypatch):
    """A lock-free reader that found a half-written tail, then an index naming that version,
    confirms under the log's lock before calling it cut: the writer finished meanwhile and
    another reader indexed its version (threads found this as a false CorruptionError)."""
    from castore.file import logread, versionindex

    store = store_at(tmp_path, durable=False)
    for n in range(1, 4):
        store.set("k", {"n": n})
    path = log_path(tmp_path, "dag", DAG, "k")
    before = os.path.getsize(path)
    store.set("k", {"n": 4})
    whole = Path(path).read_bytes()
    os.truncate(path, before + 10)  # v4's frames half-written, as a reader may see them
    real_scan = logread.scan

    def scan_while_the_writer_finishes(fd: int) -> Any:
        found = real_scan(fd)
        Path(path).write_bytes(whole)  # the append completes ...
        vix = versionindex.vix_path(path)  # ... and another reader indexes version 4
        Path(vix).write_bytes(versionindex.rebuild(list(scan_frames(whole))))
        return found

    monkeypatch.setattr(logread, "scan", scan_while_the_writer_finishes)
    fresh = store_at(tmp_path, durable=False)
    assert [e.version for e in fresh.history("k").entries] == [4, 3, 2, 1]
