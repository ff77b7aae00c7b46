"""check of a PostgreSQL store's rows: every version row, and each key's copy of its newest.

A version row is damaged when its audit record does not decode, or when a
``set``/``rollback`` has no value (neither ``inline`` bytes nor a ``blob``)
or inline bytes that do not hash to its digest, or a size that is not its
value's (inline, or its blob's). Such a version reads as
damaged (``CorruptionError``), never as another value.

Each key's ``refs`` row holds a copy of its newest version. Where the two
disagree, the one that verifies is the evidence (docs/DESIGN.md, "The
PostgreSQL backend"), and ``--repair`` works under the key's row lock:

* the copy names a version above every version row (those rows were lost):
  the copy is put back as its version's row, and the versions between
  recorded as lost (a ``damaged`` entry), so numbering goes on above it;
  a copy that does not verify itself becomes the ``damaged`` entry;
* both name the same version: the one that verifies replaces the other;
  two that verify but differ, or neither verifying, are not repaired;
* a version row above the copy: the copy is taken from it (as a write does).

Version rows whose key has no ``refs`` row are reported; a write of the key
restores the row (``PostgresBackend._lock``), check cannot (the names are
in that row only).
"""

from __future__ import annotations

import time
from typing import Any, Final

from castore.backend import lost_marker
from castore.errors import CorruptionError, LockTimeoutError
from castore.keys import Ref
from castore.postgres import rows
from castore.postgres import statements as q
from castore.postgres.connection import Abandon, Cursor, Database
from castore.reports import Finding

__all__ = ["check_chains", "check_copies"]

_BATCH: Final = 500
_LOST: Final = "version rows lost"  # the reason a repair records
_DIFFERING: Final = f"""
    SELECT r.ref_id, r.scope, r.namespace, r.key FROM refs r
    LEFT JOIN LATERAL (
        SELECT {rows.ENTRY}, {rows.VALUE} FROM versions v WHERE v.ref_id = r.ref_id
        ORDER BY v.version DESC LIMIT 1
    ) n ON true
    WHERE (r.version, r.op, r.time_ns, r.digest, r.size, r.created_ns, r.audit, r.damaged_from,
           r.blob, r.inline)
        IS DISTINCT FROM
        (n.version, n.op, n.time_ns, n.digest, n.size, n.created_ns, n.audit, n.damaged_from,
         n.blob, n.inline)
    ORDER BY r.scope, r.namespace, r.key
"""
_COPY: Final = (
    f"SELECT {rows.entry_columns('refs')}, "
    + q.WITH_BLOB.format(t="refs")
    + " WHERE refs.ref_id = %s"
)
_COLUMNS: Final = f"{rows.ENTRY}, {rows.VALUE}"
_DROPPED_UP_TO: Final = (  # the highest version compaction dropped, or a removed life ended at
    "SELECT greatest((SELECT coalesce(max(high), 0) FROM compactions WHERE ref_id = %s), "
    "(SELECT floor FROM refs WHERE ref_id = %s))"
)
_ROW_FROM_COPY: Final = (
    f"INSERT INTO versions (ref_id, scope, prev, {_COLUMNS}) "
    f"SELECT ref_id, scope, %s, {_COLUMNS} FROM refs WHERE ref_id = %s"
)
# A row made from the copy takes its blob into use: locked and refreshed as a write does,
# so a gc running at the same time waits, then sees the row (maintenance.py).
_TAKE_COPY_BLOB: Final = (
    "UPDATE blobs SET touched_ns = %s WHERE digest = (SELECT blob FROM refs WHERE ref_id = %s)"
)
_ROW_REPLACED_BY_COPY: Final = (
    f"UPDATE versions v SET ({_COLUMNS}) = (SELECT {_COLUMNS} FROM refs r "
    "WHERE r.ref_id = v.ref_id) WHERE v.ref_id = %s AND v.version = %s"
)


