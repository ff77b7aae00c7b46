"""The PostgreSQL backend when the server runs out of something, or a statement fails.

docs/DESIGN.md, "The PostgreSQL backend": a write that fails changes nothing,
and one failure never fails the handle's next calls.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from castore import Store, StoreUnavailableError
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.integration


class DiskFull:
    """A trigger on ``versions`` that fails every insert with SQLSTATE 53100 while armed."""

    def __init__(self, location: str) -> None:
        self.schema = sql.Identifier(location.rsplit("schema=", 1)[1])

    def _run(self, statement: str) -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(sql.SQL(statement).format(s=self.schema))

    def install(self) -> None:
        self._run(
            "CREATE TABLE {s}.armed (on_ boolean);"
            "CREATE FUNCTION {s}.full_disk() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF EXISTS (SELECT 1 FROM {s}.armed) THEN"
            " RAISE EXCEPTION 'could not extend file: No space left on device'"
            " USING ERRCODE = 'disk_full'; END IF; RETURN NEW; END $$;"
            "CREATE TRIGGER full_disk BEFORE INSERT ON {s}.versions"
            " FOR EACH ROW EXECUTE FUNCTION {s}.full_disk()"
        )

    def arm(self) -> None:
        self._run("INSERT INTO {s}.armed VALUES (true)")

    def disarm(self) -> None:
        self._run("DELETE FROM {s}.armed")


def test_writes_that_failed_on_a_full_disk_do_not_fail_the_next_ones(
    postgres_location: str,
) -> None:
    """A review found every write after a few failed ones failing on that connection.

    psycopg counts a statement queued after the failing one in a pipeline as
    prepared, though the server skipped its preparation: ``COMMIT``, prepared on
    its sixth use, then failed each later write of the handle with ``prepared
    statement "_pg3_N" does not exist``, after the disk had room again.
    """
    store = Store(postgres_location, dag="d")
    store.set("k", 1)
    full = DiskFull(postgres_location)
    full.install()
    full.arm()
    for _ in range(8):
        with pytest.raises(StoreUnavailableError, match="No space left on device"):
            store.set("k", 2)
    full.disarm()
    assert store.set("k", 3).version == 2
    assert [e.version for e in store.history("k").entries] == [2, 1]
