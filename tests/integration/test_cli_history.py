"""CLI: history, get --version, rollback, version diff, audit, export/import, import-dagu."""

import base64
import hashlib
import json
import os
import pty
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import jsonpatch
import pytest

from castore import Store
from castore.codec import normalize
from castore.dagurecord import parse_go_time
from tests.helpers import CLI_TIMEOUT_SECONDS, Cli
from tests.unit.test_dagu import T0, T1, build_dagu_dir, digest_tree, hexname, rel_path

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
HASH_V1 = "8baa73198470c7bb4c3ce142a8fd651affc0310d878bb9bd159e37a573fb4874"  # docs/CLI.md
V1 = '{"a":1,"b":[1,2]}'
V2 = '{"a":2,"b":[1,3],"c":"<x>"}'
HISTORY_FIELDS = [
    "version",
    "operation",
    "hash",
    "time",
    "dagName",
    "runId",
    "stepName",
    "attempt",
    "user",
    "host",
    "pid",
    "actor",
    "reason",
    "rollbackFrom",
]
HEADER = b'{"format":"castore-export","version":1}\n'

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_at(location: str) -> Store:
    return Store(location, dag="d", durable=False, actor="", run_id="", step="")


# -- history, get --version, rollback, version diff --------------------------------------


def test_history_versions_rollback_and_diff(cli):
    env_identity = {
        "DAG_NAME": "daily",
        "DAG_RUN_ID": "env-run",
        "DAG_RUN_STEP_NAME": "env-step",
        "DAG_RUN_ATTEMPT_ID": "att-1",
        "CASTORE_ACTOR": "env-actor",
    }
    assert cli.ok("set", "k", V1, env=env_identity)["hash"] == HASH_V1
    flags = ["--actor", "alice", "--reason", "bump", "--run-id", "cli-run", "--step", "cli-step"]
    h2 = cli.ok("set", "k", V2, *flags, env=env_identity)["hash"]
    assert h2 == sha256(normalize(V2.encode()))
    before = ["--actor", "bob", "--run-id", "pre-run", "--step", "pre-step"]
    assert cli.ok(*before, "delete", "k", "--reason", "gone", env=env_identity)["deleted"]

    hist = cli.ok("history", "k")
    assert list(hist) == ["operation", "scope", "namespace", "key", "entries"]
    assert (hist["operation"], hist["scope"], hist["namespace"], hist["key"]) == (
        "history",
        "dag",
        "d",
        "k",
    )
    e3, e2, e1 = hist["entries"]
    for e in (e1, e2, e3):
        assert list(e) == [f for f in HISTORY_FIELDS if f in e]  # order; empty fields left out
        assert RFC3339.fullmatch(e["time"])
        assert isinstance(e["pid"], int)
        assert e["pid"] > 0
        assert e["host"]
        assert (e["dagName"], e["attempt"]) == ("d", "att-1")  # --dag wins over $DAG_NAME
        assert "rollbackFrom" not in e
    assert [e["version"] for e in (e3, e2, e1)] == [3, 2, 1]
    assert [e["operation"] for e in (e3, e2, e1)] == ["delete", "set", "set"]
    assert (e1["hash"], e2["hash"]) == (HASH_V1, h2)
    assert "hash" not in e3
    assert (e1["runId"], e1["stepName"], e1["actor"]) == ("env-run", "env-step", "env-actor")
    assert "reason" not in e1
    assert (e2["runId"], e2["stepName"], e2["actor"], e2["reason"]) == (
        "cli-run",
        "cli-step",
        "alice",
        "bump",
    )
    assert (e3["runId"], e3["stepName"], e3["actor"], e3["reason"]) == (
        "pre-run",
        "pre-step",
        "bob",
        "gone",
    )
    times = [parse_go_time(e["time"]) for e in (e3, e2, e1)]  # trimmed fractions: not text order
    assert times == sorted(times, reverse=True)

    # get --version
    assert cli.line("get", "k", "--version", "1") == (
        '{"operation":"get","scope":"dag","namespace":"d","key":"k","found":true,"version":1,'
        f'"hash":"{HASH_V1}","value":{V1}}}'
    )
    assert cli.line("get", "k", "--version", "2").endswith(
        f'"version":2,"hash":"{h2}","value":{{"a":2,"b":[1,3],"c":"\\u003cx\\u003e"}}}}'
    )
    assert cli.line("get", "k", "--version", "3") == (
        '{"operation":"get","scope":"dag","namespace":"d","key":"k","found":false}'
    )
    assert "4" in cli.fail(4, "get", "k", "--version", "4")
    cli.fail(4, "get", "k", "--version", "3", "--required")
    cli.fail(4, "get", "never", "--version", "1")
    cli.fail(2, "get", "k", "--version", "0")
    cli.fail(2, "get", "k", "--version", "-1")
    cli.fail(2, "get", "k", "--version", "one")

    # rollback
    assert cli.line("rollback", "k", "--to-version", "1", "--reason", "undo") == (
        '{"operation":"rollback","scope":"dag","namespace":"d","key":"k","version":4,'
        f'"hash":"{HASH_V1}","toVersion":1,"deleted":false,"created":true}}'
    )
    assert cli.ok("get", "k")["value"] == json.loads(V1)
    back = cli.ok("rollback", "k", "--to-version", "3", "--expected-version", "4")
    assert (back["version"], back["hash"], back["deleted"], back["created"]) == (5, "", True, False)
    assert cli.ok("get", "k")["found"] is False
    assert "99" in cli.fail(4, "rollback", "k", "--to-version", "99")
    conflict = cli.fail(3, "rollback", "k", "--to-version", "2", "--expected-version", "4")
    assert "expected version 4" in conflict
    assert "actual version 0" in conflict
    cli.fail(2, "rollback", "k", "--to-version", "0")
    cli.fail(2, "rollback", "k")  # --to-version is required
    cli.fail(4, "rollback", "never", "--to-version", "1")
    again = cli.ok("rollback", "k", "--to-version", "2", "--expected-version", "0")
    assert (again["version"], again["hash"], again["created"]) == (6, h2, True)

    # paging
    page = cli.ok("history", "k", "--limit", "2")
    assert [e["version"] for e in page["entries"]] == [6, 5]
    assert page["nextBeforeVersion"] == 5
    assert list(page)[-1] == "nextBeforeVersion"
    page = cli.ok("history", "k", "--limit", "2", "--before-version", "5")
    assert [e["version"] for e in page["entries"]] == [4, 3]
    assert page["nextBeforeVersion"] == 3
    page = cli.ok("history", "k", "--limit", "3", "--before-version", "4")
    assert [e["version"] for e in page["entries"]] == [3, 2, 1]
    assert "nextBeforeVersion" not in page
    full = cli.ok("history", "k")["entries"]
    assert [(e["version"], e["operation"], e.get("rollbackFrom")) for e in full] == [
        (6, "rollback", 2),
        (5, "delete", 3),
        (4, "rollback", 1),
        (3, "delete", None),
        (2, "set", None),
        (1, "set", None),
    ]
    assert full[2]["reason"] == "undo"
    assert full[0]["hash"] == h2
    cli.fail(2, "history", "k", "--limit", "-1")
    cli.fail(2, "history", "k", "--before-version", "0")
    assert cli.ok("history", "never")["entries"] == []

    # version diffs
    diff = cli.ok("diff", "k", "--from-version", "1", "--to-version", "2")
    assert list(diff) == [
        "operation",
        "scope",
        "namespace",
        "key",
        "fromVersion",
        "toVersion",
        "fromHash",
        "toHash",
        "patch",
    ]
    assert (diff["operation"], diff["fromVersion"], diff["toVersion"]) == ("diff", 1, 2)
    assert (diff["fromHash"], diff["toHash"]) == (HASH_V1, h2)
    assert jsonpatch.apply_patch(json.loads(V1), diff["patch"]) == json.loads(V2)
    assert sorted(op["path"] for op in diff["patch"]) == ["/a", "/b/1", "/c"]
    text = cli.lines("diff", "k", "--from-version", "1", "--to-version", "2", "--format", "text")
    assert text[0] == "dag/d/k: version 1 -> 2"
    assert sorted(text[1:]) == sorted(['+ /c: "<x>"', "~ /a: 1 -> 2", "~ /b/1: 2 -> 3"])
    latest = cli.ok("diff", "k", "--from-version", "1")
    assert (latest["toVersion"], latest["toHash"]) == (6, h2)
    assert jsonpatch.apply_patch(json.loads(V1), latest["patch"]) == json.loads(V2)
    from_delete = cli.ok("diff", "k", "--from-version", "3", "--to-version", "4")
    assert "fromHash" in from_delete
    assert jsonpatch.apply_patch(None, from_delete["patch"]) == json.loads(V1)
    to_delete = cli.lines(
        "diff", "k", "--from-version", "2", "--to-version", "3", "--format", "text"
    )
    assert to_delete[0] == "dag/d/k: version 2 -> 3"
    assert len(to_delete) == 2
    same = cli.lines("diff", "k", "--from-version", "2", "--to-version", "6", "--format", "text")
    assert same == ["dag/d/k: version 2 -> 6", "  (no changes)"]
    cli.fail(2, "diff", "k", "--to-version", "2")
    cli.fail(2, "diff", "k", '{"x":1}', "--from-version", "1")
    cli.fail(2, "diff", "k", "--from-version", "0")
    cli.fail(2, "diff", "k", "--from-version", "1", "--format", "yaml")
    cli.fail(4, "diff", "k", "--from-version", "99")
    cli.fail(4, "diff", "k", "--from-version", "1", "--to-version", "99")
    cli.fail(4, "diff", "never", "--from-version", "1")
    # Nothing above wrote a version.
    assert len(store_at(cli.dir).history("k").entries) == 6


