"""Writes racing a compaction, found by a review of rollback and retention.

Each test fails on the code before its fix:

- on PostgreSQL, a write that waited for the row lock of a key that compaction
  was removing failed with ``CorruptionError`` ("its copy of the newest version
  in refs is behind its version rows (edited)"): the lock statement's check of
  the copy read the version rows on the snapshot taken before the wait, the ones
  compaction had just deleted. A directory store writes the next version.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from castore import Store
from castore.postgres.location import parse

pytestmark = pytest.mark.integration

DAG = "d"


def _run(location: str, statement: sql.Composed) -> None:
    """Run one statement in the location's schema."""
    with psycopg.connect(parse(location).conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("SET search_path TO {}").format(sql.Identifier(parse(location).schema))
        )
        conn.execute(statement)


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
    schema = sql.Identifier(parse(postgres_location).schema)
    # Compaction holds the key's row lock after it emptied the key, until 4244 is free.
    _run(
        postgres_location,
        sql.SQL(
            "CREATE FUNCTION {}.hold() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_advisory_xact_lock(4244); RETURN NULL; END $$"
        ).format(schema),
    )
    _run(
        postgres_location,
        sql.SQL(
            "CREATE TRIGGER hold AFTER UPDATE ON {}.refs FOR EACH ROW EXECUTE FUNCTION {}.hold()"
        ).format(schema, schema),
    )
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
