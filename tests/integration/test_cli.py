import hashlib
import json
import re
import subprocess

import pytest

import castore
from tests.helpers import Cli, json_line, one_line_error

DAG = "daily-agent"  # the cli fixture's --dag
# The CLI suite runs on a server over PostgreSQL too (tests/conftest.py).
pytestmark = pytest.mark.remote_postgresql

SET_FIELDS = ["operation", "scope", "namespace", "key", "version", "hash", "created"]
GET_FOUND_FIELDS = ["operation", "scope", "namespace", "key", "found", "version", "hash", "value"]
GET_MISSING_FIELDS = ["operation", "scope", "namespace", "key", "found"]
DELETE_FIELDS = ["operation", "scope", "namespace", "key", "deleted"]
DIFF_HEAD = ["operation", "scope", "namespace", "key", "changed", "foundPrevious"]
DIFF_FULL = [*DIFF_HEAD, "previousVersion", "version", "hash", "previous", "current"]
ENTRY_FIELDS = ["scope", "namespace", "key", "version", "hash", "createdAt", "updatedAt"]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")

# Golden sha256 vectors from the Dagu reference (§2.2).
HASH_123 = "c475a5436a1e85bfcf9edbcefb55dd6389d937e60d8e8ba17fb5791e61a5c689"
HASH_456 = "b4b805a36ca1d984f359a9f8f73c69cf194d31ae14a0538150cb52f0479acfc5"
HASH_HTML = "905383911f60d2bda544e6319b56d4c820fc48e1c92bc5198b0084a74bd9019d"
MIB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.integration
def test_help(cli):
    proc = cli.raw("--help")
    assert proc.returncode == 0
    assert proc.stderr == b""
    text = proc.stdout.decode()
    assert "usage: castore" in text
    for command in ("get", "set", "diff", "delete", "list"):
        assert command in text
    sub = cli.raw("set", "--help")
    assert sub.returncode == 0
    assert "--expected-version" in sub.stdout.decode()
    assert "--create-only" in sub.stdout.decode()


@pytest.mark.integration
def test_dagu_executor_flow(cli):
    # Dagu §8 items 21-27, DAG name daily-agent.
    line = cli.line("set", "cursors/api", '{"last_id":123}')
    assert line == (
        '{"operation":"set","scope":"dag","namespace":"daily-agent","key":"cursors/api",'
        f'"version":1,"hash":"{HASH_123}","created":true}}'
    )

    line = cli.line("get", "cursors/api")
    assert line == (
        '{"operation":"get","scope":"dag","namespace":"daily-agent","key":"cursors/api",'
        f'"found":true,"version":1,"hash":"{HASH_123}","value":{{"last_id":123}}}}'
    )

    same = cli.ok("diff", "cursors/api", '{"last_id": 123}')
    assert list(same) == DIFF_FULL
    assert same["changed"] is False
    assert same["foundPrevious"] is True
    assert same["previousVersion"] == same["version"] == 1
    assert same["hash"] == HASH_123
    assert same["previous"] == same["current"] == {"last_id": 123}

    changed = cli.ok("diff", "cursors/api", '{"last_id":456}')
    assert list(changed) == DIFF_FULL
    assert changed["changed"] is True
    assert changed["foundPrevious"] is True
    assert changed["previousVersion"] == 1
    assert changed["version"] == 2
    assert changed["hash"] == HASH_456
    assert changed["previous"] == {"last_id": 123}
    assert changed["current"] == {"last_id": 456}

    line = cli.line("get", "missing", "--default", '"seed"')
    assert line == (
        '{"operation":"get","scope":"dag","namespace":"daily-agent","key":"missing",'
        '"found":false,"value":"seed"}'
    )

    db = cli.ok("set", "cursors/db", '{"last_id":1}')
    assert db["created"] is True
    cli.ok("set", "tokens/api", '"t"')
    listed = cli.ok("list", "--prefix", "cursors/")
    assert list(listed) == ["operation", "scope", "namespace", "prefix", "entries"]
    assert listed["operation"] == "list"
    assert listed["prefix"] == "cursors/"
    assert [e["key"] for e in listed["entries"]] == ["cursors/api", "cursors/db"]
    assert listed["entries"][0]["version"] == 2
    assert listed["entries"][0]["hash"] == HASH_456

    line = cli.line("delete", "cursors/api")
    assert line == (
        '{"operation":"delete","scope":"dag","namespace":"daily-agent","key":"cursors/api",'
        '"deleted":true}'
    )
    again = cli.ok("delete", "cursors/api")
    assert list(again) == DELETE_FIELDS
    assert again["deleted"] is False
    never = cli.ok("delete", "never/set")
    assert never["deleted"] is False

    gone = cli.ok("get", "cursors/api")
    assert list(gone) == GET_MISSING_FIELDS
    assert gone["found"] is False
    after = cli.ok("list", "--prefix", "cursors/")
    assert [e["key"] for e in after["entries"]] == ["cursors/db"]