def test_huge_version_arguments(cli):
    """A version past the end exits 4; past Go's int64 (Dagu's versions) exits 2, as Dagu does."""
    cli.ok("set", "k", "1")
    top = str((1 << 63) - 1)
    cli.fail(4, "get", "k", "--version", top)
    cli.fail(4, "rollback", "k", "--to-version", top)
    cli.fail(4, "diff", "k", "--from-version", top)
    huge = str(10**20)
    for args in (("get", "k", "--version"), ("rollback", "k", "--to-version")):
        assert "out of range" in cli.fail(2, *args, huge)
    assert "out of range" in cli.fail(2, "diff", "k", "--from-version", huge)


def test_rollback_of_a_big_value(cli):
    rng = random.Random(5)
    big = json.dumps({"data": base64.b64encode(rng.randbytes(600_000)).decode()}).encode()
    assert len(big) > 800_000
    first = cli.ok("set", "k", stdin=big)
    cli.ok("set", "k", "0")
    rolled = cli.ok("rollback", "k", "--to-version", "1")
    assert rolled["hash"] == first["hash"]
    assert cli.raw_ok("get", "k").endswith(b',"value":' + normalize(big) + b"}\n")


# -- audit ---------------------------------------------------------------------------------


def populate_for_audit(root: str) -> None:
    one = Store(root, dag="d", durable=False, run_id="run-1", actor="alice", step="s")
    two = Store(root, dag="d", durable=False, run_id="run-2", step="s")
    one.set("a", 1)
    two.set("b", 2, scope="global")
    one.set("c", 3, scope="custom", namespace="n1")
    two.set("c", 4, scope="custom", namespace="n2")
    one.set("a", 5, reason="why")
    two.delete("a")
    one.rollback("a", to_version=2)
    two.set("x", 6, scope="root_dag", namespace="d")


