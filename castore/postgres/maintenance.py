"""Maintenance of a PostgreSQL store: check (and repair), gc, compaction, stats.

Each works in short transactions beside running readers and writers:

* **check** re-hashes every blob, checks every version row and that each
  key's ``refs`` row holds a copy of its newest version
  (:mod:`castore.postgres.integrity`, which also repairs). A blob that fails
  its hash cannot be repaired here: the versions that use it read as
  damaged, never as another value, until a write of that value replaces
  the row (:data:`~castore.postgres.statements.UPSERT_BLOB`). A blob whose
  data verifies but whose ``size`` column was edited gets its data's size.
* **gc** deletes blobs that no version (nor a key's copy of its newest version)
  references and that no write used within the grace period. Every write that
  stores a version with a blob either upserts the blob row or refreshes its
  ``touched_ns`` in its own transaction, which locks that row. gc locks its
  candidates first (waiting for such writes to commit), then deletes those
  still unreferenced in a second statement, whose snapshot sees those writes'
  versions; a write that comes after gc deleted a blob inserts it again. So gc
  never removes a blob a committed version uses.
* **compact** (:mod:`castore.postgres.compaction`) applies a retention policy.
* **stats** counts with aggregate queries.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

from castore import valuecodec
from castore.backend import Progress
from castore.codec import check_stored
from castore.errors import CorruptionError
from castore.postgres import rows
from castore.postgres import statements as q
from castore.postgres.connection import Cursor, Database, Row
from castore.postgres.integrity import check_chains, check_copies
from castore.postgres.refnames import check_floors, check_names, check_orphans
from castore.postgres.versionrows import check_versions, quarantine_rows
from castore.reports import (
    CheckReport,
    Finding,
    GCReport,
    ScopeStats,
    StoreStats,
)

__all__ = ["check", "collect_garbage", "stats"]

_BATCH: Final = 500  # blobs per query when every blob is read or deleted


def _blobs(db: Database) -> Iterator[list[tuple[Any, ...]]]:
    """Every blob row (digest, codec, size, data), in batches by digest."""
    after = b""
    while True:
        batch = db.fetch(
            "SELECT digest, codec, size, data FROM blobs WHERE digest > %s "
            "ORDER BY digest LIMIT %s",
            (after, _BATCH),
            "reading blobs",
        )
        if not batch:
            return
        yield batch
        after = bytes(batch[-1][0])


def _bad_blobs(
    db: Database, repair: bool, progress: Progress | None, sizes: dict[bytes, int]
) -> tuple[int, list[Finding]]:
    """Re-hash every blob: how many there are, and a finding per one that fails (repaired).

    A row whose data verifies but whose ``size`` column does not match it (reads do
    not use the column: they serve the value) gets the size of its data; ``sizes``
    gets each such blob's size.
    """
    findings: list[Finding] = []
    blobs = 0
    for batch in _blobs(db):
        for digest, codec, size, data in batch:
            blobs += 1
            name = bytes(digest).hex()
            try:
                value = valuecodec.unpack(codec, bytes(data), name)
                check_stored(value, f"blob {name}")
            except CorruptionError as exc:
                findings.append(
                    Finding(
                        path=f"blobs/{name}",
                        problem=exc.detail,
                        repair="none: the versions that use it read as damaged "
                        "(a write of the value replaces it)",
                    )
                )
                continue
            if len(value) != size:
                sizes[bytes(digest)] = len(value)
                if repair:
                    _set_size(db, bytes(digest), size, len(value))
                findings.append(
                    Finding(
                        path=f"blobs/{name}",
                        problem=f"its size column says {size} bytes, its data (which "
                        f"verifies, and reads serve) holds {len(value)}",
                        repair=f"set the size to {len(value)}",
                        repaired=repair,
                    )
                )
        if progress is not None:
            progress(len(batch))
    return blobs, findings


def _set_size(db: Database, digest: bytes, recorded: int, size: int) -> None:
    """Set a blob row's size from its verified data (unless a write replaced the row)."""

    def work(cur: Cursor) -> None:
        cur.execute(
            "UPDATE blobs SET size = %s WHERE digest = %s AND size = %s", (size, digest, recorded)
        )

    db.run(work, "repairing a blob's size")