_BREAKS: Final = """
    SELECT v.ref_id, r.scope, r.namespace, r.key, v.version, v.prev, v.below FROM (
        SELECT ref_id, version, prev,
            coalesce(lag(version) OVER (PARTITION BY ref_id ORDER BY version), 0) AS below
        FROM versions {where}
    ) v JOIN refs r ON r.ref_id = v.ref_id
    WHERE v.prev IS NOT NULL AND v.prev <> v.below AND NOT (v.prev > v.below AND EXISTS (
        SELECT 1 FROM compactions c WHERE c.ref_id = v.ref_id AND c.low <= v.prev
        AND c.high >= v.prev))
    ORDER BY r.scope, r.namespace, r.key, v.version
"""  # rows whose prev is not the row below them, nor a version compaction dropped
_DROPPED_BELOW: Final = (
    "SELECT coalesce(max(high), 0) FROM compactions WHERE ref_id = %s AND high < %s"
)
_NEIGHBOUR_TIME: Final = (  # the row below a lost range (else the row above): a marker's time
    "SELECT time_ns FROM versions WHERE ref_id = %s AND version IN (%s, %s) "
    "ORDER BY version LIMIT 1"
)
_ALL_BREAKS: Final = _BREAKS.format(where="")
_BREAKS_OF: Final = _BREAKS.format(where="WHERE ref_id = %s")


def _settle(cur: Cursor, ref: Ref) -> tuple[str, str] | None:
    """Under the key's row lock: make its copy and its rows agree; (problem, repair) or None.

    The repair text starts with ``none`` when nothing could be repaired.
    """
    key = rows.ref_id(ref)
    cur.execute(f"SELECT 1 FROM refs WHERE {rows.REF} FOR UPDATE", (key,))
    copy = cur.execute(_COPY, (key,)).fetchone()
    newest = cur.execute(q.NEWEST_ROW, (key,)).fetchone()
    (gone,) = cur.execute(_DROPPED_UP_TO, (key, key)).fetchone() or (0,)
    high = max(newest[0] if newest is not None else 0, gone)  # compaction's are not lost
    named = copy[0] if copy is not None and copy[0] is not None else None
    if named is not None and named > high and newest and copy and _no_newer(copy, newest):
        cur.execute(q.COPY_NEWEST, (key,))  # the row is the version's record
        problem = f"the copy names version {named}, above its rows, but is no newer than them"
        return problem, f"copy the newest row (version {newest[0]})"
    if named is not None and named > high:  # rows above ``high`` were lost
        problem = f"versions {high + 1}..{named} are missing; the key's copy names {named}"
        if q.verified(ref, copy) is not None:
            if named - 1 > high:  # between the newest row and the copy: a neighbour's time
                stamp = next(row[2] for row in (newest, copy) if row is not None)
                cur.execute(
                    q.INSERT_VERSION,
                    q.params(ref, lost_marker(high + 1, named - 1, stamp, _LOST), high),
                )
            cur.execute(_TAKE_COPY_BLOB, (time.time_ns(), key))
            cur.execute(_ROW_FROM_COPY, (max(high, named - 1), key))
            return problem, "restore the copy as its version's row, record the rest as lost"
        stamp = max(time.time_ns(), newest[2] if newest is not None else 0)  # the newest
        cur.execute(q.APPEND_ROW, q.params(ref, lost_marker(high + 1, named, stamp, _LOST), high))
        return problem, "record them as lost (the copy does not verify)"
    if named is not None and named == high:
        mine, theirs = q.verified(ref, copy), q.verified(ref, newest)
        problem = f"the copy of version {named} differs from its row"
        if theirs is not None and mine is None:
            cur.execute(q.COPY_NEWEST, (key,))
            return problem, "copy the row (the copy does not verify)"
        if mine is not None and theirs is None:
            cur.execute(_TAKE_COPY_BLOB, (time.time_ns(), key))
            cur.execute(_ROW_REPLACED_BY_COPY, (key, named))
            return problem, "replace the row by the copy (the row does not verify)"
        if mine is not None:  # the row is the record (get --version and history read it)
            cur.execute(q.COPY_NEWEST, (key,))
            return problem, "copy the row (both verify; the row is the version's record)"
        return problem, "none: neither verifies"
    if newest is None:
        return None
    problem = "the copy of the newest version is older than its row"
    breaks = cur.execute(_BREAKS_OF, (key,)).fetchall()
    if any(row[4] > (named or 0) for row in breaks):  # a row that does not follow the copy
        return problem, "none: the rows above it do not follow it (their break is reported)"
    cur.execute(q.COPY_NEWEST, (key,))
    return problem, "copy the newest row"


