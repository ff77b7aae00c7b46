"""check of a PostgreSQL store's version rows, and the repair of a damaged one.

A version row is damaged when its entry does not decode (its audit record,
its op, a time or size out of range: :func:`castore.postgres.rows.entry`), a
delete holds a value, a ``set``/``rollback`` has no value (neither
``inline`` bytes nor a ``blob``) or inline bytes that do not hash to its
digest, or a size that is not its value's (inline, or its blob's). Such a
version reads as damaged (``CorruptionError``), never as another value, and
may stop what reads every row of its key (compaction, export, audit,
history).

``--repair`` does what the directory store's quarantine does, under the
key's row lock: the row, as it was (every column, and its blob row, as
JSON), goes to the ``quarantine`` table (made by the first repair that
needs it), and the version becomes a ``damaged`` entry (lost) that keeps
the row's ``prev``, so the key's chain and numbering hold. A key's copy of
that version in ``refs`` becomes the entry too. A blob that fails its hash,
or is missing, is no damage of the row: a write of the value puts it back
(:mod:`castore.postgres.maintenance`).
"""

from __future__ import annotations

import time
from typing import Any, Final

from castore import valuecodec
from castore.backend import lost_marker
from castore.codec import check_stored
from castore.errors import CorruptionError, LockTimeoutError
from castore.identity import out_of_range
from castore.keys import Ref
from castore.postgres import rows
from castore.postgres import statements as q
from castore.postgres.connection import Cursor, Database
from castore.postgres.schema import make_quarantine
from castore.records import OP_DAMAGED, OP_DELETE, OP_ROLLBACK, OP_SET
from castore.reports import Finding, lost_range

__all__ = ["Damaged", "check_versions", "quarantine_rows"]

_BATCH: Final = 500
_OPS: Final = (OP_SET, OP_DELETE, OP_ROLLBACK, OP_DAMAGED)
_MAX_INT: Final = (1 << 63) - 1
_ROWS: Final = (
    f"SELECT v.ref_id, r.scope, r.namespace, r.key, "
    f"{rows.entry_columns('v')}, v.inline, v.blob, b.size "
    "FROM versions v LEFT JOIN refs r ON r.ref_id = v.ref_id "
    "LEFT JOIN blobs b ON b.digest = v.blob "
)
_SCAN: Final = (
    _ROWS + "WHERE (v.ref_id, v.version) > (%s, %s) ORDER BY v.ref_id, v.version LIMIT %s"
)
_ONE: Final = _ROWS + "WHERE v.ref_id = %s AND v.version = %s"
_KEEP: Final = (  # the row as it was, and its blob row, into quarantine
    "INSERT INTO quarantine (ref_id, version, time_ns, problem, version_row, blob_row) "
    "SELECT v.ref_id, v.version, %s, %s, to_jsonb(v), to_jsonb(b) FROM versions v "
    "LEFT JOIN blobs b ON b.digest = v.blob WHERE v.ref_id = %s AND v.version = %s"
)
_NEIGHBOUR_TIMES: Final = (  # the times of the rows below and above a version
    "SELECT (SELECT time_ns FROM versions WHERE ref_id = %(id)s AND version < %(v)s "
    "ORDER BY version DESC LIMIT 1), (SELECT time_ns FROM versions WHERE ref_id = %(id)s "
    "AND version > %(v)s ORDER BY version LIMIT 1)"
)
_MARK: Final = (  # the row becomes a damaged entry; scope and prev stay
    "UPDATE versions SET op = %(op)s, time_ns = %(t)s, digest = %(d)s, size = %(sz)s, "
    "created_ns = %(cr)s, audit = %(a)s, damaged_from = %(df)s, blob = NULL, inline = NULL "
    "WHERE ref_id = %(id)s AND version = %(v)s"
)
Damaged = tuple[Ref, int, str]  # a key, its damaged version row, what is wrong with it


def _row_problem(row: tuple[Any, ...], sizes: dict[bytes, int]) -> str | None:
    """What is wrong with a version row (``_SCAN``'s columns from ``ENTRY``), or None.

    ``sizes``: the size of each blob whose ``size`` column is not its data's.
    """
    try:
        found = rows.entry(row, 4)
    except CorruptionError as exc:
        return exc.detail
    assert found is not None  # noqa: S101  # a version row has a version
    if found.op not in _OPS:
        return f"version {found.version}: unknown op {found.op!r}"
    if (problem := out_of_range(found.audit)) is not None:  # no castore wrote it
        return f"version {found.version}: {problem}"
    inline, blob = row[12], row[13]
    if not found.live and (inline is not None or blob is not None):
        return f"version {found.version}: a delete that holds a value"
    if not found.live or found.op == OP_DAMAGED:
        return None
    if inline is None and blob is None:
        return f"version {found.version}: its value is missing (no inline bytes, no blob)"
    if inline is not None:
        try:
            value = valuecodec.unpack(valuecodec.CODEC_RAW, bytes(inline), found.hash)
            check_stored(value, f"value {found.hash}")
        except CorruptionError as exc:
            return exc.detail
        if len(value) != found.size:
            return f"value {found.hash}: {len(value)} bytes, recorded {found.size}"
    elif row[14] is not None and sizes.get(bytes(blob), row[14]) != found.size:
        held = sizes.get(bytes(blob), row[14])
        return f"value {found.hash}: its blob holds {held} bytes, its entry says {found.size}"
    return None


