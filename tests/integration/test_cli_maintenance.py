"""``castore gc / compact / check / stats`` through a subprocess (docs/CLI.md)."""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Any, Final

import pytest

from castore import Store
from castore.backends import is_postgres
from castore.cli import main
from tests.helpers import Cli, json_line, underlying

pytestmark = pytest.mark.integration

DAG: Final = "daily"  # the cli fixture's --dag

GC_FIELDS: Final = [
    "operation",
    "dryRun",
    "graceSeconds",
    "blobsFound",
    "blobsKept",
    "blobsFreed",
    "bytesFound",
    "bytesKept",
    "bytesFreed",
    "logsRewritten",
    "logsRemoved",
    "leftoversRemoved",
]
COMPACT_FIELDS: Final = [
    "operation",
    "policy",
    "dryRun",
    "refsExamined",
    "refsCompacted",
    "versionsDropped",
    "keysRemoved",
    "bytesBefore",
    "bytesAfter",
]
CHECK_FIELDS: Final = ["operation", "ok", "logs", "entries", "blobs", "findings"]
FINDING_FIELDS: Final = ["path", "problem", "repair", "repaired", "severity"]
BAD_GRACES: Final = ["abc", "-1", "5x", "", "1h30m", "--1"]
BAD_POLICIES: Final = [
    [],
    ["--prefix", "k"],
    ["--dry-run"],
    ["--keep-within", "soon"],
    ["--keep-last", "0"],
    ["--keep-last", "-2"],
    ["--keep-last", "x"],
    ["--keep-last", "1", "--scope", "nope"],
]
SCOPE_FIELDS: Final = [
    "keys",
    "deletedKeys",
    "versions",
    "blobs",
    "storedBytes",
    "logicalBytes",
    "reclaimableBytes",
]


def fill(cli: Cli) -> None:
    """Key k (5 versions of 300+ bytes), other, and g in scope global; in-process (fast)."""
    assert cli.dir is not None
    store = Store(cli.dir, dag=DAG, durable=False)
    for n in range(5):
        store.set("k", {"n": n, "pad": "x" * 300})
    store.set("other", {"o": 1})
    store.set("g", 1, scope="global")
    store.close()


# -- gc -----------------------------------------------------------------------------------


def test_gc_output_fields_and_dry_run(cli):
    fill(cli)
    empty = cli.ok("gc")
    assert list(empty) == GC_FIELDS
    assert empty["operation"] == "gc"
    assert (empty["dryRun"], empty["graceSeconds"]) == (False, 3600.0)
    assert (empty["blobsFreed"], empty["bytesFreed"], empty["logsRewritten"]) == (0, 0, 0)
    # a database keeps values under 256 bytes in their version rows: only the 5 large ones
    # are blobs that gc can free; the file store has a blob frame for each of the 7 values
    on_postgres = is_postgres(underlying(str(cli.dir)))  # the store itself, or a server's
    assert empty["blobsFound"] == empty["blobsKept"] == (5 if on_postgres else 7)

    cli.ok("compact", "--keep-last", "1")
    dry = cli.ok("gc", "--grace", "0", "--dry-run")
    assert list(dry) == GC_FIELDS
    assert (dry["dryRun"], dry["graceSeconds"]) == (True, 0.0)
    assert dry["blobsFreed"] == 4
    assert dry["bytesFreed"] > 0
    assert cli.ok("gc", "--grace", "0", "--dry-run") == dry  # a dry run frees nothing

    real = cli.ok("gc", "--grace", "0s")
    assert real["dryRun"] is False
    for name in ("blobsFound", "blobsKept", "blobsFreed", "bytesFound", "bytesKept", "bytesFreed"):
        assert real[name] == dry[name], name
    assert real["bytesFound"] == real["bytesKept"] + real["bytesFreed"]
    assert real["blobsFound"] == real["blobsKept"] + real["blobsFreed"]
    # the file store rewrites the one log holding the freed blobs; a database has no logs
    assert real["logsRewritten"] == (0 if on_postgres else 1)
    again = cli.ok("gc", "--grace", "0")
    assert (again["blobsFreed"], again["logsRewritten"], again["logsRemoved"]) == (0, 0, 0)
    got = cli.ok("get", "k")
    assert (got["version"], got["value"]["n"]) == (5, 4)