@pytest.mark.integration
def test_values_from_stdin(cli):
    first = cli.ok("set", "k", stdin=b'{ "b": 2,\n  "a": 1 }\n')
    assert list(first) == SET_FIELDS
    assert first["version"] == 1
    assert first["hash"] == sha256(b'{"a":1,"b":2}')
    assert cli.line("get", "k").endswith(',"value":{"a":1,"b":2}}')

    second = cli.ok("set", "k", "-", stdin=b"[1, 2]")
    assert (second["version"], second["created"]) == (2, False)
    assert second["hash"] == sha256(b"[1,2]")

    unchanged = cli.ok("diff", "k", stdin=b" [1,2] ")
    assert unchanged["changed"] is False
    assert unchanged["version"] == 2

    changed = cli.ok("diff", "k", "-", stdin=b'"x"')
    assert (changed["changed"], changed["version"], changed["current"]) == (True, 3, "x")

    cli.fail(2, "set", "k", stdin=b"")
    cli.fail(2, "set", "k", "-", stdin=b"  \n")


@pytest.mark.integration
def test_value_bytes_are_normalized_verbatim(cli):
    value = '{"z":"<a&b>","a":1.2300,"big":9007199254740993,"e":1E5,"neg":-0}'
    normalized = (
        '{"a":1.2300,"big":9007199254740993,"e":1E5,"neg":-0,"z":"\\u003ca\\u0026b\\u003e"}'
    )
    written = cli.ok("set", "x<y>&z", value)
    assert written["key"] == "x<y>&z"
    assert written["hash"] == sha256(normalized.encode())
    line = cli.line("get", "x<y>&z")
    # The envelope is not HTML-escaped; value bytes are the stored normalized JSON.
    assert '"key":"x<y>&z"' in line
    assert line.endswith(f',"value":{normalized}}}')

    html = cli.ok("set", "html", '"<a&b>"')
    assert html["hash"] == HASH_HTML

    listed = cli.line("list", "--include-values", "--prefix", "x")
    assert f'"value":{normalized}}}]}}' in listed

    diffed = cli.line("diff", "x<y>&z", '{"a":1.230}', "--no-update")
    assert diffed.endswith(f',"previous":{normalized},"current":{{"a":1.230}}}}')


@pytest.mark.integration
def test_unicode_keys_namespaces_and_values(cli):
    key = "état/日本/🎉"
    namespace = "équipe:Ω"
    value = '{"é":"ü","ß":["日本語","🎉"],"A":"\\u00e9\\u2028"}'
    normalized = '{"A":"é\\u2028","ß":["日本語","🎉"],"é":"ü"}'
    written = cli.ok("set", key, value, "--scope", "custom", "--namespace", namespace)
    assert (written["key"], written["namespace"], written["scope"]) == (key, namespace, "custom")
    assert written["hash"] == sha256(normalized.encode())

    proc = cli.run("get", key, "--scope", "custom", "--namespace", namespace)
    got = json_line(proc)
    raw = proc.stdout.decode("utf-8")
    assert f'"key":"{key}"' in raw  # raw UTF-8, not \u-escaped
    assert f'"namespace":"{namespace}"' in raw
    assert raw.endswith(f',"value":{normalized}}}\n')
    assert got["value"] == {"A": "é\u2028", "ß": ["日本語", "🎉"], "é": "ü"}

    listed = cli.ok("list", "--scope", "custom", "--namespace", namespace)
    assert [e["key"] for e in listed["entries"]] == [key]

    # Envelope strings are escaped as Go's encoder with SetEscapeHTML(false) does.
    odd = 'a\u2028b\x7f<\x08\x0c"/\u2029&>'
    line = cli.line("set", odd, '"\u2028<"')
    assert '"key":"a\\u2028b\x7f<\\b\\f\\"/\\u2029&>"' in line
    assert json.loads(line)["key"] == odd
    listed_odd = cli.line("list", "--include-values", "--prefix", "a")
    assert listed_odd.endswith(',"value":"\\u2028\\u003c"}]}')

    # Invalid UTF-8 inside a string becomes U+FFFD, as Go does.
    bad = cli.ok("set", "bad-utf8", b'"a\xffb"')
    assert bad["hash"] == sha256('"a\ufffdb"'.encode())
    assert cli.ok("get", "bad-utf8")["value"] == "a\ufffdb"