def check_versions(
    db: Database, sizes: dict[bytes, int]
) -> tuple[int, list[Finding], list[Damaged]]:
    """Verify every version row: the number of inline values, findings, and the damaged rows.

    ``sizes``: the size of each blob whose ``size`` column is not its data's (a
    version's size is compared with its blob's). A damaged row gets its finding
    from :func:`quarantine_rows`; one whose key's names are not its own is
    reported here (:mod:`castore.postgres.refnames` reports the names).
    """
    findings: list[Finding] = []
    damaged: list[Damaged] = []
    inline = 0
    orphans: set[bytes] = set()
    after: tuple[Any, ...] = (b"", 0)
    while True:
        batch = db.fetch(_SCAN, (*after, _BATCH), "checking")
        for row in batch:
            ref_id, scope, namespace, key = bytes(row[0]), row[1], row[2], row[3]
            inline += row[12] is not None
            if scope is None:
                if ref_id not in orphans:
                    orphans.add(ref_id)
                    findings.append(_orphan(ref_id))
                continue
            problem = _row_problem(row, sizes)
            name = rows.ref_name(scope, namespace, key)
            if problem is None:
                findings += _lost_range(name, row)
                continue
            try:
                damaged.append((rows.stored_ref(ref_id, scope, namespace, key), row[4], problem))
            except CorruptionError:
                findings.append(
                    _finding(name, row[4], problem, "none: the version reads as damaged")
                )
        if len(batch) < _BATCH:
            return inline, findings, damaged
        after = (bytes(batch[-1][0]), batch[-1][4])


def _finding(name: str, version: int, problem: str, repair: str, done: bool = False) -> Finding:
    return Finding(path=f"versions/{name}@{version}", problem=problem, repair=repair, repaired=done)


def quarantine_rows(
    db: Database, damaged: list[Damaged], sizes: dict[bytes, int], repair: bool
) -> list[Finding]:
    """A finding per damaged version row; ``repair``: each kept in quarantine, recorded lost."""
    findings: list[Finding] = []
    how = "keep the row in table quarantine, record the version as lost"
    for ref, version, found in damaged:
        done, problem = False, found
        if repair:

            def work(cur: Cursor, ref: Ref = ref, version: int = version) -> bool:
                return _quarantine(cur, ref, version, sizes, db.location.schema)

            try:
                done = db.run(work, f"repairing {ref}", ref=str(ref))
            except LockTimeoutError as exc:  # a writer holds it (or a stopped process)
                problem += f" (locked by another process for {exc.timeout_seconds:g} s)"
        findings.append(_finding(str(ref), version, problem, how, done))
    return findings


def _quarantine(cur: Cursor, ref: Ref, version: int, sizes: dict[bytes, int], schema: str) -> bool:
    """Under the key's row lock: keep a damaged row in quarantine, make it a lost entry.

    False when the row is no longer there or no longer damaged (a write, a repair).
    """
    key = rows.ref_id(ref)
    cur.execute(f"SELECT version FROM refs WHERE {rows.REF} FOR UPDATE", (key,))
    locked = cur.fetchone()
    row = cur.execute(_ONE, (key, version)).fetchone()
    if locked is None or row is None or (problem := _row_problem(row, sizes)) is None:
        return False
    make_quarantine(cur, schema)
    now = time.time_ns()
    cur.execute(_KEEP, (now, problem, key, version))
    below, above = cur.execute(_NEIGHBOUR_TIMES, {"id": key, "v": version}).fetchone() or (
        None,
        None,
    )
    # Times never decrease along a key's versions: the entry takes its neighbour's.
    stamp = next((t for t in (below, above) if type(t) is int and 0 < t <= _MAX_INT), now)
    reason = f"its version row did not verify ({problem[:200]}); the row is in table quarantine"
    cur.execute(_MARK, q.params(ref, lost_marker(version, version, stamp, reason), 0))
    if locked[0] == version:  # the key's copy of its newest version was that row
        cur.execute(q.COPY_NEWEST, (key,))
    return True


def _lost_range(name: str, row: tuple[Any, ...]) -> list[Finding]:
    """Versions a repair (or an import) recorded as lost stay reported, as information."""
    found = rows.entry(row, 4)
    if found is None or found.op != OP_DAMAGED:
        return []
    return [
        Finding(
            path=f"versions/{name}@{found.version}",
            problem=lost_range(name, found),
            repair="none: nothing left to recover",
            severity="info",
        )
    ]


def _orphan(ref_id: bytes) -> Finding:
    return Finding(
        path=f"versions/{ref_id.hex()}",
        problem="versions of a key whose refs row is lost (its name was in that row)",
        repair="none here: the key's next write restores the row",
    )
