"""``castore gc / compact / check / stats`` through a subprocess (docs/CLI.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from castore import Store
from tests.helpers import frames_of, log_path

pytestmark = pytest.mark.integration

ROOT: Final = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS: Final = 60
DAG: Final = "daily"

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
SCOPE_FIELDS: Final = [
    "keys",
    "deletedKeys",
    "versions",
    "blobs",
    "storedBytes",
    "logicalBytes",
    "reclaimableBytes",
]


class CLI:
    """Runs ``python -m castore`` on a store in ``tmp_path``, isolated from the host."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.dir = tmp_path / "store"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "LC_ALL": "C.UTF-8",
        }

    def run(self, *args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "castore",
                "--dir",
                str(self.dir),
                "--dag",
                DAG,
                *map(str, args),
            ],
            input=stdin,
            capture_output=True,
            env=self.env,
            cwd=self.tmp,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )

    def ok(self, *args: str | Path) -> dict[str, Any]:
        proc = self.run(*args)
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr)
        assert proc.stderr == b"", proc.stderr  # not a terminal: no progress bar, nothing else
        assert proc.stdout.endswith(b"\n")
        assert proc.stdout.count(b"\n") == 1, proc.stdout
        out: dict[str, Any] = json.loads(proc.stdout)
        return out

    def fail(self, code: int, *args: str | Path) -> str:
        proc = self.run(*args)
        err = proc.stderr.decode()
        assert proc.returncode == code, (args, proc.returncode, err)
        assert proc.stdout == b"", proc.stdout
        assert err.startswith("castore: "), err
        assert err.count("\n") == 1, err
        assert err.endswith("\n")
        return err

    def snapshot(self) -> dict[str, bytes]:
        out = {}
        for base, _dirs, files in os.walk(self.dir):
            for name in files:
                path = os.path.join(base, name)
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, self.dir)] = fh.read()
        return out


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def _fill(cli: CLI) -> None:
    """Key k (5 versions of 300+ bytes), other, and g in scope global; in-process (fast)."""
    store = Store(cli.dir, dag=DAG, durable=False)
    for n in range(5):
        store.set("k", {"n": n, "pad": "x" * 300})
    store.set("other", {"o": 1})
    store.set("g", 1, scope="global")
    store.close()


# -- gc -----------------------------------------------------------------------------------


def test_gc_output_fields_and_dry_run(cli):
    _fill(cli)
    empty = cli.ok("gc")
    assert list(empty) == GC_FIELDS
    assert empty["operation"] == "gc"
    assert (empty["dryRun"], empty["graceSeconds"]) == (False, 3600.0)
    assert (empty["blobsFreed"], empty["bytesFreed"], empty["logsRewritten"]) == (0, 0, 0)
    assert empty["blobsFound"] == empty["blobsKept"] == 7

    cli.ok("compact", "--keep-last", "1")
    saved = cli.snapshot()
    dry = cli.ok("gc", "--grace", "0", "--dry-run")
    assert list(dry) == GC_FIELDS
    assert (dry["dryRun"], dry["graceSeconds"]) == (True, 0.0)
    assert dry["blobsFreed"] == 4
    assert dry["bytesFreed"] > 0
    now = cli.snapshot()
    assert now.pop("gc.lock", b"") == b""
    saved.pop("gc.lock", None)
    assert now == saved

    real = cli.ok("gc", "--grace", "0s")
    assert real["dryRun"] is False
    for name in ("blobsFound", "blobsKept", "blobsFreed", "bytesFound", "bytesKept", "bytesFreed"):
        assert real[name] == dry[name], name
    assert real["bytesFound"] == real["bytesKept"] + real["bytesFreed"]
    assert real["blobsFound"] == real["blobsKept"] + real["blobsFreed"]
    assert real["logsRewritten"] == 1
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