@pytest.mark.integration
def test_get_default_and_required(cli):
    got = cli.ok("get", "nope", "--default", '{ "y": [1, 2.50], "x": 1 }')
    assert list(got) == [*GET_MISSING_FIELDS, "value"]
    assert got["found"] is False
    assert cli.line("get", "nope", "--default", '{"y":1,"x":2}').endswith(
        '"found":false,"value":{"x":2,"y":1}}'
    )
    null = cli.line("get", "nope", "--default", "null")
    assert null.endswith('"found":false,"value":null}')

    message = cli.fail(4, "get", "nope", "--required")
    assert "not found" in message
    assert "nope" in message
    cli.fail(4, "get", "nope", "--required", "--default", '"seed"')  # required wins
    cli.fail(2, "get", "nope", "--default", "{")

    cli.ok("set", "yes", "1")
    found = cli.ok("get", "yes", "--required", "--default", '"seed"')
    assert list(found) == GET_FOUND_FIELDS
    assert (found["found"], found["value"]) == (True, 1)


@pytest.mark.integration
@pytest.mark.parametrize("key", ["yes", "nope"])
def test_a_bad_default_is_refused_whether_or_not_the_key_is_found(cli, key):
    """A typo in ``--default`` shows on the first run, not on the first miss."""
    cli.ok("set", "yes", "1")
    before = cli.line("history", "yes")
    for bad in ("{", "[1,]", "1 2", "NaN", ""):
        message = cli.fail(2, "get", key, "--default", bad)
        assert message.startswith("--default: ")
    cli.fail(2, "get", key, "--default", "{", "--required")  # the input is checked first
    assert cli.line("history", "yes") == before
    assert cli.ok("get", "yes", "--default", '"seed"')["value"] == 1


@pytest.mark.integration
def test_conflicts_and_create_only(cli):
    assert cli.ok("set", "k", "1")["version"] == 1

    message = cli.fail(3, "set", "k", "2", "--expected-version", "5")
    assert "5" in message
    assert "1" in message
    assert "expected version 5" in message
    assert "actual version 1" in message

    message = cli.fail(3, "set", "k", "2", "--create-only")
    assert "create_only" in message
    assert "actual version 1" in message

    message = cli.fail(3, "set", "k", "2", "--expected-version", "0")
    assert "expected version 0" in message
    assert "actual version 1" in message

    cli.fail(3, "set", "k", "2", "--expected-version", "-1")  # negative always conflicts
    cli.fail(3, "diff", "k", "1", "--expected-version", "9")  # even when unchanged
    cli.fail(3, "diff", "k", "7", "--expected-version", "9", "--no-update")

    got = cli.ok("get", "k")
    assert (got["version"], got["value"]) == (1, 1)  # nothing was written

    ok2 = cli.ok("set", "k", "2", "--expected-version", "1")
    assert (ok2["version"], ok2["created"]) == (2, False)

    new = cli.ok("set", "fresh", '"a"', "--expected-version", "0")
    assert (new["version"], new["created"]) == (1, True)
    created = cli.ok("set", "only", '"first"', "--create-only")
    assert (created["version"], created["created"]) == (1, True)
    message = cli.fail(3, "set", "absent", "1", "--expected-version", "3")
    assert "expected version 3" in message
    assert "actual version 0" in message
    cli.fail(3, "set", "absent", "1", "--create-only", "--expected-version", "5")
    cli.ok("get", "absent", "--default", "0")  # still absent

    diffed = cli.ok("diff", "k", "3", "--expected-version", "2")
    assert (diffed["changed"], diffed["previousVersion"], diffed["version"]) == (True, 2, 3)


