"""The command line on a file store: what it leaves in, and reads from, the store's files.

The behaviour of the commands, on every backend, is in test_cli.py,
test_cli_history.py and test_cli_maintenance.py; these tests look at the
files of the file backend (docs/FORMAT.md): default directories, what is not
a store, that reads create none, permissions, logs, leftovers, damage, and
that failed or dry runs change no byte.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Final

import pytest

from castore.codec import normalize
from tests.helpers import (
    Cli,
    assert_modes,
    corrupt,
    frames_of,
    json_line,
    log_path,
    one_line_error,
    paths_below,
    snapshot,
)
from tests.integration.test_cli import INVALID_INPUT
from tests.integration.test_cli_maintenance import (
    BAD_GRACES,
    BAD_POLICIES,
    CHECK_FIELDS,
    FINDING_FIELDS,
    fill,
)

pytestmark = pytest.mark.integration

DAG: Final = "daily"  # the cli fixture's --dag


@pytest.fixture
def store_location(store_dir: Path) -> Path:
    """A plain store directory (not the backend-parametrized location)."""
    return store_dir


# -- locations --------------------------------------------------------------------------------


def test_store_directory_defaults(cli, tmp_path):
    castore_dir = tmp_path / "from-castore-dir"
    xdg = tmp_path / "xdg"
    home_store = cli.home / ".local" / "share" / "castore"

    assert json_line(cli.raw("--dag", "d", "set", "k", "1", env={"CASTORE_DIR": str(castore_dir)}))
    assert (castore_dir / "FORMAT").is_file()

    env = {"XDG_DATA_HOME": str(xdg)}
    assert json_line(cli.raw("--dag", "d", "set", "k", "2", env=env))
    assert (xdg / "castore" / "FORMAT").is_file()

    assert json_line(cli.raw("--dag", "d", "set", "k", "3"))
    assert (home_store / "FORMAT").is_file()

    both = {"CASTORE_DIR": str(castore_dir), "XDG_DATA_HOME": str(xdg)}
    assert json_line(cli.raw("--dag", "d", "get", "k", env=both))["value"] == 1  # CASTORE_DIR wins
    flag = json_line(cli.raw("--dir", str(xdg / "castore"), "--dag", "d", "get", "k", env=both))
    assert flag["value"] == 2  # --dir wins
    assert not cli.dir.exists()


# `castore` with the password database giving no entry for the user (pwd.getpwuid fails).
_NO_USER_ENTRY: Final = """\
import pwd, sys
def _none(uid):
    raise KeyError(uid)