@pytest.mark.parametrize("grace", ["abc", "-1", "5x", "", "1h30m", "--1"])
def test_gc_bad_grace_is_exit_2(cli, grace):
    Store(cli.dir, dag=DAG).set("k", 1)
    saved = cli.snapshot()
    err = cli.fail(2, "gc", f"--grace={grace}")
    assert "duration" in err or "grace" in err, err
    assert cli.snapshot() == saved


def test_gc_removes_old_leftovers(cli):
    cli.ok("set", "k", "1")
    leftover = cli.dir / "FORMAT.1.2.tmp"
    leftover.write_bytes(b"x")
    when = leftover.stat().st_mtime - 7200
    os.utime(leftover, (when, when))
    young = cli.dir / "FORMAT.3.4.tmp"
    young.write_bytes(b"y")
    assert cli.ok("gc", "--dry-run")["leftoversRemoved"] == 1
    assert leftover.exists()
    assert cli.ok("gc", "--grace", "1h")["leftoversRemoved"] == 1
    assert not leftover.exists()
    assert young.exists()


# -- compact --------------------------------------------------------------------------------


def test_compact_output_fields_dry_run_and_compacted_versions(cli):
    _fill(cli)
    saved = cli.snapshot()
    dry = cli.ok("compact", "--keep-last", "2", "--dry-run")
    assert list(dry) == COMPACT_FIELDS
    assert dry["operation"] == "compact"
    assert (dry["policy"], dry["dryRun"]) == ("keep-last 2", True)
    assert (dry["refsExamined"], dry["refsCompacted"], dry["versionsDropped"]) == (3, 1, 3)
    assert dry["keysRemoved"] == 0
    assert dry["bytesAfter"] < dry["bytesBefore"]
    assert cli.snapshot() == saved

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


def test_compact_policies_and_filters(cli):
    _fill(cli)
    cli.ok("set", "g", "2", "--scope", "global")
    within = cli.ok("compact", "--keep-within", "1h")
    assert within["policy"] == "keep-within 3600s"
    assert within["versionsDropped"] == 0
    both = cli.ok("compact", "--keep-last", "3", "--keep-within", "0s", "--prefix", "k")
    assert both["policy"] == "keep-last 3, keep-within 0s"
    assert (both["refsExamined"], both["versionsDropped"]) == (1, 2)
    scoped = cli.ok("compact", "--keep-last", "1", "--scope", "global")
    assert (scoped["refsExamined"], scoped["versionsDropped"]) == (1, 1)
    assert cli.ok("history", "other")["entries"][0]["version"] == 1
    custom = cli.ok("compact", "--keep-last", "1", "--scope", "custom", "--namespace", "none")
    assert custom["refsExamined"] == 0


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--prefix", "k"],
        ["--dry-run"],
        ["--keep-within", "soon"],
        ["--keep-last", "0"],
        ["--keep-last", "-2"],
        ["--keep-last", "x"],
        ["--keep-last", "1", "--scope", "nope"],
    ],
    ids=lambda a: " ".join(a) or "no-policy",
)
def test_compact_bad_policy_is_exit_2(cli, args):
    _fill(cli)
    saved = cli.snapshot()
    cli.fail(2, "compact", *args)
    assert cli.snapshot() == saved


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
    _fill(cli)
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


def _flip_middle(path: str, index: int) -> None:
    """Flip one bit in the middle of the ``index``-th frame of a log."""
    frames, _ = frames_of(path)
    victim = frames[index]
    with open(path, "r+b") as fh:
        fh.seek((victim.start + victim.end) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x40]))