def _missing_blobs(db: Database) -> list[Finding]:
    """A finding per version whose blob is missing (gc never deletes a used one)."""
    missing = db.fetch(
        "SELECT r.scope, r.namespace, r.key, v.version, v.blob FROM versions v "
        "JOIN refs r ON r.ref_id = v.ref_id WHERE v.blob IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM blobs b WHERE b.digest = v.blob) ORDER BY 1, 2, 3, 4",
        (),
        "checking",
    )
    return [
        Finding(
            path=f"versions/{rows.ref_name(scope, namespace, key)}@{version}",
            problem=f"blob {bytes(digest).hex()} is missing",
            repair="none: the version reads as damaged",
        )
        for scope, namespace, key, version, digest in missing
    ]


def check(db: Database, *, repair: bool, progress: Progress | None) -> CheckReport:
    """Verify every blob, every version's blob and every key's newest copy; repair the copies."""
    if not db.store_exists():
        return CheckReport(ok=True, logs=0, entries=0, blobs=0, findings=[])
    sizes: dict[bytes, int] = {}  # blobs whose size column is not their data's
    blobs, findings = _bad_blobs(db, repair, progress, sizes)
    inline, bad, damaged = check_versions(db, sizes)
    copies = check_copies(db, repair)
    if any(f.repaired for f in copies):  # a row replaced by its copy is no longer damaged
        inline, bad, damaged = check_versions(db, sizes)
    bad += quarantine_rows(db, damaged, sizes, repair)  # after the copies: a good copy wins
    findings += bad + _missing_blobs(db) + copies + check_chains(db, repair)
    findings += check_names(db, repair) + check_floors(db, repair) + check_orphans(db)
    ((refs, entries),) = db.fetch(
        "SELECT (SELECT count(*) FROM refs WHERE version IS NOT NULL), "
        "(SELECT count(*) FROM versions)",
        (),
        "checking",
    )
    ok = all(f.repaired or f.severity != "error" for f in findings)
    report = {"logs": refs, "entries": entries, "blobs": blobs + inline}
    return CheckReport(ok=ok, findings=findings, **report)


def collect_garbage(
    db: Database, *, grace_seconds: float, dry_run: bool, progress: Progress | None
) -> GCReport:
    """Delete unreferenced blobs older than the grace period (never one in use)."""
    present = db.store_exists()
    cutoff = time.time_ns() - int(grace_seconds * 1e9)
    unused = (
        "FROM blobs b WHERE b.touched_ns < %s AND NOT EXISTS "
        "(SELECT 1 FROM versions v WHERE v.blob = b.digest)"
    )
    # A key's copy of its newest version is that version's only record when its row was
    # lost (reads serve it, check --repair restores the row from it): its blob is in use.
    # refs has no index on blob: one scan here, not one per batch. No write makes such a
    # copy (a write inserts the row with it), and a repair that makes a row of it locks
    # the blob as a write does, so the batches' check of versions below still holds.
    no_copy = " AND NOT EXISTS (SELECT 1 FROM refs r WHERE r.blob = b.digest)"
    blobs_found = bytes_found = 0
    candidates: list[Row] = []
    if present:
        ((blobs_found, bytes_found),) = db.fetch(
            "SELECT count(*), coalesce(sum(octet_length(data)), 0) FROM blobs", (), "gc"
        )
        candidates = db.fetch(
            f"SELECT b.digest, octet_length(b.data) {unused}{no_copy}", (cutoff,), "gc"
        )
    freed = freed_bytes = 0
    if dry_run:
        freed, freed_bytes = len(candidates), sum(n for _, n in candidates)
    for start in range(0, 0 if dry_run else len(candidates), _BATCH):
        digests = [bytes(d) for d, _ in candidates[start : start + _BATCH]]

        def delete(cur: Cursor, batch: list[bytes] = digests) -> tuple[int, int]:
            return _delete(cur, batch, unused, cutoff)

        count, size = db.run(delete, "gc")
        freed += count
        freed_bytes += size
        if progress is not None:
            progress(len(digests))
    return GCReport(
        dry_run=dry_run,
        grace_seconds=grace_seconds,
        blobs_found=blobs_found,
        blobs_kept=blobs_found - freed,
        blobs_freed=freed,
        bytes_found=bytes_found,
        bytes_kept=bytes_found - freed_bytes,
        bytes_freed=freed_bytes,
        logs_rewritten=0,
        logs_removed=0,
        leftovers_removed=0,
    )