pwd.getpwuid = _none
from castore.cli import run
run()
"""


@pytest.mark.parametrize(
    ("home", "args"),
    [
        ("", ("get", "k")),  # a read: before, it read /.local/share/castore (creating nothing)
        ("relhome", ("set", "k", "1")),  # before: relhome/.local/share/castore below the cwd
        (None, ("set", "k", "1")),  # before: ./~/.local/share/castore
    ],
)
def test_no_absolute_home_is_refused_not_a_relative_default_store(tmp_path, home, args):
    (tmp_path / "cwd").mkdir()
    cli = Cli(tmp_path / "cwd", dag="d", entry=("-c", _NO_USER_ENTRY))
    before = sorted(os.listdir(cli.cwd))
    env = {k: v for k, v in cli.env.items() if k != "HOME"}
    if home is not None:
        env["HOME"] = home
    cli.env = env
    message = one_line_error(cli.raw("--dag", "d", *args), 1)
    assert message == (
        "no home directory for the default store ($HOME is unset, empty or relative, and the"
        " password database gives none): give --dir or set CASTORE_DIR"
    )
    assert sorted(os.listdir(cli.cwd)) == before  # nothing made below the current directory
    given = cli.raw("--dir", str(tmp_path / "s"), "--dag", "d", *args)  # --dir needs no home
    assert given.returncode == 0, given.stderr


def test_not_a_store_exits_1(cli, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    message = one_line_error(cli.raw("--dir", str(junk), "--dag", "d", "get", "k"), 1)
    assert "not a castore store" in message
    assert sorted(p.name for p in junk.iterdir()) == ["notes.txt"]  # left untouched

    bad_magic = tmp_path / "bad-magic"
    bad_magic.mkdir()
    (bad_magic / "FORMAT").write_text("something-else 1\n")
    one_line_error(cli.raw("--dir", str(bad_magic), "--dag", "d", "set", "k", "1"), 1)

    future = tmp_path / "future"
    future.mkdir()
    (future / "FORMAT").write_text("castore-store 999\n")
    message = one_line_error(cli.raw("--dir", str(future), "--dag", "d", "list"), 1)
    assert "999" in message

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    one_line_error(cli.raw("--dir", str(a_file), "--dag", "d", "get", "k"), 1)

    hidden = tmp_path / "hidden-only"
    hidden.mkdir()
    (hidden / ".keep").write_text("")
    assert json_line(cli.raw("--dir", str(hidden), "--dag", "d", "set", "k", "1"))["version"] == 1


# Every read, and every write that writes nothing, with its exit code on a location
# without a store: each answers as an empty store would, or fails, and creates nothing.
NOTHING_WRITTEN: Final = [
    (("get", "k"), 0),
    (("get", "k", "--default", '{"a":1}'), 0),
    (("get", "k", "--required"), 4),
    (("get", "k", "--version", "1"), 4),
    (("list",), 0),
    (("list", "--include-values", "--scope", "global"), 0),
    (("history", "k"), 0),
    (("diff", "k", "1", "--no-update"), 0),
    (("diff", "k", "--from-version", "1"), 4),
    (("audit",), 0),
    (("export",), 0),
    (("stats",), 0),
    (("check",), 0),
    (("check", "--repair"), 0),
    (("gc", "--grace", "0"), 0),
    (("compact", "--keep-last", "1"), 0),
    (("compact", "--keep-within", "0s", "--dry-run"), 0),
    (("delete", "k"), 0),
    (("set", "k", "1", "--expected-version", "2"), 3),
    (("diff", "k", "1", "--expected-version", "2"), 3),
    (("rollback", "k", "--to-version", "1"), 4),
    (("import", "INPUTS/header.jsonl"), 0),
    (("import-dagu", "INPUTS/dagu"), 0),
    (("upgrade",), 1),
]


@pytest.mark.parametrize("where", ["--dir missing/store", "CASTORE_DIR", "--dir empty"])
def test_reads_create_no_store(cli, tmp_path, where):
    inputs = tmp_path / "inputs"
    (inputs / "dagu" / "v1").mkdir(parents=True)  # a Dagu directory with nothing in it
    (inputs / "header.jsonl").write_bytes(b'{"format":"castore-export","version":1}\n')
    (tmp_path / "empty").mkdir()
    target = tmp_path / ("empty" if "empty" in where else "missing/store")
    env = {"CASTORE_DIR": str(target)} if where == "CASTORE_DIR" else {}
    head = [] if env else ["--dir", str(target)]
    before = paths_below(tmp_path)
    for args, code in NOTHING_WRITTEN:
        argv = [a.replace("INPUTS", str(inputs)) for a in args]
        proc = cli.raw(*head, "--dag", DAG, *argv, env=env)
        assert proc.returncode == code, (args, proc.stderr)
        assert paths_below(tmp_path) == before, args  # the parent gets no new entry either
    assert json_line(cli.raw(*head, "--dag", DAG, "set", "k", "1", env=env))["version"] == 1
    assert {"FORMAT", "refs"} <= set(os.listdir(target))  # the first write made the store
    assert json_line(cli.raw(*head, "--dag", DAG, "get", "k", env=env))["value"] == 1


def make_every_kind_of_file(cli: Cli, env: dict[str, str], *head: str) -> None:
    """Logs, KEYS, GRAVES, .vix, index shards, gc.lock, quarantine copies, rewrites."""
    assert cli.dir is not None

    def ok(*args: str) -> None:
        proc = cli.run(*head, *args, env=env)
        assert proc.returncode == 0, (args, proc.stderr)

    big = json.dumps({"payload": "x" * 5000})
    ok("set", "a", big)
    ok("set", "b", big)  # points at a's blob: gc.lock, an index shard
    ok("set", "a", "2")
    ok("get", "a", "--version", "1")  # the version index
    ok("set", "g", "1", "--scope", "global")
    ok("delete", "b")
    ok("compact", "--keep-within", "0s")  # GRAVES, rewritten logs
    ok("gc", "--grace", "0")  # the blob index rebuilt
    with open(log_path(cli.dir, "dag", DAG, "a"), "ab") as fh:
        fh.write(b"\x07torn")
    ok("set", "a", "3")  # quarantine/torn/
    for n in range(3):
        ok("set", "c", json.dumps({"n": n, "pad": "y" * 300}))
    path = log_path(cli.dir, "dag", DAG, "c")
    corrupt(path, os.path.getsize(path) // 2)
    ok("check", "--repair")  # quarantine/<time>/


@pytest.mark.parametrize(
    ("how", "file_mode", "dir_mode"),
    [
        ("default", 0o600, 0o700),
        ("--mode private", 0o600, 0o700),
        ("--mode group", 0o660, 0o2770),
        ("CASTORE_MODE=group", 0o660, 0o2770),
    ],
    ids=["default", "--mode private", "--mode group", "CASTORE_MODE=group"],
)
def test_permissions_of_everything_castore_creates(cli, umask, how, file_mode, dir_mode):
    assert cli.dir is not None
    cli.dir = cli.dir.parent / "new-parent" / "store"  # parents it makes get the mode too
    env = dict([how.split("=")]) if "=" in how else {}
    make_every_kind_of_file(cli, env, *(how.split() if how.startswith("--") else []))
    assert_modes(cli.dir, file_mode, dir_mode)
    assert oct(cli.dir.parent.stat().st_mode & 0o7777) == oct(dir_mode)


def test_a_bad_mode_is_exit_2_and_creates_nothing(cli):
    assert "--mode: invalid mode 'public'" in cli.fail(2, "--mode", "public", "set", "k", "1")
    message = one_line_error(cli.run("set", "k", "1", env={"CASTORE_MODE": "0644"}), 2)
    assert message == "invalid mode '0644' ($CASTORE_MODE): use private or group"
    assert not cli.dir.exists()


def test_a_long_bad_mode_is_shown_cut_short(cli):
    # Found by a review: a 120 KB CASTORE_MODE was repeated whole on one stderr line.
    message = one_line_error(cli.run("get", "k", env={"CASTORE_MODE": "x" * 120_000}), 2)
    shown = "x" * 100
    assert message == (
        f"invalid mode '{shown}'… (120000 characters) ($CASTORE_MODE): use private or group"
    )
    long_flag = cli.fail(2, "--mode", "y" * 101, "set", "k", "1")
    assert (
        long_flag == f"--mode: invalid mode '{'y' * 100}'… (101 characters): use private or group"
    )
    assert not cli.dir.exists()


@pytest.mark.parametrize("args", [("get", "k"), ("get", "k", "--version", "1"), ("upgrade",)])
def test_a_relative_store_in_a_deleted_directory_names_the_cause(tmp_path, args):
    # Found by a review: "castore: No such file or directory", naming no path.
    cli = Cli(tmp_path, dag="d")
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(
        [
            "/bin/sh",
            "-c",
            'cd "$0" && rmdir "$0" && exec "$@"',
            gone,
            *cli.argv("--dir", "rel", "--dag", "d", *args),
        ],
        capture_output=True,
        env=cli.env,
        timeout=60,
        check=False,
    )
    assert one_line_error(proc, 1) == (
        "the current directory no longer exists, so a relative store path names nothing"
        " (give an absolute one): rel"
    )


def test_invalid_input_exits_2_and_writes_no_log(cli):
    for args, message in INVALID_INPUT:
        assert message in cli.fail(2, *args)
        assert not cli.dir.exists() or not any((cli.dir / "refs").rglob("*.log")), args


# -- logs -------------------------------------------------------------------------------------


def test_corrupt_value_exits_5(cli):
    value = b'{"marker":"castore-corruption-test"}'
    cli.ok("set", "k", value)
    cli.ok("set", "other", "1")
    for log in (cli.dir / "refs").rglob("*.log"):
        data = log.read_bytes()
        if value in data:
            at = data.index(value) + len(b'{"marker":"')
            log.write_bytes(data[:at] + b"C" + data[at + 1 :])
            break
    else:
        pytest.skip("value bytes are not stored verbatim in a log")
    message = one_line_error(cli.run("get", "k"), 5)
    assert "corrupt" in message
    # list leaves the unreadable key out, says so on stderr, and still succeeds
    proc = cli.run("list")
    assert proc.returncode == 0
    assert [e["key"] for e in json.loads(proc.stdout)["entries"]] == ["other"]
    assert proc.stderr.decode().startswith("castore: warning: ")
    assert "Traceback" not in proc.stderr.decode()


def test_rollback_of_a_big_value_copies_no_blob(cli):
    rng = random.Random(5)
    big = json.dumps({"data": base64.b64encode(rng.randbytes(600_000)).decode()}).encode()
    assert len(big) > 800_000
    first = cli.ok("set", "k", stdin=big)
    cli.ok("set", "k", "0")
    path = log_path(cli.dir, "dag", DAG, "k")
    size = os.path.getsize(path)
    rolled = cli.ok("rollback", "k", "--to-version", "1")
    assert rolled["hash"] == first["hash"]
    growth = os.path.getsize(path) - size
    assert growth < 4096, growth  # a copy would add ~800 kB
    assert cli.raw_ok("get", "k").endswith(b',"value":' + normalize(big) + b"}\n")


# -- maintenance ------------------------------------------------------------------------------


def test_gc_dry_run_changes_no_byte(cli):
    fill(cli)
    cli.ok("compact", "--keep-last", "1")
    saved = snapshot(cli.dir)
    dry = cli.ok("gc", "--grace", "0", "--dry-run")
    assert dry["blobsFreed"] == 4
    now = snapshot(cli.dir)
    assert now.pop("gc.lock", b"") == b""
    saved.pop("gc.lock", None)
    assert now == saved


def test_gc_bad_grace_changes_no_byte(cli):
    cli.ok("set", "k", "1")
    saved = snapshot(cli.dir)
    for grace in BAD_GRACES:
        err = cli.fail(2, "gc", f"--grace={grace}")
        assert "duration" in err or "grace" in err, err
        assert snapshot(cli.dir) == saved, grace


def test_compact_dry_run_changes_no_byte(cli):
    fill(cli)
    saved = snapshot(cli.dir)
    dry = cli.ok("compact", "--keep-last", "2", "--dry-run")
    assert dry["versionsDropped"] == 3
    assert snapshot(cli.dir) == saved


def test_compact_bad_policy_changes_no_byte(cli):
    fill(cli)
    saved = snapshot(cli.dir)
    for args in BAD_POLICIES:
        cli.fail(2, "compact", *args)
        assert snapshot(cli.dir) == saved, args


def test_stats_stored_bytes_are_the_logs(cli):
    fill(cli)
    cli.ok("delete", "other")
    dag = cli.ok("stats")["scopes"]["dag"]
    assert dag["storedBytes"] == sum(
        p.stat().st_size for p in (cli.dir / "refs" / "dag").rglob("*.log")
    )


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
    fill(cli)
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
    fill(cli)
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
    fill(cli)
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