@pytest.mark.parametrize(
    ("grace", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("12h", 43200.0), ("7d", 604800.0)],
)
def test_gc_grace_durations(cli, grace, seconds):
    Store(cli.dir, dag=DAG).set("k", 1)
    assert cli.ok("gc", "--grace", grace)["graceSeconds"] == seconds


@pytest.mark.parametrize("grace", BAD_GRACES)
def test_gc_bad_grace_is_exit_2(cli, grace):
    Store(cli.dir, dag=DAG).set("k", 1)
    err = cli.fail(2, "gc", f"--grace={grace}")
    assert "duration" in err or "grace" in err, err


# -- compact --------------------------------------------------------------------------------


def test_compact_output_fields_dry_run_and_compacted_versions(cli):
    fill(cli)
    dry = cli.ok("compact", "--keep-last", "2", "--dry-run")
    assert list(dry) == COMPACT_FIELDS
    assert dry["operation"] == "compact"
    assert (dry["policy"], dry["dryRun"]) == ("keep-last 2", True)
    assert (dry["refsExamined"], dry["refsCompacted"], dry["versionsDropped"]) == (3, 1, 3)
    assert dry["keysRemoved"] == 0
    assert dry["bytesAfter"] < dry["bytesBefore"]
    assert cli.ok("compact", "--keep-last", "2", "--dry-run") == dry  # nothing was dropped

    real = cli.ok("compact", "--keep-last", "2")
    assert real["dryRun"] is False
    for name in COMPACT_FIELDS[3:-1]:
        assert real[name] == dry[name], name
    assert abs(real["bytesAfter"] - dry["bytesAfter"]) <= 8  # entries get new blob offsets
    err = cli.fail(4, "get", "k", "--version", "1")
    assert "version 1 was compacted (keep-last 2, " in err, err
    assert cli.ok("get", "k", "--version", "4")["value"]["n"] == 3
    history = cli.ok("history", "k")
    assert [e["version"] for e in history["entries"]] == [5, 4]
    cli.fail(4, "rollback", "k", "--to-version", "2")


def test_a_compacted_version_names_the_compaction_that_dropped_it(cli):
    # Each run's policy and time, however many ran since, on every backend (a file store
    # once named the newest run for every version any run had dropped).
    fill(cli)  # k: versions 1-5
    assert cli.ok("compact", "--keep-last", "4", "--prefix", "k")["versionsDropped"] == 1
    time.sleep(0.01)
    assert cli.ok("compact", "--keep-last", "2", "--prefix", "k")["versionsDropped"] == 2
    first = cli.fail(4, "get", "k", "--version", "1")
    assert "version 1 was compacted (keep-last 4, " in first, first
    second = [cli.fail(4, "get", "k", "--version", str(version)) for version in (2, 3)]
    for version, message in zip((2, 3), second, strict=True):
        assert f"version {version} was compacted (keep-last 2, " in message, message
    assert first.rsplit(", ", 1)[1] < second[0].rsplit(", ", 1)[1]  # the times, RFC 3339
    # a key removed twice: its first life's versions name the first removal
    cli.ok("delete", "other")
    cli.ok("compact", "--keep-within", "0s", "--prefix", "other")
    cli.ok("set", "other", "2")
    cli.ok("delete", "other")
    cli.ok("compact", "--keep-within", "0.001", "--prefix", "other")
    old = cli.fail(4, "get", "other", "--version", "1")
    assert "version 1 was compacted (keep-within 0s, " in old, old
    new = cli.fail(4, "get", "other", "--version", "4")
    assert "version 4 was compacted (keep-within 0.001" in new, new


