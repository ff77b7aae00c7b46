"""Issue 11: error wording a user can act on, the library's exports, results as plain data."""

from __future__ import annotations

import json
import pathlib
import pickle
from typing import Any

import pytest

import castore
from castore.errors import InvalidValueError
from castore.urls import redacted
from tests.helpers import Cli

pytestmark = pytest.mark.integration

DAG = "d"


# -- error wording --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_value_is_called_empty(cli: Cli, value: str) -> None:
    message = cli.fail(2, "set", "k", value)
    assert "EOF" not in message
    assert message.startswith("invalid value: empty input")
    assert cli.fail(2, "set", "k", stdin=b"\n").startswith("invalid value: empty input")


def test_an_empty_value_is_still_an_invalid_value_error(store_location: str) -> None:
    with castore.Store(store_location, dag="d") as store, pytest.raises(InvalidValueError) as info:
        store.set("k", b"  ")
    assert "empty input" in str(info.value)


def test_a_retention_policy_out_of_range_is_not_a_ref_error(cli: Cli) -> None:
    cli.ok("set", "k", "1")
    message = cli.fail(2, "compact", "--keep-last", "0")
    assert message == "argument --keep-last: keep 1 to 9223372036854775807 versions, not 0"
    with pytest.raises(castore.InvalidValueError) as info:
        castore.Retention(keep_last=0)
    assert not isinstance(info.value, castore.InvalidRefError)


def test_a_directory_that_is_not_a_store_says_so_with_its_path(
    cli: Cli, tmp_path: pathlib.Path
) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    message = cli.fail(1, "get", "k", store=str(other))
    assert "corrupt" not in message
    assert message.startswith(f"{other}")
    assert "not a castore store" in message
    error = castore.FormatVersionError(f"{other}: not a castore store")
    assert str(pickle.loads(pickle.dumps(error))) == f"{other}: not a castore store"  # noqa: S301


@pytest.mark.parametrize("dag_name", ["", "   "])
def test_a_blank_dag_name_names_the_ways_out(cli: Cli, dag_name: str) -> None:
    message = cli.fail(2, "get", "k", dag=None, env={"DAG_NAME": dag_name})
    for way in ("--dag", "$DAG_NAME", "--namespace"):
        assert way in message, message
    assert (
        cli.ok("get", "k", "--namespace", "n", dag=None, env={"DAG_NAME": dag_name})["found"]
        is False
    )


# -- the library's exports ------------------------------------------------------------------


def test_the_maintenance_entry_points_and_every_error_are_exported() -> None:
    for name in (
        "audit_records",
        "export_lines",
        "import_lines",
        "read_lines",
        "import_dagu",
        "upgrade",
        "AuditRecord",
        "ImportReport",
        "DaguImport",
        *castore.errors.__all__,
    ):
        assert name in castore.__all__, name
        assert getattr(castore, name) is not None
    for method in ("check", "gc", "compact", "stats"):
        assert callable(getattr(castore.Store, method))


def test_the_lazy_entry_points_load_nothing_at_import(tmp_path: pathlib.Path) -> None:
    code = "import sys, castore; print(sorted(m for m in sys.modules if m in {})); dir(castore)"
    watched = {"castore.audit", "castore.transfer", "castore.dagu"}
    proc = Cli(tmp_path, entry=("-c", code.format(watched))).raw()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"[]"


def test_export_import_and_audit_through_the_package(
    store_location: str, new_store_location: object
) -> None:
    with castore.Store(store_location, dag="d") as store:
        store.set("a", {"n": 1})
        store.set("a", {"n": 2})
        lines = list(castore.export_lines(store))
        records = list(castore.audit_records(store))
    assert [r.version for r in records] == [2, 1]
    assert isinstance(records[0], castore.AuditRecord)
    target = new_store_location()  # type: ignore[operator]
    with castore.Store(target, dag="d") as other:
        report = castore.import_lines(other, lambda: lines)
        assert isinstance(report, castore.ImportReport)
        assert report.versions == 2
        assert other.get("a").value == {"n": 2}