@pytest.mark.integration
def test_diff_without_update_and_on_missing_keys(cli):
    dry = cli.ok("diff", "k", '{"v":1}', "--no-update")
    assert list(dry) == [*DIFF_HEAD, "current"]
    assert (dry["changed"], dry["foundPrevious"], dry["current"]) == (True, False, {"v": 1})
    assert cli.ok("get", "k")["found"] is False  # nothing written

    created = cli.ok("diff", "k", '{"v":1}')
    assert list(created) == [*DIFF_HEAD, "version", "hash", "current"]
    assert (created["changed"], created["foundPrevious"], created["version"]) == (True, False, 1)
    old_hash = created["hash"]
    assert old_hash == sha256(b'{"v":1}')

    preview = cli.ok("diff", "k", '{"v":2}', "--no-update")
    assert list(preview) == DIFF_FULL
    assert preview["changed"] is True
    assert preview["previousVersion"] == preview["version"] == 1
    assert preview["hash"] == old_hash  # Dagu reports the OLD hash
    assert preview["previous"] == {"v": 1}
    assert preview["current"] == {"v": 2}
    after = cli.ok("get", "k")
    assert (after["version"], after["value"]) == (1, {"v": 1})

    same = cli.ok("diff", "k", '{"v":1}', "--no-update")
    assert (same["changed"], same["version"], same["hash"]) == (False, 1, old_hash)

    cli.ok("set", "n", "null")
    null = cli.line("diff", "n", "null")
    assert null.endswith(
        f'"changed":false,"foundPrevious":true,"previousVersion":1,"version":1,'
        f'"hash":"{sha256(b"null")}","previous":null,"current":null}}'
    )


@pytest.mark.integration
def test_versions_keep_increasing_across_delete(cli):
    first = cli.ok("set", "k", '"one"')
    assert (first["version"], first["created"]) == (1, True)
    entry1 = cli.ok("list")["entries"][0]
    assert entry1["createdAt"] == entry1["updatedAt"]

    second = cli.ok("set", "k", '"one"')  # identical value still bumps the version
    assert (second["version"], second["created"], second["hash"]) == (2, False, first["hash"])
    entry2 = cli.ok("list")["entries"][0]
    assert entry2["createdAt"] == entry1["createdAt"]
    assert entry2["updatedAt"] > entry1["updatedAt"]

    assert cli.ok("delete", "k")["deleted"] is True
    assert cli.ok("get", "k")["found"] is False
    assert cli.ok("list")["entries"] == []

    third = cli.ok("set", "k", '"two"')
    assert (third["version"], third["created"]) == (4, True)
    entry3 = cli.ok("list")["entries"][0]
    assert entry3["version"] == 4
    assert entry3["createdAt"] > entry1["createdAt"]  # created is reset by the re-create
    assert entry3["createdAt"] == entry3["updatedAt"]

    assert cli.ok("delete", "k")["deleted"] is True
    zero = cli.ok("set", "k", '"three"', "--expected-version", "0")
    assert (zero["version"], zero["created"]) == (6, True)


@pytest.mark.integration
def test_set_delete_set_gives_version_3(cli):
    assert cli.ok("set", "k", "1")["version"] == 1
    assert cli.ok("delete", "k")["deleted"] is True
    again = cli.ok("set", "k", "1")
    assert (again["version"], again["created"]) == (3, True)


@pytest.mark.integration
def test_list_order_limit_and_values(cli):
    keys = ["b", "ab", "é", "a/b", "Z", "a", "_", "n"]
    for key in keys:
        cli.ok("set", key, "null" if key == "n" else f'"{key}"')
    ordered = sorted(keys, key=lambda k: k.encode())
    assert ordered == ["Z", "_", "a", "a/b", "ab", "b", "n", "é"]

    listed = cli.ok("list")
    assert list(listed) == ["operation", "scope", "namespace", "entries"]  # no empty prefix
    assert (listed["scope"], listed["namespace"]) == ("dag", "daily-agent")
    assert [e["key"] for e in listed["entries"]] == ordered
    for entry in listed["entries"]:
        assert list(entry) == ENTRY_FIELDS
        assert (entry["scope"], entry["namespace"], entry["version"]) == ("dag", "daily-agent", 1)
        assert RFC3339.fullmatch(entry["createdAt"])
        assert RFC3339.fullmatch(entry["updatedAt"])

    limited = cli.ok("list", "--limit", "2")
    assert [e["key"] for e in limited["entries"]] == ["Z", "_"]
    assert [e["key"] for e in cli.ok("list", "--limit", "0")["entries"]] == ordered

    values = cli.ok("list", "--include-values", "--limit", "100")
    for entry in values["entries"]:
        assert list(entry) == [*ENTRY_FIELDS, "value"]
        assert entry["value"] == (None if entry["key"] == "n" else entry["key"])

    prefixed = cli.ok("list", "--prefix", "a")
    assert list(prefixed) == ["operation", "scope", "namespace", "prefix", "entries"]
    assert [e["key"] for e in prefixed["entries"]] == ["a", "a/b", "ab"]
    slash = cli.ok("list", "--prefix", "a/", "--include-values")
    assert [(e["key"], e["value"]) for e in slash["entries"]] == [("a/b", "a/b")]

    assert cli.ok("delete", "Z")["deleted"] is True
    after_delete = cli.ok("list", "--limit", "1")  # the limit counts live keys only
    assert [e["key"] for e in after_delete["entries"]] == ["_"]

    empty = cli.line("list", "--scope", "global")
    assert empty == '{"operation":"list","scope":"global","namespace":"_","entries":[]}'