def test_compact_policies_and_filters(cli):
    fill(cli)
    cli.ok("set", "g", "2", "--scope", "global")
    within = cli.ok("compact", "--keep-within", "1h")
    assert within["policy"] == "keep-within 1h"
    assert within["versionsDropped"] == 0
    both = cli.ok("compact", "--keep-last", "3", "--keep-within", "0s", "--prefix", "k")
    assert both["policy"] == "keep-last 3, keep-within 0s"
    assert (both["refsExamined"], both["versionsDropped"]) == (1, 2)
    scoped = cli.ok("compact", "--keep-last", "1", "--scope", "global")
    assert (scoped["refsExamined"], scoped["versionsDropped"]) == (1, 1)
    assert cli.ok("history", "other")["entries"][0]["version"] == 1
    custom = cli.ok("compact", "--keep-last", "1", "--scope", "custom", "--namespace", "none")
    assert custom["refsExamined"] == 0


@pytest.mark.parametrize("args", BAD_POLICIES, ids=lambda a: " ".join(a) or "no-policy")
def test_compact_bad_policy_is_exit_2(cli, args):
    fill(cli)
    cli.fail(2, "compact", *args)


def test_compact_removes_an_old_deleted_key(cli):
    cli.ok("set", "gone", '{"a":1}')
    cli.ok("delete", "gone")
    cli.ok("set", "stays", "1")
    report = cli.ok("compact", "--keep-within", "0")
    assert report["keysRemoved"] == 1
    assert [e["key"] for e in cli.ok("list")["entries"]] == ["stays"]
    assert cli.ok("history", "gone")["entries"] == []
    again = cli.ok("set", "gone", "2")
    assert (again["version"], again["created"]) == (3, True)


# -- check ----------------------------------------------------------------------------------


def test_check_clean_store(cli):
    fill(cli)
    cli.ok("delete", "other")
    report = cli.ok("check")
    assert list(report) == CHECK_FIELDS
    assert report["operation"] == "check"
    assert (report["ok"], report["logs"], report["entries"], report["findings"]) == (
        True,
        3,
        8,
        [],
    )
    assert report["blobs"] == 7
    assert cli.ok("check", "--repair") == report


# -- stats ----------------------------------------------------------------------------------


def test_stats_fields_and_numbers(cli):
    fill(cli)
    cli.ok("delete", "other")
    stats = cli.ok("stats")
    assert list(stats) == ["operation", "scopes", "total"]
    assert stats["operation"] == "stats"
    assert sorted(stats["scopes"]) == ["dag", "global"]
    dag, glob, total = stats["scopes"]["dag"], stats["scopes"]["global"], stats["total"]
    for block in (dag, glob, total):
        assert list(block) == SCOPE_FIELDS
    pad = len(json.dumps({"n": 0, "pad": "x" * 300}, separators=(",", ":")))
    assert (dag["keys"], dag["deletedKeys"], dag["versions"], dag["blobs"]) == (1, 1, 7, 6)
    assert dag["logicalBytes"] == 5 * pad + len('{"o":1}')
    assert (glob["keys"], glob["versions"], glob["blobs"], glob["logicalBytes"]) == (1, 1, 1, 1)
    for name in SCOPE_FIELDS:
        assert total[name] == dag[name] + glob[name], name
    assert total["reclaimableBytes"] == 0
    cli.ok("compact", "--keep-last", "1")
    after = cli.ok("stats")["total"]
    assert after["reclaimableBytes"] > 0
    freed = cli.ok("gc", "--grace", "0")["bytesFreed"]
    assert freed == after["reclaimableBytes"]
    assert cli.ok("stats")["total"]["reclaimableBytes"] == 0


def test_maintenance_on_an_empty_store(cli):
    assert cli.ok("stats") == {
        "operation": "stats",
        "scopes": {},
        "total": dict.fromkeys(SCOPE_FIELDS, 0),
    }
    assert cli.ok("check")["ok"] is True
    assert cli.ok("gc")["blobsFound"] == 0
    assert cli.ok("compact", "--keep-last", "1")["refsExamined"] == 0