def ids(records: Iterable[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    return [(r["scope"], r["namespace"], r["key"], r["version"]) for r in records]


def test_audit(cli, new_store_location):
    populate_for_audit(cli.dir)
    every = [json.loads(line) for line in cli.lines("audit")]
    assert ids(every) == [
        ("root_dag", "d", "x", 1),
        ("dag", "d", "a", 4),
        ("dag", "d", "a", 3),
        ("dag", "d", "a", 2),
        ("custom", "n2", "c", 1),
        ("custom", "n1", "c", 1),
        ("global", "_", "b", 1),
        ("dag", "d", "a", 1),
    ]
    assert [r["operation"] for r in every[1:4]] == ["rollback", "delete", "set"]
    assert every[1]["rollbackFrom"] == 2
    assert "hash" not in every[2]
    assert (every[3]["reason"], every[3]["actor"], every[3]["runId"]) == ("why", "alice", "run-1")
    assert [r["timeNs"] for r in every] == sorted((r["timeNs"] for r in every), reverse=True)
    for r in every:
        assert RFC3339.fullmatch(r["time"])
        head = ["scope", "namespace", "key", "version", "operation", "hash", "time", "timeNs"]
        assert list(r)[: len(head) - ("hash" not in r)] == [k for k in head if k in r]

    def query(*args: str) -> list[tuple[str, str, str, int]]:
        return ids(json.loads(line) for line in cli.lines("audit", *args))

    assert query("--scope", "custom") == ids(every[4:6])
    assert query("--namespace", "n1") == [("custom", "n1", "c", 1)]
    assert query("--namespace", "d") == ids(every[:4] + every[7:])
    assert query("--scope", "dag", "--namespace", "d") == ids(every[1:4] + every[7:])
    assert query("--run-id", "run-1") == ids([r for r in every if r["runId"] == "run-1"])
    # Options may come before the command too.
    proc = cli.run("--scope", "global", "audit", dag=None)
    assert ids(json.loads(line) for line in proc.stdout.splitlines()) == ids(every[6:7])
    middle = every[3]["time"]  # exact RFC 3339 with nanoseconds: inclusive bounds
    assert query("--since", middle) == ids(every[:4])
    assert query("--until", middle) == ids(every[3:])
    assert query("--since", every[5]["time"], "--until", every[1]["time"], "--run-id", "run-2") == (
        ids([r for r in every[1:6] if r["runId"] == "run-2"])
    )
    assert query("--since", "2999-01-01") == []
    assert query("--until", "2000-01-01") == []
    day = every[0]["time"][:10]
    assert query("--since", day) == ids(every)
    cli.fail(2, "audit", "--since", "yesterday")
    cli.fail(2, "audit", "--until", "2026-13-45")
    cli.fail(2, "audit", "--scope", "nope")
    assert cli.lines("audit", store=new_store_location()) == []


def test_audit_until_a_date_includes_that_day(cli):
    """docs/CLI.md: "Times are RFC 3339 or YYYY-MM-DD, inclusive"."""
    populate_for_audit(cli.dir)
    every = [json.loads(line) for line in cli.lines("audit")]
    days = {r["time"][:10] for r in every}
    if len(days) != 1:
        pytest.skip("the writes straddle midnight UTC")
    (day,) = days
    assert ids(json.loads(line) for line in cli.lines("audit", "--until", day)) == ids(every)
    assert len(cli.lines("audit", "--since", day, "--until", day)) == len(every)


# -- export / import --------------------------------------------------------------------


LONG_KEY = "long/" + "\u00e9" * 2045  # 4,095 UTF-8 bytes
BIG = {"text": "lorem ipsum dolor sit amet " * 30_000}


def populate_for_export(root: str) -> None:
    s = Store(root, dag="d", durable=False, actor="alice", run_id="run-1", step="save")
    s.set("cursor", {"last_id": 1})
    s.set("cursor", {"last_id": 2}, reason="bump")
    s.delete("cursor")
    s.rollback("cursor", to_version=1)
    s.set("null", None)
    s.set("numbers", b'{"x":1.2300,"y":-0.0,"z":1E5}')
    s.set("caf\u00e9/\U0001f600", "\u65e5\u672c\u2028<&>")
    s.set(LONG_KEY, [1])
    s.set("big", BIG)
    s.set("big-twin", BIG)
    s.set("gone", 1)
    s.delete("gone")
    s.set("k", "global", scope="global")
    s.set("k", "a", scope="custom", namespace="a")
    s.set("a:b<c>", "b", scope="custom", namespace="\u00e9quipe")
    s.set("r", "root", scope="root_dag", namespace="root")


def test_export_import_round_trip(cli, tmp_path, new_store_location):
    populate_for_export(cli.dir)
    dump = cli.raw_ok("export")
    assert dump.startswith(HEADER.replace(b"1}", b"2}"))
    recs = [json.loads(line) for line in dump.splitlines()[1:-1]]
    assert len(recs) == 16
    assert json.loads(dump.splitlines()[-1]) == {"end": "castore-export", "versions": 16}
    assert {r["scope"] for r in recs} == {"dag", "global", "custom", "root_dag"}
    assert b'"value":{"x":1.2300,"y":-0.0,"z":1E5}' in dump
    assert sum(1 for r in recs if r["op"] == "delete") == 2
    assert sum(1 for r in recs if r["op"] == "rollback") == 1
    (tmp_path / "dump.jsonl").write_bytes(dump)

    copy = new_store_location()
    report = cli.line("import", "dump.jsonl", store=copy)
    assert report == (
        '{"operation":"import","refs":12,"versions":16,"skippedRefs":[],"overwrittenRefs":[]}'
    )
    assert cli.raw_ok("export", store=copy) == dump
    piped = new_store_location()
    assert json.loads(cli.line("import", "-", store=piped, stdin=dump))["versions"] == 16
    assert cli.raw_ok("export", store=piped) == dump

    # The copy reads like the source.
    got = cli.ok("get", "big-twin", store=copy)
    assert got["value"] == BIG
    assert cli.ok("history", "cursor", store=copy) == cli.ok("history", "cursor")

    def part(pick: Callable[[dict[str, Any]], bool]) -> bytes:
        kept = [line + b"\n" for line in dump.splitlines()[1:-1] if pick(json.loads(line))]
        end = b'{"end":"castore-export","versions":%d}\n' % len(kept)
        head: bytes = dump.splitlines(keepends=True)[0]
        return head + b"".join(kept) + end

    assert cli.raw_ok("export", "--scope", "custom", store=copy) == part(
        lambda r: r["scope"] == "custom"
    )
    assert cli.raw_ok("export", "--namespace", "d", store=copy) == part(
        lambda r: r["namespace"] == "d"
    )
    assert cli.raw_ok("export", "--scope", "custom", "--namespace", "a", store=copy) == part(
        lambda r: r["scope"] == "custom" and r["namespace"] == "a"
    )
    assert cli.raw_ok("export", store=new_store_location()) == part(lambda r: False)
    cli.fail(2, "export", "--scope", "nope")


def test_import_conflicts(cli, tmp_path, new_store_location):
    populate_for_export(cli.dir)
    (tmp_path / "dump.jsonl").write_bytes(cli.raw_ok("export"))
    target = new_store_location()
    mine = store_at(target)
    mine.set("null", "mine")
    mine.set("k", "mine too", scope="global")
    mine.set("own", "untouched")

    message = cli.fail(3, "import", "dump.jsonl", store=target)
    assert "already exist" in message
    fresh = store_at(target)
    assert fresh.get("cursor").found is False  # a non-conflicting key was not imported
    assert fresh.history("big").entries == []
    assert fresh.get("null").value == "mine"

    skip = cli.ok("import", "dump.jsonl", "--on-conflict", "skip", store=target)
    assert (skip["refs"], skip["versions"]) == (10, 14)
    assert sorted(skip["skippedRefs"]) == ["dag/d/null", "global/_/k"]
    assert skip["overwrittenRefs"] == []
    fresh = store_at(target)
    assert fresh.get("null").value == "mine"
    assert fresh.get("k", scope="global").value == "mine too"
    assert fresh.get("own").value == "untouched"
    assert fresh.get("cursor").version == 4
    cli.fail(2, "import", "dump.jsonl", "--on-conflict", "merge", store=target)
    cli.fail(2, "import", "missing.jsonl", store=target)
    message = cli.fail(2, "import", tmp_path, store=target)
    assert message == f"{tmp_path} is a directory: give an export file (or - for stdin)"
    # Found by a review: a pipe (`import <(…)`) was "no such file: /dev/fd/63", and an
    # empty file "line 1: not a castore export header ()".
    (tmp_path / "empty.jsonl").write_bytes(b"")
    message = cli.fail(2, "import", "empty.jsonl", store=target)
    assert (
        message == "invalid value: the file is empty: a castore export starts with its header line"
    )
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = subprocess.Popen(  # a fixed command
        [sys.executable, "-c", f"open({str(fifo)!r}, 'wb').write(open('dump.jsonl', 'rb').read())"],
        cwd=tmp_path,
    )
    again = cli.ok("import", str(fifo), "--on-conflict", "skip", store=target)
    writer.wait(timeout=30)
    assert (again["refs"], len(again["skippedRefs"])) == (0, 12)


def test_import_overwrite_keeps_values_deduplicated_against_the_old_history(
    cli, tmp_path, new_store_location
):
    target = new_store_location()
    mine = store_at(target)
    mine.set("a", BIG)  # a's log holds the blob
    mine.set("b", BIG)  # b points at a's blob
    other = new_store_location()
    theirs = store_at(other)
    theirs.set("a", {"x": 0})
    theirs.set("a", {"from": "export"})
    theirs.set("c", 1)
    (tmp_path / "theirs.jsonl").write_bytes(cli.raw_ok("export", store=other))

    report = cli.ok("import", "theirs.jsonl", "--on-conflict", "overwrite", store=target)
    assert (report["refs"], report["versions"]) == (2, 3)
    assert report["overwrittenRefs"] == ["dag/d/a"]
    assert cli.ok("get", "b", store=target)["value"] == BIG
    hist = cli.ok("history", "a", store=target)["entries"]
    assert [(e["version"], e["hash"]) for e in hist] == [
        (2, sha256(b'{"from":"export"}')),
        (1, sha256(b'{"x":0}')),
    ]
    assert cli.ok("get", "a", store=target)["value"] == {"from": "export"}
    assert cli.ok("set", "a", "2", "--expected-version", "2", store=target)["version"] == 3


def test_import_overwrite_never_takes_versions_back(cli, tmp_path, new_store_location):
    target = new_store_location()
    mine = store_at(target)
    for n in range(3):
        mine.set("a", n)
    other = new_store_location()
    store_at(other).set("a", {"older": True})
    (tmp_path / "theirs.jsonl").write_bytes(cli.raw_ok("export", store=other))
    proc = cli.run("import", "theirs.jsonl", "--on-conflict", "overwrite", store=target)
    assert proc.returncode == 3, proc.stderr
    assert b"below" in proc.stderr
    assert cli.ok("get", "a", store=target)["version"] == 3


def test_an_import_refused_for_one_key_writes_no_other_key(cli, tmp_path, new_store_location):
    # The refusal of a later key came from the writing pass: earlier keys were
    # already replaced ("local-a" gone from the history) when it failed, exit 3.
    target = new_store_location()
    mine = store_at(target)
    mine.set("a", "local-a")
    for n in range(3):
        mine.set("b", n)
    other = new_store_location()
    store_at(other).set("a", "theirs, first")
    store_at(other).set("a", "theirs")  # version 2: above "local-a", so a alone may go
    store_at(other).set("b", "theirs")
    (tmp_path / "theirs.jsonl").write_bytes(cli.raw_ok("export", store=other))
    before = cli.raw_ok("export", store=target)
    message = cli.fail(3, "import", "theirs.jsonl", "--on-conflict", "overwrite", store=target)
    assert message.startswith("conflict on dag/d/b: actual version 3 (")
    assert "below it" in message
    assert message.endswith("1 key(s) refused, nothing imported)")
    assert cli.raw_ok("export", store=target) == before


def test_an_import_into_a_key_compaction_removed_imports_nothing_else_unless_skipped(
    cli, tmp_path, new_store_location
):
    target = new_store_location()
    for n in range(3):
        cli.ok("set", "gone", str(n), store=target)
    cli.ok("delete", "gone", store=target)
    time.sleep(1.1)
    assert cli.ok("compact", "--keep-within", "1s", store=target)["keysRemoved"] == 1
    other = new_store_location()
    store_at(other).set("a", "new")
    store_at(other).set("gone", "again")
    (tmp_path / "theirs.jsonl").write_bytes(cli.raw_ok("export", store=other))
    before = cli.raw_ok("export", store=target)
    for mode in ("refuse", "overwrite"):
        message = cli.fail(3, "import", "theirs.jsonl", "--on-conflict", mode, store=target)
        assert message == (
            "conflict on dag/d/gone: compaction removed this key at version 4, and the import "
            "starts at version 1: its versions would repeat; 1 key(s) refused, nothing imported"
        )
        assert cli.raw_ok("export", store=target) == before
    assert cli.ok("get", "a", store=target)["found"] is False
    # skip leaves a key with history alone, a removed life's included, and imports the rest.
    report = cli.ok("import", "theirs.jsonl", "--on-conflict", "skip", store=target)
    assert (report["refs"], report["skippedRefs"]) == (1, ["dag/d/gone"])
    assert cli.ok("get", "a", store=target)["value"] == "new"
    assert cli.ok("get", "gone", store=target)["found"] is False
    assert cli.ok("set", "gone", "5", store=target)["version"] == 5


def test_a_key_compaction_removed_moves_with_its_last_version(cli, tmp_path, new_store_location):
    # Found by a review: an export left out a key that compaction removed, so in the
    # store it was imported into the key started again at version 1 (the original: 7).
    source = new_store_location()
    for n in range(5):
        cli.ok("set", "gone", str(n), store=source)
    cli.ok("delete", "gone", store=source)
    cli.ok("set", "kept", "1", store=source)
    time.sleep(1.1)
    assert cli.ok("compact", "--keep-within", "1s", store=source)["keysRemoved"] == 1
    dump = cli.raw_ok("export", store=source)
    line = [json.loads(x) for x in dump.splitlines()[1:] if b'"gone"' in x]
    assert line == [
        {
            "scope": "dag",
            "namespace": "d",
            "key": "gone",
            "version": 6,
            "op": "delete",
            "time_ns": 1,
            "audit": {"reason": "removed by compaction"},
        }
    ]
    (tmp_path / "dump.jsonl").write_bytes(dump)
    copy = new_store_location()
    assert cli.ok("import", "dump.jsonl", store=copy)["refs"] == 2
    assert cli.raw_ok("export", store=copy) == dump  # byte-identical, as every export
    assert [e["key"] for e in cli.ok("list", store=copy)["entries"]] == ["kept"]
    # The source's own export into itself: the removed key is as the file says it is.
    (tmp_path / "again.jsonl").write_bytes(cli.raw_ok("export", store=source))
    before = cli.raw_ok("export", store=source)
    assert "already exist" in cli.fail(3, "import", "again.jsonl", store=source)
    for mode in ("skip", "overwrite"):
        report = cli.ok("import", "again.jsonl", "--on-conflict", mode, store=source)
        assert "dag/d/gone" in report["skippedRefs"], report
        assert cli.raw_ok("export", store=source) == before
    assert cli.ok("set", "gone", '"again"', store=copy)["version"] == 7
    assert cli.ok("set", "gone", '"again"', store=source)["version"] == 7
    # Overwriting the re-created key with versions its removed life used: refused whole.
    theirs = new_store_location()
    cli.ok("set", "kept", '"theirs, first"', store=theirs)
    cli.ok("set", "kept", '"theirs"', store=theirs)  # above the source's: may go alone
    for n in range(8):  # up to 8, above the source's 7, from 1, within its removed life
        cli.ok("set", "gone", str(n), store=theirs)
    (tmp_path / "theirs.jsonl").write_bytes(cli.raw_ok("export", store=theirs))
    before = cli.raw_ok("export", store=source)
    message = cli.fail(3, "import", "theirs.jsonl", "--on-conflict", "overwrite", store=source)
    assert "its versions would repeat; 1 key(s) refused, nothing imported" in message
    assert cli.raw_ok("export", store=source) == before


HASH_1 = sha256(b"1")
GOOD = (
    b'{"scope":"dag","namespace":"d","key":"ok","version":1,"op":"set","time_ns":1,'
    b'"created_ns":1,"hash":"' + HASH_1.encode() + b'","value":1}'
)


def good_line(key: str, version: int) -> bytes:
    return GOOD.replace(b'"key":"ok"', f'"key":"{key}"'.encode()).replace(
        b'"version":1', f'"version":{version}'.encode()
    )


MALFORMED = {
    "bad header": [b'{"format":"castore-export","version":9}', good_line("first", 1)],
    "no header": [good_line("first", 1)],
    "bad json line": [HEADER.strip(), good_line("first", 1), b'{"scope":"dag","namespace'],
    "hash mismatch": [
        HEADER.strip(),
        good_line("first", 1),
        good_line("x", 1).replace(b"1}", b"2}"),
    ],
    "versions not increasing": [
        HEADER.strip(),
        good_line("first", 1),
        good_line("x", 2),
        good_line("x", 2),
    ],
    "version past a bigint": [HEADER.strip(), good_line("first", 1), good_line("x", 1 << 63)],
    "audit pid past 64 bits": [
        HEADER.strip(),
        good_line("first", 1),
        good_line("x", 1).replace(b'"value"', b'"audit":{"pid":99999999999999999999},"value"'),
    ],
    "ref not contiguous": [
        HEADER.strip(),
        good_line("first", 1),
        good_line("x", 1),
        good_line("first", 2),
    ],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_import_of_a_malformed_file_imports_nothing(cli, tmp_path, name):
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(MALFORMED[name]) + b"\n")
    message = cli.fail(2, "import", "bad.jsonl")
    if name != "bad header":
        assert "line" in message
    s = store_at(cli.dir)
    assert s.history("first").entries == []
    assert s.history("x").entries == []
    assert s.list().entries == []


# -- import-dagu -----------------------------------------------------------------------


def test_import_dagu(cli, tmp_path):
    dagu = build_dagu_dir(tmp_path / "dag-state")
    before = digest_tree(dagu.root)
    run = cli.run("import-dagu", dagu.root)  # corrupt and mismatched records: exit 1
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith(b"castore: ")
    assert b"not imported" in run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    summary = lines.pop()
    assert summary == {
        "operation": "import-dagu",
        "imported": len(dagu.imported),
        "skipped": len(dagu.skipped),
    }
    by_file = {o["file"]: o for o in lines}
    assert len(by_file) == len(lines) == len(dagu.imported) + len(dagu.skipped)
    for rel, (scope, namespace, key, version, _) in dagu.imported.items():
        o = by_file[rel]
        assert list(o) == ["file", "status", "scope", "namespace", "key", "version"]
        assert (o["status"], o["scope"], o["namespace"], o["key"], o["version"]) == (
            "imported",
            scope,
            namespace,
            key,
            version,
        )
    for rel, reason in dagu.skipped.items():
        o = by_file[rel]
        assert (o["status"], list(o)[:3]) == ("skipped", ["file", "status", "reason"]), o
        assert reason in o["reason"]
    tmp_file = rel_path("dag", "daily", "cursor", ".json.tmp.12345")
    assert by_file[tmp_file]["reason"] == "temporary file left by an interrupted Dagu write"
    assert digest_tree(dagu.root) == before  # the source is never modified

    got = cli.ok("get", "cursor", dag="daily")
    assert (got["version"], got["value"]) == (3, {"last_id": 3})
    assert cli.ok("get", "Cursor", dag="daily")["value"] == "upper case twin"
    assert cli.ok("get", "a:b<c>", dag="daily")["version"] == 2
    assert cli.line("get", "cursors/feed", dag="daily").endswith(
        '"version":5,"hash":"' + sha256(b'{"h":"\\u003cb\\u003e","n":1.2300}') + '",'
        '"value":{"h":"\\u003cb\\u003e","n":1.2300}}'
    )
    (entry,) = cli.ok("history", "cursor", dag="daily")["entries"]
    assert (entry["version"], entry["time"], entry["runId"], entry["dagName"]) == (
        3,
        T1,
        "run-9",
        "daily",
    )
    assert (entry["stepName"], entry["attempt"]) == ("save", "att-2")
    listed = {e["key"]: e for e in cli.ok("list", dag="daily")["entries"]}
    assert (listed["cursor"]["createdAt"], listed["cursor"]["updatedAt"]) == (T0, T1)
    assert listed["k" * 125]["version"] == 7
    written = cli.ok("set", "cursor", '{"last_id":4}', "--expected-version", "3", dag="daily")
    assert (written["version"], written["created"]) == (4, False)
    cli.fail(3, "set", "Cursor", "1", "--expected-version", "2", dag="daily")

    again = [json.loads(line) for line in cli.run("import-dagu", dagu.root).stdout.splitlines()]
    assert again[-1] == {
        "operation": "import-dagu",
        "imported": 0,
        "skipped": len(dagu.imported) + len(dagu.skipped),
    }
    assert {o["reason"] for o in again[:-1] if o["file"] in dagu.imported} == {
        "castore holds this record's version"  # castore wrote on: harmless
    }
    assert digest_tree(dagu.root) == before
    assert cli.ok("get", "cursor", dag="daily")["version"] == 4

    cli.fail(2, "import-dagu", tmp_path / "missing")
    cli.fail(2, "import-dagu", dagu.root / rel_path("dag", "daily", "cursor"))
    assert hexname("daily") in tmp_file


def test_progress_on_a_terminal_never_reaches_stdout(cli):
    """With stderr on a terminal a progress bar may be drawn there; stdout stays the same bytes."""
    populate_for_export(cli.dir)
    plain_export = cli.raw_ok("export")
    plain_audit = cli.raw_ok("audit")
    for args, expected in ((["export"], plain_export), (["audit"], plain_audit)):
        master, slave = pty.openpty()
        try:
            proc = subprocess.run(
                cli.argv(*cli.options(dag=None), *args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=slave,
                env=cli.env,
                cwd=cli.cwd,
                timeout=CLI_TIMEOUT_SECONDS,
                check=False,
            )
        finally:
            os.close(slave)
            os.close(master)
        assert proc.returncode == 0
        assert proc.stdout == expected


@pytest.mark.parametrize(("open_", "close", "step"), [('{"a":', "}", "/a"), ("[", "]", "/0")])
def test_a_version_diff_of_deeply_nested_values_is_a_patch_or_one_line(cli, open_, close, step):
    # Found by a review: values ``set`` accepts (up to 10,000 levels) made a version diff
    # print a RecursionError traceback from about 450 levels on (jsonpatch recurses).
    def nested(depth: int, leaf: int) -> str:
        return f"{open_ * depth}{leaf}{close * depth}"

    cli.ok("set", "k", nested(200, 1))
    cli.ok("set", "k", nested(200, 2))
    cli.ok("set", "k", "1")
    diff = cli.ok("diff", "k", "--from-version", "1", "--to-version", "2")
    assert diff["patch"] == [{"op": "replace", "path": step * 200, "value": 2}]
    whole = cli.ok("diff", "k", "--from-version", "3", "--to-version", "1")["patch"]
    assert whole == [{"op": "replace", "path": "", "value": json.loads(nested(200, 1))}]
    text = cli.lines("diff", "k", "--from-version", "1", "--to-version", "2", "--format", "text")
    assert text[-1] == f"~ {step * 200}: 1 -> 2"
    cli.ok("set", "k", nested(201, 4))
    cli.ok("set", "k", nested(5_000, 5))
    for older, newer in ((4, 5), (3, 4), (5, 1)):
        for form in ("json", "text"):
            message = cli.fail(
                2,
                "diff",
                "k",
                "--from-version",
                str(older),
                "--to-version",
                str(newer),
                "--format",
                form,
            )
            deep = older if older in (4, 5) else newer
            assert message == (
                f"invalid value: dag/d/k version {deep} nests deeper than 200 levels, deeper "
                "than a version diff compares: compare the values get --version prints"
            )
    assert cli.ok("history", "k")["entries"][0]["version"] == 5  # nothing written


def test_an_export_of_a_store_it_cannot_reach_prints_nothing(tmp_path):
    # Found by a review: the header line was printed before the store was reached, so
    # `export > backup.jsonl` of a server that was down left a file that looked like one.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    proc = Cli(tmp_path, f"http://127.0.0.1:{port}").run("export")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"cannot connect" in proc.stderr


def test_a_version_diff_shows_numbers_as_the_versions_wrote_them(cli):
    # Found by a review: 1.50 -> 1.5 printed an empty patch and "(no changes)", and
    # 1e400 printed as null; the text form showed the old number as 1.5.
    cli.ok("set", "k", '{"p":1.50,"r":0.1000000000000000000001,"z":-0,"big":1}')
    cli.ok("set", "k", '{"p":1.5,"r":0.1,"z":0,"big":1e400}')
    line = cli.run("diff", "k", "--from-version", "1").stdout
    assert b'"patch":[{"op":"replace","path":"/big","value":1e400},' in line, line
    ops = {op["path"]: op for op in json.loads(line.replace(b"1e400", b'"x"'))["patch"]}
    assert sorted(ops) == ["/big", "/p", "/r", "/z"], ops
    text = cli.lines("diff", "k", "--from-version", "1", "--format", "text")
    for change in ("/p: 1.50 -> 1.5", "/z: -0 -> 0", "/r: 0.1000000000000000000001 -> 0.1"):
        assert f"~ {change}" in text, text
    assert "~ /big: 1 -> 1e400" in text, text


def test_a_version_diff_as_text_is_one_line_per_change_whatever_the_member_names(cli):
    # Found by a review: a member name holding a line break was printed as it is, so
    # {"x\n+ /forged: 1": 1} showed two changes, "+ /x" and a forged "+ /forged: 1: 1".
    cli.ok("set", "k", '{"a":{"b":1}}')
    cli.ok("set", "k", '{"a":{"b":1},"x\\n+ /forged: 1":1,"c\\r":{"b":1}}')
    text = cli.lines("diff", "k", "--from-version", "1", "--format", "text")
    assert text[0] == "dag/d/k: version 1 -> 2"
    assert sorted(text[1:]) == sorted(['+ "/x\\n+ ~1forged: 1": 1', '+ "/c\\r": {"b":1}']), text