@pytest.mark.integration
def test_scopes_and_namespaces(cli):
    env_dag = cli.ok("set", "k", '"env"', dag=None, env={"DAG_NAME": "from-env"})
    assert (env_dag["scope"], env_dag["namespace"]) == ("dag", "from-env")
    flag_wins = cli.ok("get", "k", dag="from-flag", env={"DAG_NAME": "from-env"})
    assert (flag_wins["namespace"], flag_wins["found"]) == ("from-flag", False)
    cross = cli.ok("get", "k", "--namespace", "from-env", dag="other")
    assert (cross["namespace"], cross["value"]) == ("from-env", "env")

    root = cli.ok("set", "k", '"root"', "--scope", "root_dag", "--root-dag", "parent", dag="child")
    assert (root["scope"], root["namespace"]) == ("root_dag", "parent")
    root_env = cli.ok(
        "get", "k", "--scope", "root_dag", dag="child", env={"CASTORE_ROOT_DAG": "parent"}
    )
    assert (root_env["namespace"], root_env["value"]) == ("parent", "root")
    fallback = cli.ok("get", "k", "--scope", "root_dag", dag="child")
    assert (fallback["scope"], fallback["namespace"], fallback["found"]) == (
        "root_dag",
        "child",
        False,
    )
    # A Dagu step's env `CASTORE_ROOT_DAG: ${run.root_name}`: a sub-DAG run gets the root's
    # name; a root run has none, and Dagu leaves the reference as written (its DAG is the root)
    for unresolved in ("${run.root_name}", "${context.run.root_name}"):
        as_root = cli.ok(
            "set", "k", '"own"', "--scope", "root_dag", dag="parent",
            env={"CASTORE_ROOT_DAG": unresolved},
        )  # fmt: skip
        assert as_root["namespace"] == "parent"
        flag = cli.ok("get", "k", "--scope", "root_dag", "--root-dag", unresolved, dag="parent")
        assert (flag["namespace"], flag["value"]) == ("parent", "own")
        nameless = cli.run("get", "k", "--scope", "root_dag", "--root-dag", unresolved, dag=None)
        assert (nameless.returncode, nameless.stdout) == (2, b"")
        assert b"namespace is required" in nameless.stderr
    padded = cli.ok(
        "get", "k", "--scope", "root_dag", "--root-dag", " ${run.root_name} ", dag="parent"
    )
    assert padded["namespace"] == "parent"
    # the filters of audit and export: as if the variable were not set (every root_dag namespace)
    for command in ("audit", "export"):
        plain = cli.lines(command, "--scope", "root_dag", dag=None)
        root_env = {"CASTORE_ROOT_DAG": "${run.root_name}"}
        assert cli.lines(command, "--scope", "root_dag", dag=None, env=root_env) == plain
    misspelt = cli.run("get", "k", "--scope", "root_dag", "--root-dag", "${run.rootname}")
    assert (misspelt.returncode, misspelt.stdout) == (2, b"")
    assert b'unresolved reference "${run.rootname}"' in misspelt.stderr, misspelt.stderr

    glob = cli.ok("set", "k", '"global"', "--scope", "global", dag=None)
    assert (glob["scope"], glob["namespace"]) == ("global", "_")
    trimmed = cli.ok("get", "k", "--scope", " global ", dag=None)
    assert (trimmed["scope"], trimmed["value"]) == ("global", "global")
    team = cli.ok("set", "k", '"g-team"', "--scope", "global", "--namespace", "team")
    assert team["namespace"] == "team"

    # scopes are separate keyspaces: global/_/k and custom/_/k differ
    custom = cli.ok("get", "k", "--scope", "custom", "--namespace", "_")
    assert (custom["scope"], custom["namespace"], custom["found"]) == ("custom", "_", False)
    cli.ok("set", "k", '"c-team"', "--scope", "custom", "--namespace", "team")
    assert cli.ok("get", "k", "--scope", "global", "--namespace", "team")["value"] == "g-team"
    assert cli.ok("get", "k", "--scope", "custom", "--namespace", "team")["value"] == "c-team"

    blank = cli.ok("get", "k", "--namespace", "  ", "--scope", "", dag="from-env")
    assert (blank["scope"], blank["namespace"], blank["value"]) == ("dag", "from-env", "env")

    message = cli.fail(2, "get", "k", "--scope", "custom")
    assert "namespace is required for custom scope" in message
    message = cli.fail(2, "list", "--scope", "custom")
    assert "namespace is required for custom scope" in message
    message = cli.fail(2, "get", "k", dag=None)  # no --dag and no $DAG_NAME
    assert "namespace is required" in message
    message = cli.fail(2, "set", "k", "1", "--scope", "DAG")
    assert 'unsupported scope "DAG"' in message