# -- results as plain data ------------------------------------------------------------------


def test_every_result_converts_to_the_cli_line(cli: Cli, store_location: str) -> None:
    cli_lines = {
        "set": cli.raw_ok("set", "k", '{"n": 1.50}'),
        "get": cli.raw_ok("get", "k"),
    }
    with castore.Store(store_location, dag=DAG) as store:
        got = store.get("k")
        assert got.to_json() + b"\n" == cli_lines["get"]
        assert got.to_dict() == json.loads(cli_lines["get"])
        results: list[Any] = [
            store.set("k", {"n": 2}),
            store.diff("k", {"n": 3}),
            store.patch("k", [{"op": "add", "path": "/m", "value": 1}]),
            store.incr("c"),
            store.list(),
            store.history("k"),
            store.history("k").entries[0],
            store.list().entries[0],
            store.diff_versions("k", from_version=1, to_version=2),
            store.rollback("k", to_version=1),
            store.delete("k"),
            store.check(),
            store.gc(),
            store.compact(keep_last=1),
            store.stats(),
        ]
    for result in results:
        data = result.to_dict()
        assert json.loads(json.dumps(data)) == data, type(result)
        assert json.loads(result.to_json()) == data, type(result)
    assert list(results[0].to_dict()) == [
        "operation",
        "scope",
        "namespace",
        "key",
        "version",
        "hash",
        "created",
    ]
    assert cli.raw_ok("check") == store_check_json(store_location)


def store_check_json(location: str) -> bytes:
    with castore.Store(location, dag=DAG) as store:
        return store.check().to_json() + b"\n"


def backend_kind(location: str) -> str:
    if location.startswith(("http://", "https://")):
        return "remote"
    return "postgres" if location.startswith("postgresql://") else "file"


def test_a_store_repr_shows_location_backend_and_dag(store_location: str) -> None:
    store = castore.Store(store_location, dag="daily")
    text = repr(store)
    shown = redacted(store_location)
    assert text == f"Store({shown!r}, backend={backend_kind(store_location)!r}, dag='daily')"
    if store_location.startswith("postgresql://"):  # the schema tells stores apart; no password
        assert shown.endswith(store_location[store_location.index("?schema=") :])
        assert "@" not in text


def test_store_root_never_shows_credentials(store_location: str) -> None:
    # Found by a review: repr hid the password, but Store(...).root held it in plain text.
    store = castore.Store(store_location, dag="d")
    assert store.root == redacted(store_location)
    assert repr(store).startswith(f"Store({store.root!r}, ")
    pytest.importorskip("psycopg")
    secret = castore.Store("postgresql://alice:s3cret@127.0.0.1:1/state?sslmode=disable&schema=x")
    assert secret.root == "postgresql://127.0.0.1:1/state?schema=x"  # no connection is made
    public = {name: value for name, value in vars(secret).items() if not name.startswith("_")}
    assert "s3cret" not in repr(public)
    assert "alice" not in repr(public)


def test_a_store_repr_never_shows_credentials(store_location: str) -> None:
    store = castore.Store(store_location, dag="d")
    store.root = "postgresql://alice:s3cret@db.example:5432/state?sslmode=require"
    text = repr(store)
    kind = backend_kind(store_location)
    assert text == f"Store('postgresql://db.example:5432/state', backend={kind!r}, dag='d')"
    assert "s3cret" not in text
    assert "alice" not in text


def test_a_store_cannot_be_pickled_and_says_what_to_do(store_location: str) -> None:
    # Found by a review: pickle.dumps(store) said "cannot pickle '_thread.lock' object".
    import copy

    from castore.records import Audit

    store = castore.Store(store_location, dag="d")
    store.set("k", 1)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="a Store cannot be pickled") as info:
            pickle.dumps(store, protocol)
        assert "pass its location and open one in the other process" in str(info.value)
    same = copy.copy(store)  # a handle on the same storage, as for_caller makes
    assert same is not store
    assert same.get("k").value == 1
    assert store.for_caller(Audit(), dag="other").set("k", 2).version == 1
