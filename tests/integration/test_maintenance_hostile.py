"""Maintenance (gc, compaction, stats, check) on damaged and hostile stores.

Found by the twentieth session's review of gc and compaction; each case is
compared with the same commands on an undamaged store where one applies.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Final

import msgspec
import pytest

from castore import Store
from castore.file.frames import encode_frame
from castore.file.records import KIND_ENTRY, decode_entry, encode_record
from tests.helpers import CASTORE_PATH, Cli, frames_of, one_line_error

pytestmark = pytest.mark.integration

DAG: Final = "d"
WIDE: Final = 10**12  # versions one damaged entry stands for: no list of them fits in memory


def _removed_key(root: pathlib.Path) -> pathlib.Path:
    """A store whose key k (versions 1..6) compaction removed; its namespace's GRAVES path."""
    store = Store(root, dag=DAG)
    for n in range(5):
        store.set("k", {"n": n})
    store.delete("k")
    store.compact(keep_within_seconds=0)
    store.close()
    (graves,) = root.glob("refs/dag/*/GRAVES")
    return graves


@pytest.mark.parametrize("damage", ["lost", "emptied"])
def test_gc_keeps_a_removed_key_s_log_while_it_is_the_only_record_of_its_versions(tmp_path, damage):
    # gc removed the log (its compaction frame) although GRAVES no longer held the
    # key's last version: check then said ok and the next set gave version 1 again.
    intact, damaged = tmp_path / "intact", tmp_path / "damaged"
    _removed_key(intact)
    graves = _removed_key(damaged)
    if damage == "lost":
        graves.unlink()
    else:
        os.truncate(graves, 0)
    for root in (intact, damaged):
        assert Cli(tmp_path, root).run("gc").returncode == 0
    assert Cli(tmp_path, intact).run("check").returncode == 0
    assert Cli(tmp_path, damaged).run("check").returncode == 1  # still reported
    assert Cli(tmp_path, damaged).run("check", "--repair").returncode == 0
    assert Cli(tmp_path, damaged).run("gc").returncode == 0  # now it may go
    assert list(damaged.glob("refs/dag/*/*.log")) == []
    assert Cli(tmp_path, damaged).run("check").returncode == 0
    for root in (intact, damaged):
        assert Store(root, dag=DAG).set("k", 1).version == 7


def test_an_entry_whose_hash_is_no_digest_is_damage_not_a_traceback(tmp_path):
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    store.set("k", {"a": 1})
    store.close()
    (log,) = root.glob("refs/dag/*/*.log")
    entry = {"version": 2, "op": "set", "time_ns": 5, "hash": "zz", "size": 1}
    with log.open("ab") as fh:  # an intact frame (its checksum holds) with a bad hash
        fh.write(encode_frame(ord("E"), json.dumps(entry).encode()))
    cli = Cli(tmp_path, root, dag=DAG)
    for command in (["get", "k"], ["gc"], ["stats"], ["history", "k"]):
        assert "hash 'zz' is not a sha256 digest" in one_line_error(cli.run(*command), 5)
    report = json.loads(cli.run("check").stdout)
    assert not report["ok"]


@pytest.mark.parametrize(
    ("field", "number"),
    [
        ("time_ns", 0),
        ("time_ns", -1),
        ("time_ns", 2**63),
        ("created_ns", -1),
        ("created_ns", 2**63),
    ],
)
def test_an_entry_timed_out_of_range_is_damage_not_a_time(tmp_path, field, number):
    """Was (the time review): an intact entry frame timed -1, 0 or 2**63 was served and
    printed (``1969-12-31T23:59:59.999999999Z``), ``check`` said ok, and ``export``
    wrote a line ``import`` refuses (exit 2): the key could not move. Oracle: PostgreSQL,
    where such a row is ``corrupt store: … out of range`` (exit 5) and check reports it."""
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    store.set("k", 1)
    store.set("k", 2)
    store.close()
    (log,) = root.glob("refs/dag/*/*.log")
    frames = [f for f in frames_of(log)[0] if f.kind == KIND_ENTRY]
    newest = frames[-1]  # last in the log: rewriting it moves no other frame
    entry = msgspec.structs.replace(decode_entry(newest.payload), **{field: number})
    with log.open("r+b") as fh:
        fh.truncate(newest.start)
        fh.seek(newest.start)
        fh.write(encode_frame(KIND_ENTRY, encode_record(entry)))  # its checksum holds
    cli = Cli(tmp_path, root, dag=DAG)
    said = f"version 2's time {entry.time_ns} or creation time {entry.created_ns} is out of range"
    for command in (["get", "k"], ["history", "k"], ["audit"], ["set", "k", "3"]):
        assert said in one_line_error(cli.run(*command), 5)
    export = cli.run("export")  # its header line is out before the key is read
    assert (export.returncode, export.stdout.count(b"\n")) == (5, 1)
    assert said in export.stderr.decode()
    report = json.loads(cli.run("check").stdout)
    assert not report["ok"]