@pytest.mark.integration
def test_version(cli):
    want = (0, f"castore {castore.__version__}\n".encode(), b"")
    proc = cli.raw("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == want
    proc = cli.run("--version")  # after other global options too
    assert (proc.returncode, proc.stdout, proc.stderr) == want
    cli.ok("set", "k", "1")
    cli.ok("set", "k", "2")
    assert cli.ok("get", "k", "--version", "1")["value"] == 1  # get --version N keeps its meaning
    assert cli.ok("--no-sync", "get", "k", "--version", "2")["value"] == 2
    cli.fail(2, "get", "k", "--version")


@pytest.mark.integration
def test_a_fresh_location_reads_as_an_empty_store_until_a_write(cli):
    assert cli.ok("get", "k")["found"] is False
    assert cli.ok("list")["entries"] == []
    assert cli.ok("check")["ok"] is True
    assert cli.ok("stats")["total"]["keys"] == 0
    cli.fail(3, "set", "k", "1", "--expected-version", "1")
    assert cli.ok("set", "k", "1", "--mode", "group")["version"] == 1
    assert cli.ok("get", "k")["value"] == 1


@pytest.mark.integration
def test_global_options_after_the_command(cli):
    d = str(cli.dir)
    written = json_line(cli.raw("set", "k", '{"a":1}', "--dir", d, "--dag", "late", "--no-sync"))
    assert (written["namespace"], written["version"]) == ("late", 1)
    got = json_line(cli.raw("--dir", d, "get", "k", "--dag", "late"))
    assert got["value"] == {"a": 1}
    root = json_line(
        cli.raw("get", "k", "--scope", "root_dag", "--dir", d, "--dag", "x", "--root-dag", "late")
    )
    assert (root["namespace"], root["found"]) == ("late", False)
    listed = json_line(cli.raw("--no-sync", "list", "--dag", "late", "--dir", d))
    assert [e["key"] for e in listed["entries"]] == ["k"]
    deleted = json_line(cli.raw("delete", "k", "--dir", d, "--dag", "late"))
    assert deleted["deleted"] is True


@pytest.mark.integration
def test_long_names(cli):
    key = "é" * 511 + "/x"  # 1,024 bytes of UTF-8
    namespace = "n" * 1024
    assert len(key.encode()) == len(namespace.encode()) == 1024
    ref = ["--scope", "custom", "--namespace", namespace]
    written = cli.ok("set", key, '"long"', *ref)
    assert (written["key"], written["namespace"], written["version"]) == (key, namespace, 1)
    assert cli.ok("get", key, *ref)["value"] == "long"
    assert [e["key"] for e in cli.ok("list", *ref)["entries"]] == [key]
    max_key = "k" * 4096
    assert cli.ok("set", max_key, "1")["key"] == max_key
    message = cli.fail(2, "set", max_key + "k", "1")
    assert "4097 bytes" in message


INVALID_INPUT: list[tuple[list[str | bytes], str]] = [
    (["set", "../bad", "1"], 'invalid key "../bad"'),
    (["set", "a//b", "1"], 'invalid key "a//b"'),
    (["get", "./x"], 'invalid key "./x"'),
    (["get", "a/.."], 'invalid key "a/.."'),
    (["get", "/a"], 'invalid key "/a"'),
    (["delete", "a/"], 'invalid key "a/"'),
    (["get", "a\\b"], "invalid key"),
    (["get", "   "], "key is required"),
    (["set", "a\n/../b", "1"], 'invalid key "a\\n/../b"'),
    (["get", b"\xff"], "not valid UTF-8"),
    (["get", "k", "--namespace", "a/b"], 'invalid namespace "a/b"'),
    (["list", "--namespace", ".."], 'invalid namespace ".."'),
    (["get", "k", "--scope", "bogus"], 'unsupported scope "bogus"'),
    (["list", "--prefix", "a//"], 'invalid key_prefix "a/"'),
    (["list", "--prefix", "/x"], 'invalid key prefix "/x"'),
    (["list", "--limit", "-1"], "limit must be greater than or equal to zero"),
    (["list", "--limit", "2147483648"], "limit exceeds 2147483647"),
    (["set", "k", "{"], "invalid value"),
    (["set", "k", "1 2"], "invalid value"),
    (["set", "k", "NaN"], "invalid value"),
    (["diff", "k", "[1,]"], "invalid value"),
    (["set", "k", ""], "invalid value"),
    # Found by the audit review: an audit filter that is not UTF-8 matched nothing, exit 0
    (["audit", "--actor", b"al\xffice"], 'audit filter actor "al\\xffice": not valid UTF-8'),
    (["audit", "--run-id", b"\xff"], "audit filter run_id"),
    (["audit", "--step", b"s\xff"], "audit filter step"),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "message"), INVALID_INPUT, ids=[repr(a) for a, _ in INVALID_INPUT]
)
def test_invalid_input_exits_2(cli, args, message):
    text = cli.fail(2, *args)
    assert message in text