def _delete(cur: Cursor, digests: list[bytes], unused: str, cutoff: int) -> tuple[int, int]:
    """Delete the blobs among ``digests`` that are still unused: their count and bytes.

    The rows are locked first, in their own statement: that waits for every
    write that took one into use (its upsert or refresh holds the row lock),
    and the ``DELETE`` that follows reads the versions table with a snapshot
    taken after those writes committed. (In one ``DELETE``, a row re-checked
    after a lock wait is checked against the statement's older snapshot of
    ``versions``: it would miss the version that now uses it.)
    """
    locked = cur.execute(
        "SELECT digest FROM blobs WHERE digest = ANY(%s) ORDER BY digest FOR UPDATE", (digests,)
    ).fetchall()
    statement = f"DELETE {unused} AND b.digest = ANY(%s) RETURNING octet_length(b.data)"
    freed = cur.execute(statement, (cutoff, [bytes(d) for (d,) in locked])).fetchall()
    return len(freed), sum(n for (n,) in freed)


def stats(db: Database) -> StoreStats:
    """Keys, versions, blobs and bytes per scope; unreferenced blobs count in the total only."""
    if not db.store_exists():
        return StoreStats(scopes={}, total=ScopeStats())

    def work(cur: Cursor) -> StoreStats:
        with q.snapshot(cur):  # one snapshot: a write between two queries splits no count
            return _counts(cur)

    result: StoreStats = db.run(work, "stats", transaction=False)
    return result


def _counts(cur: Cursor) -> StoreStats:
    """What :func:`stats` reports, read on ``cur``'s one snapshot."""
    per: dict[str, ScopeStats] = {}
    cur.execute(
        "SELECT scope, count(*) FILTER (WHERE op <> 'delete'), "
        "count(*) FILTER (WHERE op = 'delete') FROM refs WHERE version IS NOT NULL "
        "GROUP BY scope"
    )
    for scope, keys, deleted in cur.fetchall():
        per[scope] = ScopeStats(keys=keys, deleted_keys=deleted)
    cur.execute(
        "SELECT scope, count(*), coalesce(sum(size), 0), count(inline), "
        "coalesce(sum(octet_length(inline)), 0) FROM versions GROUP BY scope"
    )
    for scope, versions, logical, inline, inline_bytes in cur.fetchall():
        st = per.setdefault(scope, ScopeStats())
        st.versions, st.logical_bytes = versions, logical
        st.blobs, st.stored_bytes = inline, inline_bytes  # values kept in their rows
    cur.execute(
        "SELECT u.scope, count(*), coalesce(sum(octet_length(b.data)), 0) FROM "
        "(SELECT DISTINCT scope, blob FROM versions WHERE blob IS NOT NULL) u "
        "JOIN blobs b ON b.digest = u.blob GROUP BY u.scope"
    )
    for scope, blobs, stored in cur.fetchall():
        st = per.setdefault(scope, ScopeStats())
        st.blobs += blobs
        st.stored_bytes += stored
    cur.execute(
        "SELECT (SELECT count(*) FROM refs WHERE version IS NOT NULL AND op <> 'delete'), "
        "(SELECT count(*) FROM refs WHERE op = 'delete'), (SELECT count(*) FROM versions), "
        "(SELECT count(*) FROM blobs) + (SELECT count(inline) FROM versions), "
        "(SELECT coalesce(sum(octet_length(data)), 0) FROM blobs) "
        "+ (SELECT coalesce(sum(octet_length(inline)), 0) FROM versions), "
        "(SELECT coalesce(sum(size), 0) FROM versions), "
        "(SELECT coalesce(sum(octet_length(data)), 0) FROM blobs b WHERE NOT EXISTS "
        "(SELECT 1 FROM versions v WHERE v.blob = b.digest))"
    )
    row = cur.fetchone()
    assert row is not None  # noqa: S101 - an aggregate row
    keys, deleted, versions, blobs, stored, logical, reclaimable = row
    total = ScopeStats(
        keys=keys,
        deleted_keys=deleted,
        versions=versions,
        blobs=blobs,
        stored_bytes=stored,
        logical_bytes=logical,
        reclaimable_bytes=reclaimable,
    )
    return StoreStats(scopes=dict(sorted(per.items())), total=total)
