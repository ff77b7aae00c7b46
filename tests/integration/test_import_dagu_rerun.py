"""A rerun of ``import-dagu`` after Dagu wrote again says castore and Dagu differ.

Found by a review (thirty-fourth session): the rerun skipped the key as
"key exists in castore" and exited 0, so a staged migration served Dagu's
older value with nothing said. The oracle is Dagu's record (what its
``state.get`` prints) against castore's answer and the exit code.
"""

from __future__ import annotations

import json

import pytest

from tests.unit.test_dagu import DaguDir

pytestmark = pytest.mark.integration

DAG = "daily"


def test_a_rerun_after_dagu_wrote_again_is_not_a_silent_skip(cli, tmp_path):
    d = DaguDir(tmp_path / "dag-state")
    rel = d.record("dag", DAG, "cursor", {"last_id": 123}, 1)
    first = cli.run("import-dagu", str(d.root))
    assert first.returncode == 0, first.stderr
    again = cli.run("import-dagu", str(d.root))  # nothing new: a finished migration
    assert again.returncode == 0, again.stderr

    d.record("dag", DAG, "cursor", {"last_id": 456}, 2)  # Dagu writes on
    rerun = cli.run("import-dagu", str(d.root))
    assert rerun.returncode == 1, rerun.stdout
    (line,) = [json.loads(x) for x in rerun.stdout.splitlines() if b'"file"' in x]
    assert (line["file"], line["status"]) == (rel, "skipped")
    assert line["reason"].endswith("castore and Dagu differ"), line
    assert "(version 2, hash " in line["reason"]
    assert "record(s) not imported" in rerun.stderr.decode()
    got = cli.ok("get", "cursor", dag=DAG)  # never merged: castore's own stays
    assert (got["version"], got["value"]) == (1, {"last_id": 123})


def test_a_rerun_after_castore_wrote_on_and_compacted_is_harmless(cli, tmp_path):
    """Found by this session's second review: the record castore imported, compacted away
    once castore wrote on, was counted as ``castore and Dagu differ`` (exit 1)."""
    d = DaguDir(tmp_path / "dag-state")
    d.record("dag", DAG, "cursor", {"last_id": 3}, 3)
    assert cli.run("import-dagu", str(d.root)).returncode == 0
    cli.ok("set", "cursor", '{"last_id": 4}', dag=DAG)
    cli.ok("set", "cursor", '{"last_id": 5}', dag=DAG)
    cli.ok("compact", "--keep-last", "1")
    rerun = cli.run("import-dagu", str(d.root))
    assert rerun.returncode == 0, rerun.stderr
    (line,) = [json.loads(x) for x in rerun.stdout.splitlines() if b'"file"' in x]
    assert line["reason"] == (
        "castore wrote on past this record's version, which compaction dropped since"
    )
    assert cli.ok("get", "cursor", dag=DAG)["version"] == 5


@pytest.mark.parametrize("castore_writes_on", [False, True])
def test_castores_own_value_at_the_records_version_differs(cli, tmp_path, castore_writes_on):
    """castore's key holds the record's version number with another value (the key is
    castore's own, not the import's): castore and Dagu differ, exit 1, whether castore's
    newest version is that one or a later one (the version compared is then fetched)."""
    cli.ok("set", "cursor", '{"castore": 1}', dag=DAG)  # version 1, castore's own value
    if castore_writes_on:
        cli.ok("set", "cursor", '{"castore": 2}', dag=DAG)
    d = DaguDir(tmp_path / "dag-state")
    rel = d.record("dag", DAG, "cursor", {"last_id": 1}, 1)
    run = cli.run("import-dagu", str(d.root))
    assert run.returncode == 1, run.stdout
    (line,) = [json.loads(x) for x in run.stdout.splitlines() if b'"file"' in x]
    assert (line["file"], line["status"]) == (rel, "skipped")
    assert line["reason"].endswith("castore and Dagu differ"), line
    got = cli.ok("get", "cursor", dag=DAG)
    assert got["value"] == {"castore": 2 if castore_writes_on else 1}