def _no_newer(copy: tuple[Any, ...], newest: tuple[Any, ...]) -> bool:
    """Whether a copy naming a version above the newest row is refuted by that row.

    Times increase with versions (equal only where an import gave them): a copy
    older than the row, or the row's entry and value under another number (a copy
    renumbered by hand), is no newer version (:data:`q.NOT_NEWEST`'s 3).
    """
    return bool(copy[2] < newest[2] or copy[1:] == newest[1:])


def check_copies(db: Database, repair: bool) -> list[Finding]:
    """A finding per key whose copy of its newest version disagrees with its rows (repaired)."""
    findings: list[Finding] = []
    for ref_id, scope, namespace, key in db.fetch(_DIFFERING, (), "checking"):
        try:
            ref = rows.stored_ref(ref_id, scope, namespace, key)
        except CorruptionError:
            continue  # a row whose names are not its own: refnames.py reports it

        def settle(cur: Cursor, ref: Ref = ref) -> tuple[str, str] | None:
            outcome = _settle(cur, ref)
            if not repair:
                raise Abandon(outcome)  # rolled back: a check changes nothing
            return outcome

        try:
            found = db.run(settle, f"checking {ref}", ref=str(ref))
        except LockTimeoutError as exc:  # a writer holds it (or a stopped process)
            found = (
                f"locked by another process for {exc.timeout_seconds:g} s: not checked",
                "none: run check again once that process ends",
            )
        if found is None:
            continue
        problem, how = found
        findings.append(
            Finding(
                path=f"refs/{ref}",
                problem=problem,
                repair=how,
                repaired=repair and not how.startswith("none"),
            )
        )
    return findings


def _mend(cur: Cursor, ref: Ref) -> list[tuple[int, int, int, bool]]:
    """Under the key's row lock: record the versions its broken links lost.

    Returns each break as (version, prev, below, repaired); rows were lost
    where ``prev`` is above ``below``: ``below + 1 .. prev`` become one
    ``damaged`` entry, the link ``prev`` names. A row the chain skips
    (``prev`` below ``below``) is not repaired.
    """
    key = rows.ref_id(ref)
    cur.execute(f"SELECT 1 FROM refs WHERE {rows.REF} FOR UPDATE", (key,))
    out = []
    for *_, version, prev, below in cur.execute(_BREAKS_OF, (key,)).fetchall():
        if prev > below:  # from above what compaction dropped below prev (not lost)
            (dropped,) = cur.execute(_DROPPED_BELOW, (key, prev)).fetchone() or (0,)
            (stamp,) = cur.execute(_NEIGHBOUR_TIME, (key, below, version)).fetchone() or (
                time.time_ns(),
            )
            marker = lost_marker(max(below, dropped) + 1, prev, stamp, _LOST)
            cur.execute(q.INSERT_VERSION, q.params(ref, marker, below))
        out.append((version, prev, below, prev > below))
    return out


def check_chains(db: Database, repair: bool) -> list[Finding]:
    """A finding per version row whose ``prev`` does not chain (docs: chains.py); repaired."""
    findings: list[Finding] = []
    broken: dict[Ref, list[tuple[int, int, int, bool]]] = {}
    for ref_id, scope, namespace, key, version, prev, below in db.fetch(_ALL_BREAKS, ()):
        try:
            ref = rows.stored_ref(bytes(ref_id), scope, namespace, key)
        except CorruptionError:
            continue  # a row whose names are not its own: refnames.py reports it
        broken.setdefault(ref, []).append((version, prev, below, prev > below))
    for ref, seen in broken.items():
        links = seen
        if repair:

            def mend(cur: Cursor, ref: Ref = ref) -> list[tuple[int, int, int, bool]]:
                return _mend(cur, ref)

            try:
                links = db.run(mend, f"repairing {ref}", ref=str(ref))
            except LockTimeoutError:  # a writer holds it: reported, not repaired
                links = [(v, p, b, False) for v, p, b, _ in seen]
        for version, prev, below, mended in links:
            findings.append(_break(ref, version, prev, below, repair and mended))
    return findings


def _break(ref: Ref, version: int, prev: int, below: int, repaired: bool) -> Finding:
    under = f"version {below}" if below else "none"
    if prev < below:
        problem = f"it followed version {prev}, but the row below it is {under}"
        how = "none: a version row the key's history does not name"
    else:
        problem = f"it followed version {prev}, whose row is missing (the row below it: {under})"
        how = f"record versions {below + 1}..{prev} as lost"
    return Finding(path=f"versions/{ref}@{version}", problem=problem, repair=how, repaired=repaired)
