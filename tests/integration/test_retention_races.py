"""Writes racing a compaction, found by a review of rollback and retention.

Each test fails on the code before its fix:

- on PostgreSQL, a write that waited for the row lock of a key that compaction
  was removing failed with ``CorruptionError`` ("its copy of the newest version
  in refs is behind its version rows (edited)"): the lock statement's check of
  the copy read the version rows on the snapshot taken before the wait, the ones
  compaction had just deleted. A directory store writes the next version;
- over http, a write told that another write came first decided again on the
  newest entry the server named, reading its value by version: when yet another
  write and a compaction came meanwhile, that version was compacted, and an
  ``incr`` of a live key failed with "not found: … version 2 was compacted". A
  local store decides under the key's lock and never reads a superseded version;
- likewise a rollback over http with ``expected_version`` failed with "not
  found: … version 1 was compacted" (exit 4) when another write and a
  compaction came between its read of the newest entry and its read of the
  target: a local store answers a conflict there (the key moved on first), or
  rolls back (it did not), never "not found".
"""

from __future__ import annotations

import pathlib
import threading
import time
from typing import Any

import psycopg
import pytest

from castore import ConflictError, NotFoundError, Store
from castore.postgres.location import parse
from castore.remote.backend import RemoteBackend
from tests.conftest import remote_file_location
from tests.integration.test_postgres import hold_updates

pytestmark = pytest.mark.integration

DAG = "d"


def _lock_waiters(location: str) -> int:
    """How many castore sessions of the location's database wait for a lock."""
    with psycopg.connect(parse(location).conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'castore' "
            "AND wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_for_lock_waiters(location: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while _lock_waiters(location) < count:
        assert time.monotonic() < deadline, f"never {count} castore sessions waiting for a lock"
        time.sleep(0.01)


@pytest.mark.parametrize("write", ["set", "rollback"])
def test_a_write_waiting_for_a_compaction_that_removes_its_key_writes_the_next_version(
    postgres_location: str, write: str
) -> None:
    store = Store(postgres_location, dag=DAG)
    store.set("k", 1)
    store.set("other", 1)
    store.delete("k")  # version 2, older than keep-within 0: compaction removes the key
    # Compaction holds the key's row lock after it emptied the key, until 4244 is free.
    hold_updates(postgres_location, "refs", 4244)
    outcomes: dict[str, Any] = {}

    def run(name: str, operation: Any) -> None:
        try:
            outcomes[name] = operation()
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcomes[name] = exc

    def writing() -> object:
        handle = Store(postgres_location, dag=DAG)
        if write == "set":
            return handle.set("k", 3)
        return handle.rollback("k", to_version=2, expected_version=0)  # a delete: nothing

    with psycopg.connect(parse(postgres_location).conninfo, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4244)")
        compactor = threading.Thread(
            target=run,
            args=(
                "compact",
                lambda: Store(postgres_location, dag=DAG).compact(
                    keep_within_seconds=0, prefix="k"
                ),
            ),
        )
        compactor.start()
        _wait_for_lock_waiters(postgres_location, 1)  # compaction: the key emptied, held
        writer = threading.Thread(target=run, args=("write", writing))
        writer.start()
        _wait_for_lock_waiters(postgres_location, 2)  # the write: waits for the row lock
        holder.execute("SELECT pg_advisory_unlock(4244)")
        compactor.join(30)
        writer.join(30)
    assert not isinstance(outcomes["compact"], Exception), outcomes["compact"]
    assert outcomes["compact"].keys_removed == 1
    if write == "set":
        assert not isinstance(outcomes["write"], Exception), outcomes["write"]
        assert outcomes["write"].version == 3  # after the removed key's last version
        assert Store(postgres_location, dag=DAG).get("k").value == 3
    else:  # the target went with the key: compacted, as after the compaction on any backend
        assert type(outcomes["write"]).__name__ == "NotFoundError", outcomes["write"]
        assert "was compacted" in str(outcomes["write"])
    assert Store(postgres_location, dag=DAG).check().ok


def _hooked(client: Store, monkeypatch: pytest.MonkeyPatch, hook: Any) -> None:
    """``hook(name)`` runs before each backend call ``client`` sends."""
    backend = client.backend
    assert isinstance(backend, RemoteBackend)
    transport = backend._transport
    real = transport.call

    def call(name: str, request: Any, *args: Any, **kwargs: Any) -> Any:
        hook(name)
        return real(name, request, *args, **kwargs)

    monkeypatch.setattr(transport, "call", call)


def test_an_http_write_whose_newest_was_compacted_meanwhile_decides_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with remote_file_location(tmp_path) as url:
        client, other = Store(url, dag=DAG), Store(url, dag=DAG)
        client.set("c", 1)
        steps: list[str] = []

        def hook(name: str) -> None:
            if name == "append" and not steps:  # another write comes first: stale, at 2
                steps.append(name)
                other.set("c", 10)
            elif name == "version" and steps == ["append"]:  # before version 2 is read:
                steps.append(name)
                other.set("c", 20)  # a third write, then a compaction dropping version 2
                assert other.compact(keep_last=1).versions_dropped == 2

        _hooked(client, monkeypatch, hook)
        result = client.incr("c")
        assert steps == ["append", "version"]  # the interleaving happened
        assert (result.version, result.number) == (4, 21)  # on the newest: 20 + 1
        assert [e.version for e in other.history("c").entries] == [4, 3]


def test_an_http_rollback_whose_target_was_compacted_after_the_key_moved_on_conflicts(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with remote_file_location(tmp_path) as url:
        client, other = Store(url, dag=DAG), Store(url, dag=DAG)
        client.set("k", 1)
        client.set("k", 2)
        steps: list[str] = []

        def hook(name: str) -> None:
            if name == "version" and not steps:  # decided on version 2; before 1 is read:
                steps.append(name)
                other.set("k", 3)  # the key moves on, then compaction drops version 1
                assert other.compact(keep_last=2).versions_dropped == 1

        _hooked(client, monkeypatch, hook)
        with pytest.raises(ConflictError, match="expected version 2, actual version 3"):
            client.rollback("k", to_version=1, expected_version=2)
        assert steps == ["version"]
        with pytest.raises(NotFoundError, match="version 1 was compacted"):  # the key's
            client.rollback("k", to_version=1)  # newest did not move: not found, as locally
        assert [e.version for e in other.history("k").entries] == [3, 2]  # nothing written