@pytest.mark.integration
def test_values_too_large_exit_2(cli):
    # 174,763 "<" normalize to 1,048,580 bytes although the raw input is under 1 MiB.
    message = cli.fail(2, "set", "big", stdin=b'"' + b"<" * (MIB // 6 + 1) + b'"')
    assert "too large" in message
    assert "1048576" in message
    # raw input over 1 MiB is rejected before compaction
    padded = b' "' + b"a" * (MIB - 2) + b'"'
    assert len(padded) == MIB + 1
    message = cli.fail(2, "set", "big", stdin=padded)
    assert message.startswith("value too large: standard input holds more than 1048576 bytes")
    cli.fail(2, "diff", "big", "-", stdin=padded)
    # exactly 1 MiB normalized is accepted
    exact = cli.ok("set", "big", stdin=padded[1:])
    assert exact["hash"] == sha256(padded[1:])
    assert cli.ok("get", "big")["value"] == "a" * (MIB - 2)


USAGE_ERRORS = [
    [],
    ["frobnicate"],
    ["get"],
    ["set"],
    ["diff"],
    ["delete"],
    ["set", "k", "1", "--expected-version", "abc"],
    ["diff", "k", "1", "--expected-version", "1.5"],
    ["list", "--limit", "abc"],
    ["get", "k", "--no-such-flag"],
    ["set", "k", "1", "extra"],
    ["get", "k", "--scope"],
]


@pytest.mark.integration
@pytest.mark.parametrize("args", USAGE_ERRORS, ids=[" ".join(a) or "<none>" for a in USAGE_ERRORS])
def test_usage_errors_exit_2(cli, args):
    cli.fail(2, *args)


@pytest.mark.integration
def test_negative_exponent_value_is_accepted(cli):
    # VALUE is any JSON text; "-1e5" must not be taken for an option.
    assert cli.ok("set", "n", "--", "-1e5")["hash"] == sha256(b"-1e5")
    assert cli.ok("set", "m", "-1.5")["hash"] == sha256(b"-1.5")
    assert cli.ok("set", "k", "-1e5")["hash"] == sha256(b"-1e5")


@pytest.mark.integration
def test_keys_are_trimmed_like_go_trimspace(cli):
    # The executor trims with Go's strings.TrimSpace; U+001F is not white space there.
    written = cli.ok("set", " \x1fk ", "1")
    assert written["key"] == "\x1fk"


def _with_closed(cli: Cli, redirect: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``castore --dir … --dag … ARGS`` started with ``redirect`` (e.g. ``<&-``) applied."""
    argv = [str(a) for a in cli.argv(*cli.options(), *args)]
    return subprocess.run(
        ["/bin/sh", "-c", f'exec "$@" {redirect}', "sh", *argv],
        capture_output=True,
        env=cli.env,
        cwd=cli.cwd,
        timeout=cli.timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "instead"),
    [
        (("set", "k"), "give the value as an argument"),
        (("set", "k", "-"), "give the value as an argument"),
        (("diff", "k"), "give the value as an argument"),
        (("patch", "k"), "give the value as an argument"),
        (("import", "-"), "give the export file's path instead of -"),
    ],
)
def test_a_closed_standard_input_is_a_usage_error(cli, args, instead):
    # Found by a review: a traceback (AttributeError on sys.stdin.buffer), exit 1.
    cli.ok("set", "k", "1")
    before = cli.raw_ok("export")
    message = one_line_error(_with_closed(cli, "<&-", *args), 2)
    assert message == f"standard input is closed: {instead}"
    assert cli.raw_ok("export") == before


@pytest.mark.parametrize("args", [("get", "k"), ("set", "k", "5"), ("stats",)])
def test_a_closed_standard_output_does_nothing(cli, args):
    cli.ok("set", "k", "1")
    before = cli.raw_ok("export")
    proc = _with_closed(cli, ">&-", *args)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == b"castore: standard output is closed: nothing was done\n"
    assert cli.raw_ok("export") == before


def test_an_output_that_cannot_be_written_is_named_as_such(cli):
    cli.ok("set", "k", "1")
    message = one_line_error(_with_closed(cli, ">/dev/full", "set", "k", "7"), 1)
    assert message == (
        "cannot write the output: No space left on device"
        " (the command completed: what it wrote is stored)"
    )
    assert cli.ok("get", "k")["value"] == 7  # the write itself was made


@pytest.mark.parametrize(
    ("args", "stdin", "said"),
    [
        (
            ("set", "k", "{a: 1}"),
            b"",
            "invalid value: invalid character 'a' looking for beginning of object key string "
            "(line 1, column 2)",
        ),
        (
            ("set", "k"),
            b'{\n  "a": 1\n  "b": 2\n}\n',
            "invalid value: invalid character '\"' after object key:value pair (line 3, column 3)",
        ),
        (("diff", "k", "[1, 2"), b"", "invalid value: unexpected EOF (line 1, column 6)"),
        (
            ("set", "k", "trux"),
            b"",
            "invalid value: invalid character 'x' in literal true (expecting 'e') "
            "(line 1, column 4)",
        ),
        (
            ("get", "k", "--default", "{x}"),
            b"",
            "--default: invalid value: invalid character 'x' looking for beginning of object "
            "key string (line 1, column 2)",
        ),
        (
            ("patch", "k", '[{"op": "add" "path": "/a"}]'),
            b"",
            "invalid value: invalid character '\"' after object key:value pair (line 1, column 15)",
        ),
    ],
)
def test_json_that_does_not_parse_is_refused_naming_where(cli, args, stdin, said):
    """Was: ``castore set k '{a: 1}'`` said Go's words only (``invalid character 'a' looking
    for beginning of object key string``), never where: in a long value, or one read from
    standard input over several lines, the user had to hunt for it."""
    cli.ok("set", "k", "1")
    assert cli.fail(2, *args, stdin=stdin) == said
    assert cli.ok("get", "k")["version"] == 1  # nothing written


def test_a_value_that_names_a_file_says_to_give_the_file_as_input(cli, tmp_path):
    # Found by the new-user review: `castore set k /tmp/v.json` (the file meant) said only
    # "invalid character '/' looking for beginning of value".
    value = tmp_path / "v.json"
    value.write_text('{"a": 1}')
    cli.ok("set", "k", "1")
    assert cli.fail(2, "set", "k", str(value)) == (
        "invalid value: invalid character '/' looking for beginning of value (line 1, "
        f"column 1) (VALUE is JSON text, not a file: castore set KEY < {value})"
    )
    assert "not a file" not in cli.fail(2, "set", "k", str(tmp_path / "none.json"))
    assert cli.ok("get", "k")["version"] == 1  # nothing written
    assert cli.ok("set", "k", stdin=value.read_bytes())["version"] == 2  # as the hint says


def test_a_patch_that_names_a_file_says_to_give_the_file_as_input(cli, tmp_path):
    # Noticed in the thirty-seventh session: `castore patch k /tmp/p.json` got no hint.
    patch = tmp_path / "p.json"
    patch.write_text('[{"op": "add", "path": "/a", "value": 1}]')
    cli.ok("set", "k", "{}")
    for merge in ([], ["--merge"]):
        assert cli.fail(2, "patch", *merge, "k", str(patch)) == (
            "invalid value: invalid character '/' looking for beginning of value (line 1, "
            f"column 1) (PATCH is JSON text, not a file: castore patch KEY < {patch})"
        )
    assert cli.ok("get", "k")["version"] == 1  # nothing written
    assert cli.ok("patch", "k", stdin=patch.read_bytes())["version"] == 2  # as the hint says


def test_the_library_words_json_errors_as_go_and_gives_the_position_apart(store_location):
    store = castore.Store(store_location, dag="d")
    with pytest.raises(castore.InvalidValueError) as caught:
        store.set("k", b'{\n "a": 1,\n}')
    assert str(caught.value) == (
        "invalid value: invalid character '}' looking for beginning of object key string"
    )
    assert caught.value.position == (3, 1)
