"""Compaction of a PostgreSQL store: a retention policy, one key per transaction.

Under the key's row lock, the versions the policy drops (``reports.retained``,
the rule the file store uses) are deleted and their ranges recorded in
``compactions`` (reading one says it was compacted, and by what); a key
whose newest version is an old enough delete goes away but keeps its
``refs`` row, with ``floor`` its last version, so versions never repeat.
"""

from __future__ import annotations

import time
from typing import Any

from castore.backend import Progress
from castore.errors import CorruptionError
from castore.keys import SCOPES
from castore.postgres import rows
from castore.postgres.connection import Abandon, Cursor, Database
from castore.postgres.statements import NO_NEWEST
from castore.records import merged_ranges
from castore.reports import CompactReport, Retention, retained

__all__ = ["compact"]


Selected = tuple[str, bytes, bytes, bytes]  # scope, namespace, key, ref_id


def _selected(db: Database, retention: Retention) -> list[Selected]:
    """The refs ``retention`` selects, with a version, in scope/namespace/key order."""
    low, high = rows.key_range(retention.prefix)
    where = ["version IS NOT NULL", "key >= %s"]
    params: list[Any] = [low]
    if high is not None:
        where.append("key < %s")
        params.append(high)
    if retention.scope:
        where.append("scope = %s")
        params.append(retention.scope)
    if retention.namespace is not None:
        where.append("namespace = %s")
        params.append(retention.namespace.encode("utf-8"))
    found = db.fetch(
        f"SELECT scope, namespace, key, ref_id FROM refs WHERE {' AND '.join(where)}",
        params,
        "compaction",
    )
    order = {scope: i for i, scope in enumerate(sorted(SCOPES))}
    return sorted(
        ((s, bytes(n), bytes(k), bytes(i)) for s, n, k, i in found),
        key=lambda r: (order.get(r[0], 99), r),
    )


def compact(
    db: Database, retention: Retention, *, dry_run: bool, progress: Progress | None
) -> CompactReport:
    """Apply a retention policy to every key it selects, one transaction per key."""
    cutoff = None
    if retention.keep_within_seconds is not None:
        cutoff = time.time_ns() - int(retention.keep_within_seconds * 1e9)
    examined = compacted = dropped = removed = before = after = 0
    for key in _selected(db, retention) if db.store_exists() else []:
        examined += 1

        name = rows.ref_name(*key[:3])

        def one(
            cur: Cursor, ref_id: bytes = key[3], name: str = name
        ) -> tuple[int, int, int, bool]:
            return _compact_one(cur, (ref_id, name), retention, cutoff, dry_run)

        size, size_after, gone, was_removed = db.run(one, f"compacting {name}", ref=name)
        before += size
        after += size_after
        if gone:
            compacted += 1
            dropped += gone
            removed += was_removed
        if progress is not None:
            progress(1)
    return CompactReport(
        policy=retention.policy,
        dry_run=dry_run,
        refs_examined=examined,
        refs_compacted=compacted,
        versions_dropped=dropped,
        keys_removed=removed,
        bytes_before=before,
        bytes_after=after,
    )


def _compact_one(
    cur: Cursor,
    ref: tuple[bytes, str],
    retention: Retention,
    cutoff: int | None,
    dry_run: bool,
) -> tuple[int, int, int, bool]:
    """Compact one key under its row lock: (bytes before, after, versions dropped, removed).

    ``ref``: the key's ``ref_id`` and name (a damaged row's error names the key).

    Raises:
        CorruptionError: a version row of the key does not decode (check --repair
            records it lost).
    """
    ref_id, name = ref
    key = (ref_id,)
    cur.execute(f"SELECT 1 FROM refs WHERE {rows.REF} FOR UPDATE", key)
    cur.execute(f"SELECT {rows.ENTRY} FROM versions WHERE {rows.REF} ORDER BY version", key)
    found = cur.fetchall()
    try:
        entries = [e for row in found if (e := rows.entry(row, 0, name)) is not None]
    except CorruptionError as exc:
        raise CorruptionError(f"{exc.detail}: run castore check --repair") from None
    if not entries:
        return 0, 0, 0, False
    size = sum(e.size for e in entries)
    keep = retained(entries, retention.keep_last, cutoff)
    drop = [e.version for e in entries if keep is None or e.version not in keep]
    if not drop:
        return size, size, 0, False
    left = sum(e.size for e in entries if keep is not None and e.version in keep)
    if dry_run:
        raise Abandon((size, left, len(drop), keep is None))
    now = time.time_ns()
    gone = set(drop)  # a damaged entry's whole range is dropped with it
    covered = merged_ranges((e.first, e.version) for e in entries if e.version in gone)
    cur.executemany(
        "INSERT INTO compactions (ref_id, low, high, policy, time_ns) VALUES (%s, %s, %s, %s, %s)",
        [(ref_id, low, high, retention.policy, now) for low, high in covered],
    )
    cur.execute(f"DELETE FROM versions WHERE {rows.REF} AND version = ANY(%s)", (ref_id, drop))
    if keep is None:  # the key goes away; its last version stays reserved (its row's, not
        # its copy's: a copy edited behind its rows would give versions again)
        cur.execute(
            f"UPDATE refs SET floor = GREATEST(floor, version, %s), {NO_NEWEST} WHERE {rows.REF}",
            (max(drop), ref_id),
        )
    return size, left, len(drop), keep is None
