"""Import lines and versions at the edges of what a store keeps (a review, 2026-12-04).

Each case was accepted before, and broke a later command or a round trip: a damaged
line's hash was never read (gc and stats then raised for good), a time 0 was taken for
"now" (times went back and the store's own export was refused), audit fields were
unbounded (export wrote lines import refuses), a header nested deep raised
``RecursionError``, and a key at version 2**63-1 took writes past what a version holds.
The oracle of each: the store is exactly as before the refused command, and what it
accepts round-trips (export, import into a fresh store, export again: the same bytes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import castore
from castore import ConflictError, InvalidValueError, Store
from castore.codec import hexdigest
from tests.helpers import Cli, one_line_error

DAG = "d"
HEADER = b'{"format":"castore-export","version":1}\n'
TOP = (1 << 63) - 1


def _line(**fields: Any) -> bytes:
    record = {"scope": "dag", "namespace": DAG, "key": "k", "version": 1, "op": "set"}
    record |= {"time_ns": 5, "hash": hexdigest(b"1"), "value": 1}
    record.update(fields)
    record = {name: value for name, value in record.items() if value is not None}
    return json.dumps(record).encode() + b"\n"


def _reader(data: bytes) -> Callable[[], Iterator[bytes]]:
    return lambda: iter(data.splitlines(keepends=True))


def _export(store: Store) -> bytes:
    return b"".join(castore.export_lines(store))


def _refused(location: str, data: bytes, said: str) -> None:
    store = Store(location, dag=DAG)
    store.set("other", {"kept": True})
    before = _export(store)
    with pytest.raises(InvalidValueError, match=said):
        castore.import_lines(store, _reader(data))
    assert _export(Store(location, dag=DAG)) == before  # nothing imported, nothing changed


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"op": "damaged", "hash": "zz", "value": None}, "line 2: hash 'zz' is not a sha256"),
        ({"op": "damaged", "hash": "A" * 64, "value": None}, "line 2: hash 'AAAA"),
        ({"time_ns": 0}, r"line 2: Expected `int` >= 1 - at `\$.time_ns`"),
        ({"audit": {"reason": "r" * 8193}}, "line 2: audit field reason holds 8193 characters"),
        ({"audit": {"pid": -1}}, "line 2: audit field pid -1 is out of range"),
        ({"audit": {"rollback_from": TOP + 1}}, "line 2: audit field rollback_from"),
    ],
    ids=["damaged-hash", "damaged-hash-upper", "time-0", "reason", "pid", "rollback"],
)
def test_an_import_line_no_store_holds_is_refused(store_location, fields, said):
    _refused(store_location, HEADER + _line(**fields), said)


def test_a_line_cut_short_is_named_so(store_location: str, cli: Cli, tmp_path: Path) -> None:
    # Found by a review (thirty-second session): "line 2: Input data was truncated",
    # msgspec's words, told a user nothing of what happened to the file.
    said = "line 2: the line ends inside its JSON (a file cut short, or edited)"
    _refused(store_location, HEADER + _line()[:30], said.replace("(", r"\(").replace(")", r"\)"))
    dump = tmp_path / "cut.jsonl"
    dump.write_bytes(HEADER + _line()[:30])
    assert one_line_error(cli.run("import", dump), 2) == f"invalid value: {said}"


def test_a_header_nested_deep_is_refused_not_raised(
    store_location: str, cli: Cli, tmp_path: Path
) -> None:
    deep = b'{"format":"castore-export","version":1,"x":' + b"[" * 200_000 + b"]" * 200_000
    _refused(store_location, deep + b"}\n", "line 1: not a castore export header")
    dump = tmp_path / "deep.jsonl"
    dump.write_bytes(deep + b"}\n" + _line())
    error = one_line_error(cli.run("import", dump), 2)
    assert error.startswith("invalid value: line 1: not a castore export header")


def test_the_audit_text_an_import_keeps_round_trips(store_location, new_store_location):
    # The bound is the one every write has: 8,192 characters of each field pass.
    audit = {"reason": "r" * 8192, "dag_name": "\u2028" * 8192, "pid": TOP, "rollback_from": 1}
    store = Store(store_location, dag=DAG)
    castore.import_lines(store, _reader(HEADER + _line(audit=audit)))
    first = _export(store)
    again = Store(new_store_location(), dag=DAG)
    castore.import_lines(again, _reader(first))
    assert _export(again) == first


def test_a_key_at_the_highest_version_takes_no_more_writes(store_location, new_store_location):
    store = Store(store_location, dag=DAG)
    castore.import_lines(store, _reader(HEADER + _line(version=TOP, time_ns=TOP)))
    before = _export(store)
    for write in (
        lambda: store.set("k", 2),
        lambda: store.delete("k"),
        lambda: store.rollback("k", to_version=TOP),
        lambda: Store(store_location, dag=DAG).set("k", 3),  # a handle that never read it
    ):
        with pytest.raises(ConflictError, match="the highest version there is"):
            write()
    fresh = Store(store_location, dag=DAG)
    assert _export(fresh) == before
    assert fresh.get("k").version == TOP
    assert [e.version for e in fresh.history("k").entries] == [TOP]
    again = Store(new_store_location(), dag=DAG)
    castore.import_lines(again, _reader(before))  # the store's own export imports
    assert _export(again) == before


def test_the_cli_refuses_a_set_past_the_highest_version(cli: Cli, tmp_path: Path) -> None:
    dump = tmp_path / "top.jsonl"
    dump.write_bytes(HEADER + _line(version=TOP, time_ns=TOP))
    assert cli.run("import", dump).returncode == 0
    for args in (
        ["set", "k", "2"],
        ["delete", "k"],
        ["set", "k", "1", "--expected-version", str(TOP)],
    ):
        error = one_line_error(cli.run(*args), 3)
        assert "the highest version there is" in error, error
    shown = json.loads(cli.run("get", "k").stdout)
    assert shown["version"] == TOP


def _lost_newest(location: str) -> Store:
    """A store whose key k's newest entry is a repair's record of lost versions 2-3."""
    store = Store(location, dag=DAG)
    lost = _line(version=3, op="damaged", hash="", value=None, damaged_from=2, time_ns=6)
    castore.import_lines(store, _reader(HEADER + _line() + lost))
    with pytest.raises(castore.CorruptionError, match="versions 2-3 lost"):
        store.get("k")
    return store


@pytest.mark.parametrize("on_conflict", ["skip", "refuse", "overwrite"])
def test_a_key_whose_newest_versions_were_lost_is_a_key_with_history(
    store_location: str, on_conflict: Any
) -> None:
    # Found by a review: the validating pass read the key's newest value, so a key whose
    # newest entry is a repair's lost range failed every import naming it ("corrupt
    # store"), even --on-conflict skip, and the import's other keys with it.
    store = _lost_newest(store_location)
    before = _export(store)
    backup = HEADER + _line(key="a") + _line(value=2, hash=hexdigest(b"2"))
    if on_conflict == "refuse":
        with pytest.raises(ConflictError, match="1 imported key"):
            castore.import_lines(store, _reader(backup), on_conflict=on_conflict)
        assert _export(Store(store_location, dag=DAG)) == before
        return
    if on_conflict == "overwrite":  # version 1 is below the stored newest, 3: refused
        with pytest.raises(ConflictError, match="is below it"):
            castore.import_lines(store, _reader(backup), on_conflict=on_conflict)
        assert _export(Store(store_location, dag=DAG)) == before
        return
    report = castore.import_lines(store, _reader(backup), on_conflict=on_conflict)
    assert report.skipped_refs == [f"dag/{DAG}/k"]
    fresh = Store(store_location, dag=DAG)
    assert fresh.get("a").value == 1
    assert [e.version for e in fresh.history("k").entries] == [3, 1]


def test_a_cli_set_refuses_an_audit_field_no_import_could_take(cli: Cli) -> None:
    # Found by a review: the quick set path (file stores) wrote a 9,000-character reason
    # the library refuses, and the store's export was then refused by import.
    assert cli.run("set", "k", "1").returncode == 0
    error = one_line_error(cli.run("set", "k", "2", "--reason", "x" * 9000), 2)
    assert "audit field reason holds 9000 characters, more than 8192" in error
    shown = json.loads(cli.run("get", "k").stdout)
    assert shown["version"] == 1


def _big_history(versions: int) -> bytes:
    """An export of key a (small), then key big with ``versions`` values of 1,000,000 bytes."""
    lines = [HEADER, _line(key="a")]
    for version in range(1, versions + 1):
        value = f"{version:07d}" + "x" * 999_993
        digest = hexdigest(json.dumps(value).encode())
        lines.append(_line(key="big", version=version, time_ns=version, value=value, hash=digest))
    return b"".join(lines)


@pytest.mark.parametrize("on_conflict", ["refuse", "overwrite"])
def test_an_import_over_http_refuses_a_history_too_big_for_one_call_before_writing(
    tmp_path: Path, on_conflict: str
) -> None:
    # Found in the thirty-first session: a server reads at most 64 MiB of one backend
    # call, and an import sends a key's whole history in one call (an append for a new
    # key, a replace for an overwrite). The key over it failed when its turn came, after
    # the keys before it were written: now the validating pass refuses it, nothing written.
    from tests.conftest import remote_file_location

    data = _big_history(70)
    with remote_file_location(tmp_path) as url:
        store = Store(url, dag=DAG)
        if on_conflict == "overwrite":
            store.set("big", 0)
        store.set("other", {"kept": True})
        before = _export(store)
        said = r"dag/d/big: its history is \d+ bytes over http, more than the 64 MiB"
        with pytest.raises(InvalidValueError, match=said):
            castore.import_lines(store, _reader(data), on_conflict=on_conflict)  # type: ignore[arg-type]
        assert _export(Store(url, dag=DAG)) == before
        dump = tmp_path / "big.jsonl"
        dump.write_bytes(data)
        cli = Cli(tmp_path, url, dag=DAG)
        error = one_line_error(cli.run("import", dump, "--on-conflict", on_conflict), 2)
        assert re.search(said, error), error
        assert _export(Store(url, dag=DAG)) == before
    local = Store(str(tmp_path / "local"), dag=DAG)  # the oracle: a store's own files take it
    if on_conflict == "overwrite":
        local.set("big", 0)
    castore.import_lines(local, _reader(data), on_conflict=on_conflict)  # type: ignore[arg-type]
    assert local.get("big").version == 70
    assert local.get("a").value == 1