_CAPPED: Final = (  # the CLI in a process limited to 1 GiB of address space
    "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
    "sys.argv[0] = 'castore'; runpy.run_module('castore', run_name='__main__')"
)


def _capped(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(CASTORE_PATH), "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-c", _CAPPED, *args],
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def _wide_export(path: pathlib.Path) -> None:
    value_hash = "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"  # of 1
    lines: list[dict[str, Any]] = [
        {"format": "castore-export", "version": 1},
        {"scope": "dag", "namespace": DAG, "key": "k", "version": WIDE, "op": "damaged",
         "damaged_from": 1, "time_ns": 10, "audit": {"reason": "lost"}},
        {"scope": "dag", "namespace": DAG, "key": "k", "version": WIDE + 1, "op": "set",
         "time_ns": 11, "created_ns": 11, "hash": value_hash, "audit": {}, "value": 1},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_compacting_a_damaged_range_of_any_width_costs_its_bounds(tmp_path, store_location):
    # Compaction listed every version of a range: a two-line import standing for
    # 10^8 versions made compact die with MemoryError; each later read too.
    export = tmp_path / "wide.jsonl"
    _wide_export(export)
    loc = str(store_location)
    assert _capped("--dir", loc, "import", str(export), cwd=tmp_path).returncode == 0
    compacted = _capped("--dir", loc, "compact", "--keep-last", "1", cwd=tmp_path)
    assert compacted.returncode == 0, compacted.stderr
    assert json.loads(compacted.stdout)["versionsDropped"] == 1
    cli = Cli(tmp_path, loc, dag=DAG)
    assert json.loads(cli.run("get", "k").stdout)["value"] == 1
    for version in (1, WIDE // 2, WIDE):
        found = cli.run("get", "k", "--version", str(version))
        assert "was compacted" in one_line_error(found, 4)
    assert [e["version"] for e in json.loads(cli.run("history", "k").stdout)["entries"]] == [
        WIDE + 1
    ]
    assert cli.run("check").returncode == 0
    assert Store(loc, dag=DAG).set("k", 2).version == WIDE + 2


def test_gc_passes_over_a_deep_tree_planted_in_the_store(tmp_path):
    root = tmp_path / "store"
    store = Store(root, dag=DAG)
    store.set("k", 1)
    store.close()
    top = os.open(root, os.O_RDONLY)
    os.mkdir("quarantine", dir_fd=top)
    folder = os.open("quarantine", os.O_RDONLY, dir_fd=top)
    os.close(top)
    for _ in range(1_100):  # deeper than Python's recursion limit
        os.mkdir("a", dir_fd=folder)
        inner = os.open("a", os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = inner
    os.close(folder)
    try:
        cli = Cli(tmp_path, root, dag=DAG)
        done = cli.run("gc")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["leftoversRemoved"] == 0
        assert cli.run("check").returncode == 0
        assert Store(root, dag=DAG).get("k").value == 1
    finally:
        _remove_deep(root / "quarantine")


def _remove_deep(top: pathlib.Path) -> None:
    """Remove a chain of nested ``a`` folders bottom up (shutil.rmtree recurses per level)."""
    chain = [top]
    while (chain[-1] / "a").is_dir():
        chain.append(chain[-1] / "a")
    for folder in reversed(chain):
        folder.rmdir()
