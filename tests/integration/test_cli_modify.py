"""``castore patch`` and ``castore incr`` end to end, through subprocesses (issue 11)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import Cli, one_line_error

pytestmark = pytest.mark.integration

DAG = "rmw"  # the cli fixture's --dag
SET_FIELDS = ["operation", "scope", "namespace", "key", "version", "hash", "created"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(cli: Cli, key: str) -> bytes:
    """The value of ``key`` exactly as the CLI prints it (its normalized bytes)."""
    out = cli.raw_ok("get", key)
    head = out.index(b'"value":') + len(b'"value":')
    return out[head:-2]  # drop the closing brace and the newline


def version(cli: Cli, key: str) -> int:
    return int(cli.ok("get", key).get("version", 0))


def test_patch_prints_a_set_line_and_the_value_on_request(cli):
    cli.ok("set", "k", '{"a": 1.50, "list": [1]}')
    patch = (
        '[{"op": "add", "path": "/list/-", "value": 2}, {"op": "test", "path": "/a", "value": 1.5}]'
    )
    line = cli.line("patch", "k", patch)
    assert list(json.loads(line)) == SET_FIELDS
    expected = b'{"a":1.50,"list":[1,2]}'
    assert json.loads(line)["operation"] == "patch"
    assert json.loads(line)["hash"] == sha256(expected)
    assert stored(cli, "k") == expected
    out = cli.raw_ok("patch", "k", '[{"op": "remove", "path": "/list/0"}]', "--include-value")
    assert out.endswith(b',"created":false,"value":{"a":1.50,"list":[2]}}\n')
    assert list(json.loads(out)) == [*SET_FIELDS, "value"]
    assert cli.ok("set", "same", '{"a":1.50,"list":[2]}')["hash"] == json.loads(out)["hash"]


def test_a_failed_test_exits_3_and_writes_nothing(cli):
    cli.ok("set", "lock", '{"owner": "a"}')
    patch = json.dumps(
        [
            {"op": "test", "path": "/owner", "value": None},
            {"op": "add", "path": "/owner", "value": "b"},
        ]
    )
    message = cli.fail(3, "patch", "lock", patch)
    assert message.startswith(f"conflict on dag/{DAG}/lock: JSON Patch test failed at version 1")
    assert "operation 1 (test /owner)" in message
    assert stored(cli, "lock") == b'{"owner":"a"}'
    assert version(cli, "lock") == 1


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ('{"op": "add"}', "array of operations"),
        ('[{"op": "frobnicate", "path": "/a"}]', "is not one"),
        ('[{"op": "remove", "path": "/nope"}]', "does not apply"),
        ("[", "invalid value"),
        ("", "invalid value"),
    ],
)
def test_a_bad_patch_exits_2_and_writes_nothing(cli, patch, words):
    cli.ok("set", "k", '{"a": 1}')
    assert words in cli.fail(2, "patch", "k", patch)
    assert version(cli, "k") == 1


def test_merge_patch_from_stdin(cli):
    cli.ok("set", "cfg", '{"keep": 1.0, "drop": true, "deep": {"x": 1, "y": 2}}')
    out = cli.raw_ok(
        "patch", "cfg", "--merge", "--include-value", stdin=b'{"drop": null, "deep": {"y": null}}'
    )
    assert json.loads(out)["operation"] == "patch"
    assert out.endswith(b'"value":{"deep":{"x":1},"keep":1.0}}\n')
    assert stored(cli, "cfg") == b'{"deep":{"x":1},"keep":1.0}'


def test_patch_guards_exit_3(cli):
    add = '[{"op": "add", "path": "/n", "value": 1}]'
    assert cli.ok("patch", "k", add, "--create-only")["created"] is True
    assert "create_only" in cli.fail(3, "patch", "k", add, "--create-only")
    assert "expected version 5, actual version 1" in cli.fail(
        3, "patch", "k", add, "--expected-version", "5"
    )
    assert cli.ok("patch", "k", add, "--expected-version", "1")["version"] == 2
    assert version(cli, "k") == 2


def test_incr_prints_a_set_line_and_the_number(cli):
    line = cli.line("incr", "runs")
    assert list(json.loads(line)) == [*SET_FIELDS, "number"]
    assert line.startswith(f'{{"operation":"incr","scope":"dag","namespace":"{DAG}","key":"runs"')
    assert line.endswith(f'"hash":"{sha256(b"1")}","created":true,"number":1}}')
    assert cli.ok("incr", "runs", "--by", "-3")["number"] == -2
    assert cli.ok("incr", "runs", "--by", "0.5")["number"] == -1.5
    assert stored(cli, "runs") == b"-1.5"


def test_incr_at_a_path_keeps_the_rest_and_stays_exact(cli):
    cli.ok("set", "stats", '{"name": "x", "rate": 0.50, "runs": 18446744073709551615}')
    out = cli.raw_ok("incr", "stats", "--path", "/runs", "--by", "18446744073709551617")
    assert out.endswith(b',"number":36893488147419103232}\n')
    assert stored(cli, "stats") == b'{"name":"x","rate":0.50,"runs":36893488147419103232}'
    assert cli.ok("incr", "stats", "--path", "/by/day~12026-01-01")["number"] == 1
    assert json.loads(stored(cli, "stats"))["by"] == {"day/2026-01-01": 1}


@pytest.mark.parametrize(
    ("value", "args", "words"),
    [
        ('"ten"', [], "is a string, not a number"),
        ('{"n": [1]}', ["--path", "/n"], "/n is an array, not a number"),
        ("{}", ["--by", "x"], "not a JSON number"),
        ("{}", ["--by", "1e999"], "range"),
        ("{}", ["--path", "n"], "JSON pointer"),
        ("1.7e308", ["--by", "1.7e308"], "float64"),
    ],
)
def test_incr_of_a_non_number_exits_2_and_writes_nothing(cli, value, args, words):
    cli.ok("set", "k", value)
    before = stored(cli, "k")
    assert words in cli.fail(2, "incr", "k", *args)
    assert stored(cli, "k") == before
    assert version(cli, "k") == 1


def test_incr_expected_version_and_reason(cli):
    cli.ok("incr", "k", "--reason", "first")
    assert "expected version 7" in cli.fail(3, "incr", "k", "--expected-version", "7")
    assert cli.ok("incr", "k", "--expected-version", "1", "--by", "2")["number"] == 3
    reasons = [e.get("reason") for e in cli.ok("history", "k")["entries"]]
    assert reasons == ["incr by 2", "incr by 1: first"]


def test_patch_and_incr_help_and_usage(cli):
    for command in ("patch", "incr"):
        proc = cli.raw(command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert b"example:" in proc.stdout
    one_line_error(cli.run("incr"), 2)  # no KEY
    one_line_error(cli.run("patch", "k", "[]", "--nope"), 2)


# -- 4 shell loops x 25 `castore incr`, no retry loop -------------------------------------------

LOOPS = 4
INCREMENTS = 25


def test_concurrent_shell_loops_of_incr_end_exact(cli, tmp_path):
    """The issue's scenario: 4 concurrent loops of 25 plain `castore incr` end at exactly 100."""
    script = tmp_path / "loop.sh"
    script.write_text(
        f'for i in $(seq {INCREMENTS}); do "$PY" -m castore --dir "$STORE" --dag {DAG} '
        "incr counter --path /runs >/dev/null || exit 1; done\n"
    )
    env = {**cli.env, "PY": sys.executable, "STORE": os.fspath(cli.dir)}
    loops = [
        subprocess.Popen(["sh", str(script)], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
        for _ in range(LOOPS)
    ]
    errors = [loop.communicate(timeout=120)[1] for loop in loops]
    assert [loop.returncode for loop in loops] == [0] * LOOPS, errors
    assert stored(cli, "counter") == b'{"runs":100}'
    assert version(cli, "counter") == LOOPS * INCREMENTS
