"""The PostgreSQL backend: :class:`PostgresBackend`, the contract over one schema.

Each operation is one transaction on the handle's connection (reads: one
statement). A write locks its key's ``refs`` row (``SELECT … FOR UPDATE``;
a new key's row is inserted first), runs the decision on the newest entry
(the row's copy, current once the lock is held), then inserts each version,
its blob (or refreshes the blob's ``touched_ns``) and the new copy of the
newest entry in one statement per version, and commits. Writes of one key
are therefore serialized by the row lock, and every read sees a committed
state: each key is linearizable (docs/DESIGN.md, "The PostgreSQL backend").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from castore.backend import (
    LOCK_TIMEOUT_SECONDS,
    Current,
    Decide,
    NewVersion,
    NothingView,
    Progress,
    changed_since,
    overwrite_refusal,
)
from castore.errors import CorruptionError
from castore.keys import Ref
from castore.postgres import appends, chains, compaction, maintenance, rows, schema
from castore.postgres import statements as q
from castore.postgres.connection import Abandon, Cursor, Database
from castore.postgres.location import parse
from castore.records import OP_DAMAGED, Entry
from castore.reports import (
    CheckReport,
    CompactReport,
    GCReport,
    Retention,
    StoreStats,
    UpgradeReport,
)
from castore.results import ListEntry

__all__ = ["PostgresBackend", "upgrade"]


class PostgresBackend:
    """Versioned refs in one schema of a PostgreSQL database (docs/DESIGN.md).

    Safe for many processes and hosts (row locks, transactions) and for
    threads sharing the handle (each call takes a connection of its pool).

    Args:
        location: a ``postgresql://`` or ``postgres://`` URL, with an optional
            ``schema`` parameter (:mod:`castore.postgres.location`).
        durable: when False, commits do not wait for the server's WAL flush
            (``synchronous_commit = off``): a server crash may lose the last
            writes, never make a store inconsistent.
        lock_timeout: seconds a write waits for its key's row lock.

    Raises:
        InvalidValueError: the location's schema parameter is not valid.
    """

    def __init__(self, location: str, *, durable: bool, lock_timeout: float) -> None:
        self.location = parse(location)
        self.durable = durable
        self.lock_timeout = lock_timeout
        self.db = Database(self.location, lock_timeout, durable)

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        self.db.close()

    # -- reading -------------------------------------------------------------------------

    def _read(self, work: Any, what: str, default: Any) -> Any:
        """``work(cur)`` in autocommit, or ``default`` where there is no store yet."""

        def run(cur: Cursor) -> Any:
            return work(cur) if self.db.present(cur) else default

        return self.db.run(run, what, transaction=False)

    settles_all_at_once = True  # a synchronous commit flushes the WAL of every commit before it

    @property
    def loop_safe_reads(self) -> bool:
        """False: a read is a round trip to the database."""
        return False

    def current(self, ref: Ref) -> Current:
        """Newest entry of ``ref`` and its verified value (one indexed query)."""

        def work(cur: Cursor) -> Current:
            key = (rows.ref_id(ref),)
            row = cur.execute(q.CURRENT, key, binary=True).fetchone()  # binary: no hex round trip
            if row is None and cur.execute(q.HAS_VERSIONS, key).fetchone():
                row = cur.execute(q.CURRENT, key, binary=True).fetchone()  # just written?
                if row is None:  # lost: never "not found" while versions remain
                    raise _row_lost(ref)
            found = rows.entry(row, 0, ref) if row is not None else None  # a damaged copy raises
            if row is not None and row[11] and q.copy_refuted(cur, ref, row[11]):
                raise _not_newest(ref, row[11])
            if row is None or found is None:
                return Current(None, None)
            return Current(found, rows.value(ref, found, *row[8:11]))

        result: Current = self._read(work, f"reading {ref}", Current(None, None))
        return result

    def check_history_size(self, ref: Ref, new_versions: list[NewVersion]) -> None:
        """Nothing: one transaction takes a history of any size."""

    def exists(self, ref: Ref) -> bool:
        """True if ``ref`` has a version (a delete counts)."""

        def work(cur: Cursor) -> bool:
            key = (rows.ref_id(ref),)
            read = f"SELECT version, {q.NOT_NEWEST} FROM refs r WHERE {q.REF}"
            row = cur.execute(read, key).fetchone()
            if row is None and cur.execute(q.HAS_VERSIONS, key).fetchone():
                row = cur.execute(read, key).fetchone()  # just written by another process?
                if row is None:
                    raise _row_lost(ref)  # never "no such key" while versions remain
            if row is not None and row[1] and q.copy_refuted(cur, ref, row[1]):
                raise _not_newest(ref, row[1])
            return row is not None and row[0] is not None

        result: bool = self._read(work, f"reading {ref}", False)
        return result

    def keys(self, scope: str, namespace: str, prefix: str, *, verify: bool = False) -> list[str]:
        """Keys of a namespace with a version (a delete counts), byte-wise sorted."""
        where, params = rows.prefix_filter(scope, namespace, prefix)

        def work(cur: Cursor) -> list[str]:
            cur.execute(  # a key whose copy was cleared by hand still has versions: listed
                f"SELECT ref_id, namespace, key FROM refs r WHERE {where} "
                f"AND (version IS NOT NULL OR {q.AHEAD}) ORDER BY key",
                params,
            )
            return [rows.stored_ref(i, scope, n, k).key for i, n, k in cur.fetchall()]

        result: list[str] = self._read(work, f"listing {scope}/{namespace}", [])
        return result

    def removed(self, scope: str, namespace: str | None = None) -> list[tuple[str, str, int]]:
        """Each key compaction removed: its row's ``floor`` (:meth:`Backend.removed`)."""
        what = f"listing the keys compaction removed from {scope}"
        found = self._read(lambda cur: cur.execute(q.REMOVED, (scope,)).fetchall(), what, [])
        refs = [(rows.stored_ref(i, scope, n, k), int(v)) for i, n, k, v in found]
        chosen = (r for r in refs if namespace is None or r[0].namespace == namespace)
        return [(ref.namespace, ref.key, floor) for ref, floor in chosen]

    def namespaces(self, scope: str) -> list[str]:
        """Namespaces of ``scope`` with a key; CorruptionError if a key's ``refs`` row is lost."""

        def work(cur: Cursor) -> list[str]:
            cur.execute(
                "SELECT DISTINCT namespace FROM refs r WHERE scope = %s "
                f"AND (version IS NOT NULL OR {q.AHEAD}) ORDER BY namespace",
                (scope,),
            )
            found = [rows.namespace_name(scope, n) for (n,) in cur.fetchall()]
            if cur.execute(q.ORPHANS, (scope,)).fetchone() is not None:  # none would name it
                lost = "versions of a key whose refs row is lost (castore check names them"
                lost += "; a write of that key restores its row)"
                raise CorruptionError(f"{scope}: {lost}")
            return found

        result: list[str] = self._read(work, f"listing {scope}", [])
        return result

    def listing(self, scope: str, namespace: str, prefix: str) -> Mapping[str, ListEntry | None]:
        """The newest version of every key starting with ``prefix`` (one indexed query)."""
        where, params = rows.prefix_filter(scope, namespace, prefix)

        def work(cur: Cursor) -> dict[str, ListEntry | None]:
            cur.execute(
                f"SELECT ref_id, namespace, key, {rows.ENTRY}, {q.NOT_NEWEST} "
                "FROM refs r "
                f"WHERE {where} AND (version IS NOT NULL OR {q.AHEAD})",
                params,
            )
            out: dict[str, ListEntry | None] = {}
            for row in cur.fetchall():
                key = rows.stored_ref(row[0], scope, row[1], row[2]).key
                if row[11]:  # rows past the copy, or a copy that is not its row
                    continue  # left unknown: list reads the key alone (current() decides)
                try:
                    found = rows.entry(row, 3)
                except CorruptionError:
                    continue  # left unknown: list reads the key alone, and skips it
                if found is not None and found.op == OP_DAMAGED:
                    continue  # lost to damage: left unknown, skipped as on the file store
                live = found is not None and found.live
                out[key] = rows.list_entry(scope, namespace, key, found) if live else None  # type: ignore[arg-type]
            return out

        result: dict[str, ListEntry | None] = self._read(work, f"listing {scope}/{namespace}", {})
        return result

    def remember(self, scope: str, namespace: str, keys: list[str]) -> None:
        """Nothing to do: ``refs`` always holds every key's newest version."""

    def version(self, ref: Ref, version: int) -> tuple[Entry | None, bytes | None]:
        """The entry of ``version`` and its value; (None, None) if it never existed.

        Raises:
            NotFoundError: the version was dropped by compaction.
            CorruptionError: the value fails verification.
        """
        result: tuple[Entry | None, bytes | None] = self._read(
            lambda cur: q.entry_at(cur, ref, version), f"reading {ref}", (None, None)
        )
        return result

    def history(self, ref: Ref, before: int, limit: int) -> list[Entry]:
        """Entries below version ``before``, newest first, at most ``limit`` (0 = all).

        Raises:
            CorruptionError: the page's rows, or the row of ``before`` above them,
                do not chain (:mod:`castore.postgres.chains`): rows were lost.
        """

        def work(cur: Cursor) -> list[Entry]:
            page = chains.history_page(cur, ref, before, limit)
            return [e for row in page if (e := rows.entry(row, 0, ref)) is not None]

        result: list[Entry] = self._read(work, f"reading {ref}", [])
        return result

    def iter_versions(self, ref: Ref) -> Iterator[tuple[Entry, bytes | None]]:
        """Every entry, oldest first, with its verified value (None: a delete or lost).

        Raises:
            CorruptionError: a value fails verification, or the rows do not chain
                (:mod:`castore.postgres.chains`), or the key's copy of its newest
                version has no row: rows were lost.
        """
        below = 0  # the last version of the page before
        while True:
            page: list[tuple[Any, ...]] = self._read(
                lambda cur, under=below: chains.versions_page(cur, ref, under),
                f"reading {ref}",
                [],
            )
            for row in page:
                found = rows.entry(row, 0, ref)
                if found is None:
                    continue
                lost = found.op == OP_DAMAGED
                yield found, None if lost else rows.value(ref, found, *row[8:11])
            if len(page) < q.PAGE:
                break
            below = page[-1][0]
        self._read(lambda cur: chains.copy_without_row(cur, ref), f"reading {ref}", None)

    # -- writing -------------------------------------------------------------------------

    def _ready_for(self, decide: Decide) -> bool:
        """Whether the store exists or a write to it appends something (then create it)."""
        if self.db.store_exists():  # no query once the store was found
            return True
        if not decide(None, NothingView()):
            return False
        self.db.create()
        return True

    def _lock(self, cur: Cursor, ref: Ref) -> tuple[int, Entry | None, bytes | None]:
        """Lock a ref's row (inserting it first if new): floor, newest entry, its small value."""
        key = (rows.ref_id(ref),)
        row = cur.execute(q.LOCK, key).fetchone()
        if row is None:
            cur.execute(q.NEW_REF, rows.ref_row(ref))
            row = cur.execute(q.LOCK, key).fetchone()
            # Under the lock (each statement then sees every committed version): a row
            # that was lost while its versions remain gets its copy again, as a repair.
            if row is not None and row[1] is None and cur.execute(q.HAS_VERSIONS, key).fetchone():
                cur.execute(q.COPY_NEWEST, key)
                row = cur.execute(q.LOCK, key).fetchone()
        if row is not None and row[10]:  # NOT_NEWEST read the rows on its snapshot from
            row = cur.execute(q.LOCK, key).fetchone()  # before a lock wait: again, locked
        assert row is not None  # noqa: S101 - inserted or found above, under the lock
        newest = rows.entry(row, 1, ref)  # a damaged copy raises
        if row[10] and q.copy_refuted(cur, ref, row[10]):  # never decide on a wrong copy
            raise _not_newest(ref, row[10])
        return int(row[0]), newest, row[9]

    def write(self, ref: Ref, decide: Decide) -> tuple[Entry | None, list[Entry]]:
        """Run ``decide`` on the newest entry under the ref's row lock; append what it returns.

        Returns:
            (previous newest entry, appended entries; empty when nothing was written).
        """
        if not self._ready_for(decide):
            return None, []

        def work(cur: Cursor) -> tuple[Entry | None, list[Entry]]:
            floor, previous, inline = self._lock(cur, ref)
            decided = decide(previous, q.RowView(cur, ref, previous, inline))
            if not decided:
                if previous is None or not self.durable:
                    raise Abandon((previous, []))
                # a durable answer as it is: committed (its row lock wrote WAL), so flushed
                return previous, []
            news = decided if isinstance(decided, list) else [decided]
            return previous, appends.append_all(cur, ref, previous, floor, news)

        result: tuple[Entry | None, list[Entry]] = self.db.run(
            work, f"the write of {ref}", pipeline=True, ref=str(ref)
        )
        return result

    def replace(self, ref: Ref, new_versions: list[NewVersion], seen: Entry | None) -> list[Entry]:
        """Replace ``ref``'s whole history with ``new_versions`` (an import's overwrite).

        Raises:
            ConflictError: the new history would take versions back, or the newest
                entry is no longer ``seen``.
        """
        if not self._ready_for(lambda *_: new_versions):
            return []
        key = (rows.ref_id(ref),)

        def work(cur: Cursor) -> list[Entry]:
            floor, previous, _ = self._lock(cur, ref)
            why = changed_since(ref, previous, seen) or overwrite_refusal(
                ref, previous, new_versions
            )
            if why is not None:
                raise why
            cur.execute(f"DELETE FROM versions WHERE {q.REF}", key)
            cur.execute(f"DELETE FROM compactions WHERE {q.REF}", key)
            cur.execute(f"UPDATE refs SET {q.NO_NEWEST} WHERE {q.REF}", key)
            return appends.append_all(cur, ref, None, floor, new_versions)

        result: list[Entry] = self.db.run(work, f"the import of {ref}", pipeline=True, ref=str(ref))
        return result

    # -- maintenance (castore/postgres/maintenance.py) -----------------------------------

    def check(self, *, repair: bool, progress: Progress | None) -> CheckReport:
        """Re-hash every blob; check every version's blob and every key's newest copy."""
        return maintenance.check(self.db, repair=repair, progress=progress)

    def collect_garbage(
        self, *, grace_seconds: float, dry_run: bool, progress: Progress | None
    ) -> GCReport:
        """Delete blobs no version references and no write used within ``grace_seconds``."""
        return maintenance.collect_garbage(
            self.db, grace_seconds=grace_seconds, dry_run=dry_run, progress=progress
        )

    def compact(
        self, retention: Retention, *, dry_run: bool, progress: Progress | None
    ) -> CompactReport:
        """Drop the versions ``retention`` does not keep, one key per transaction."""
        return compaction.compact(self.db, retention, dry_run=dry_run, progress=progress)

    def stats(self) -> StoreStats:
        """Keys, versions, blobs and bytes per scope (a few aggregate queries)."""
        return maintenance.stats(self.db)


def _row_lost(ref: Ref) -> CorruptionError:
    """The error of a key whose ``refs`` row is gone while its version rows remain."""
    return CorruptionError(
        f"{ref}: its row in refs is lost but its versions remain; the key's next write restores it"
    )


def _not_newest(ref: Ref, how: int) -> CorruptionError:
    """The error of a key whose copy is not its newest row (``how``: :data:`q.NOT_NEWEST`)."""
    return CorruptionError(
        f"{ref}: its copy of the newest version in refs {q.COPY_FLAGS[how]} (edited): "
        "run castore check --repair"
    )


def upgrade(location: str) -> UpgradeReport:
    """Create or upgrade the store's tables at ``location`` to this castore's schema version.

    Idempotent, and safe beside running clients (an advisory lock serializes it).

    Raises:
        FormatVersionError: the schema holds something else, or a newer store.
        StoreUnavailableError: the server cannot be reached.
    """
    where = parse(location)
    db = Database(where, LOCK_TIMEOUT_SECONDS)
    try:
        before, after = db.run(
            lambda cur: schema.upgrade_schema(cur, where.schema), "upgrading the schema"
        )
    finally:
        db.close()
    return UpgradeReport(from_version=before, to_version=after, graves_converted=0)