def test_check_damaged_store_exits_1_with_its_report_then_repair(cli):
    _fill(cli)
    path = log_path(cli.dir, "dag", DAG, "k")
    _flip_middle(path, 4)  # H B1 E1 B2 [E2]: the second version's entry
    proc = cli.run("check")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.startswith("castore: ")
    assert err.count("\n") == 1, err
    assert proc.stdout.count(b"\n") == 1
    report = json.loads(proc.stdout)  # the report is printed even though it fails
    assert list(report) == CHECK_FIELDS
    assert report["ok"] is False
    assert report["findings"]
    for finding in report["findings"]:
        assert list(finding) == FINDING_FIELDS
        assert finding["repaired"] is False
    assert any(f["path"].endswith(os.path.basename(path)) for f in report["findings"])

    repaired = cli.ok("check", "--repair")
    assert repaired["ok"] is True
    damage = [f for f in repaired["findings"] if "damaged bytes" in f["problem"]]
    assert damage
    assert all(f["repaired"] for f in repaired["findings"])
    quarantined = list((cli.dir / "quarantine").rglob(os.path.basename(path)))
    assert len(quarantined) == 1
    after = cli.ok("check")
    assert after["ok"] is True
    # The lost version stays reported (as information), never plain ok.
    (lost,) = after["findings"]
    assert (lost["severity"], "versions 2-2 were lost to damage" in lost["problem"]) == (
        "info",
        True,
    )
    assert "quarantine/" in lost["problem"]
    # The damaged entry reads as damaged, never as "not found"; every other version reads.
    assert "lost" in cli.fail(5, "get", "k", "--version", "2")
    for version in (1, 3, 4, 5):
        assert cli.ok("get", "k", "--version", str(version))["value"]["n"] == version - 1
    history = cli.ok("history", "k")["entries"]
    assert [(e["version"], e["operation"]) for e in history] == [
        (5, "set"),
        (4, "set"),
        (3, "set"),
        (2, "damaged"),
        (1, "set"),
    ]
    assert cli.ok("set", "k", "6")["version"] == 6


def test_check_repair_records_a_lost_value(cli):
    # A blob whose only copy is damaged cannot be recovered: check --repair records
    # the version as lost (its entry stays, as "damaged", with its hash and audit),
    # every later check reports it as information, and reading it fails clearly.
    _fill(cli)
    path = log_path(cli.dir, "dag", DAG, "k")
    _flip_middle(path, 3)  # H B1 E1 [B2]: the second version's only copy
    before = json.loads(cli.run("check").stdout)
    assert before["ok"] is False
    assert any("version 2: value unreadable" in f["problem"] for f in before["findings"])
    report = cli.ok("check", "--repair")
    assert report["ok"] is True
    after = cli.ok("check")
    assert after["ok"] is True
    (lost,) = [f for f in after["findings"] if "lost to damage" in f["problem"]]
    assert lost["severity"] == "info"
    assert "versions 2-2" in lost["problem"]
    assert "quarantine/" in lost["problem"]
    err = cli.fail(5, "get", "k", "--version", "2")
    assert "lost" in err, err
    assert cli.ok("get", "k")["value"]["n"] == 4
    assert cli.ok("get", "k", "--version", "3")["value"]["n"] == 2
    (second,) = [e for e in cli.ok("history", "k")["entries"] if e["version"] == 2]
    assert (second["operation"], len(second["hash"])) == ("damaged", 64)


def test_check_torn_tail_then_repair(cli):
    _fill(cli)
    path = log_path(cli.dir, "dag", DAG, "other")
    with open(path, "ab") as fh:
        fh.write(b"\x07torn")
    proc = cli.run("check")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert [f["problem"] for f in report["findings"]] == [
        f"torn tail: 5 bytes at offset {os.path.getsize(path) - 5} "
        "(an append a crash cut short, never acknowledged)"
    ]
    assert cli.ok("check", "--repair")["ok"] is True
    assert cli.ok("check")["findings"] == []
    assert cli.ok("get", "other")["value"] == {"o": 1}


# -- stats ----------------------------------------------------------------------------------


def test_stats_fields_and_numbers(cli):
    _fill(cli)
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
    assert dag["storedBytes"] == sum(
        p.stat().st_size for p in (cli.dir / "refs" / "dag").rglob("*.log")
    )
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
    proc = subprocess.run(
        [sys.executable, "-m", "castore", "stats", "--dir", str(cli.dir)],
        capture_output=True,
        env=cli.env,
        cwd=cli.tmp,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert json.loads(proc.stdout)["total"]["keys"] == 1