def test_store_options_after_the_command(cli):
    cli.ok("set", "k", "1")
    stats = json_line(cli.raw("stats", "--dir", cli.dir))
    assert stats["total"]["keys"] == 1


def test_check_counts_the_problems_left_not_the_harmless_findings(tmp_path):
    # Found by a review: 2 errors and 1 harmless finding said "3 problem(s) found".
    cli = Cli(tmp_path, tmp_path / "store", dag="d")
    for n in range(3):
        cli.ok("set", "k", str(n))
        cli.ok("set", "j", str(n))
    logs = sorted((tmp_path / "store").rglob("*.log"))
    for log in logs:
        data = bytearray(log.read_bytes())
        data[-20] ^= 0x55  # inside the newest entry: damage to an acknowledged record
        log.write_bytes(bytes(data))
    leftover = logs[0].parent / "leftover.tmp"
    leftover.write_bytes(b"")
    old = time.time() - 120  # a crash's leftover (a younger one may be a write in flight)
    os.utime(leftover, (old, old))
    proc = cli.run("check")
    findings = json.loads(proc.stdout)["findings"]
    assert sorted(f["severity"] for f in findings) == ["error", "error", "info"]
    assert proc.stderr.decode().strip() == "castore: 2 problem(s) found; see the report"


def _unreadable(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Make ``path`` unreadable to this process, as ``chmod 000`` does for a user not root."""
    real = os.open

    def opened(name: Any, flags: int, *args: Any, dir_fd: int | None = None, **kw: Any) -> int:
        given = os.fsdecode(name)
        if given == path or (dir_fd is not None and given == os.path.basename(path)):
            raise PermissionError(errno.EACCES, "Permission denied", given)
        return real(name, flags, *args, dir_fd=dir_fd, **kw)

    monkeypatch.setattr(os, "open", opened)


@pytest.mark.parametrize("repair", [False, True])
def test_an_unreadable_log_is_a_finding_and_the_rest_is_checked(
    tmp_path, monkeypatch, capsys, repair
):
    """Was: check stopped at the log with a bare ``Permission denied: <log>`` (review)."""
    root = tmp_path / "store"
    store = Store(root, dag="d")
    for key in ("a", "b"):
        store.set(key, key * 300)  # values the blob index leads to
    store.close()
    for shard in (root / "index").iterdir():  # stale: a repair rebuilds the index
        data = bytearray(shard.read_bytes())
        data[-5] ^= 0xFF
        shard.write_bytes(bytes(data))
    log = sorted(root.rglob("*.log"))[0]
    _unreadable(monkeypatch, str(log))
    argv = ["--dir", str(root), "check", *(["--repair"] if repair else [])]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert (report["logs"], report["entries"]) == (2, 1)  # the other log was checked
    problems = [(f["path"], f["problem"]) for f in report["findings"] if f["severity"] == "error"]
    rel = str(log.relative_to(root))
    expected = [(rel, "cannot be read (Permission denied): not checked")]
    if repair:
        expected.append(
            ("index", f"{rel} cannot be read (Permission denied): the blob index was not rebuilt")
        )
    assert problems == expected
    assert err == f"castore: {len(expected)} problem(s) found; see the report\n"


@pytest.mark.parametrize("command", [["stats"], ["check"], ["gc"], ["gc", "--dry-run"]])
def test_an_unknown_scope_before_a_command_that_takes_none_is_refused(cli, command):
    """Was: ``castore --scope bogus stats`` (or check, gc) ignored it, exit 0, every scope.

    Found by the review of stats across backends (thirty-eighth session): an option
    given before its command is accepted whatever the command, but its value is
    still checked, as the commands that take it check it.
    """
    cli.ok("set", "k", "1")
    assert cli.fail(2, "--scope", "bogus", *command) == 'invalid ref: unsupported scope "bogus"'
    assert cli.ok("--scope", " global ", *command)["operation"] == command[0]  # trimmed
    assert cli.ok("get", "k")["version"] == 1
