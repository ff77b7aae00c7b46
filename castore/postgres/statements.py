"""The statements of the PostgreSQL backend and what a write's decision may read.

SQL text is built here from constants only; every value is a parameter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Final

import psycopg
from psycopg.pq import TransactionStatus

from castore import exits
from castore.errors import CorruptionError, NotFoundError
from castore.keys import Ref
from castore.postgres import rows
from castore.postgres.connection import Cursor
from castore.records import OP_DAMAGED, BlobLoc, Entry
from castore.results import rfc3339

__all__ = [
    "AHEAD",
    "APPEND_KNOWN_BLOB",
    "APPEND_NEW_BLOB",
    "APPEND_ROW",
    "COMPACTED",
    "COPY_FLAGS",
    "COPY_NEWEST",
    "CURRENT",
    "EXACT_VERSION",
    "HAS_VERSIONS",
    "INSERT_VERSION",
    "LOCK",
    "NEWEST_ROW",
    "NEW_REF",
    "NOT_NEWEST",
    "NO_NEWEST",
    "ORPHANS",
    "PAGE",
    "REF",
    "REMOVED",
    "UPSERT_BLOB",
    "VALUE_OF",
    "VERSION",
    "WITH_BLOB",
    "RowView",
    "copy_refuted",
    "entry_at",
    "params",
    "snapshot",
    "verified",
]

PAGE: Final = 256  # versions per query when a whole history is walked
REF: Final = rows.REF
NO_NEWEST: Final = (  # a refs row's copy of the newest version, emptied
    "version = NULL, op = NULL, time_ns = NULL, digest = NULL, size = NULL, "
    "created_ns = NULL, audit = NULL, damaged_from = NULL, blob = NULL, inline = NULL"
)
# A row's entry, then its value: inline bytes, or the codec and data of its blob.
# Whether a version row is above a key's copy of its newest (a copy edited or rolled back
# by hand: the key's newest is then not known, never the copy's older one). One probe of
# the versions primary key.
AHEAD: Final = (
    "EXISTS (SELECT 1 FROM versions v WHERE v.ref_id = r.ref_id "
    "AND v.version > coalesce(r.version, 0))"
)
_COPIED: Final = f"{rows.ENTRY}, {rows.VALUE}".split(", ")  # a key's copy of its newest row
_UNVERSIONED: Final = [c for c in _COPIED if c != "version"]
NOT_NEWEST: Final = (  # 0: the copy is the key's newest row; 1: a row is above the copy
    # (rolled back by hand); 2: the copy keeps its row's version but not its columns (edited);
    # 3: the copy names a version above its rows but is no newer than the newest row: older
    # than it, or the same entry renumbered by hand (times increase with versions, equal
    # only where an import gave them). One probe of the versions primary key; a copy above
    # its rows (lost) and newer is its version's only record, so it is read (check
    # restores the row from it).
    "coalesce((SELECT CASE WHEN v.version > coalesce(r.version, 0) THEN 1 "
    "WHEN v.version = r.version AND ("
    + ", ".join(f"v.{c}" for c in _COPIED)
    + ") IS DISTINCT FROM ("
    + ", ".join(f"r.{c}" for c in _COPIED)
    + ") THEN 2 WHEN v.version < r.version AND (v.time_ns > r.time_ns OR ("
    + ", ".join(f"v.{c}" for c in _UNVERSIONED)
    + ") IS NOT DISTINCT FROM ("
    + ", ".join(f"r.{c}" for c in _UNVERSIONED)
    + ")) THEN 3 ELSE 0 END "
    "FROM versions v WHERE v.ref_id = r.ref_id ORDER BY v.version DESC LIMIT 1), 0)"
)
COPY_FLAGS: Final = {  # what NOT_NEWEST's flags say of the copy, in errors
    1: "is behind its version rows",
    2: "differs from its version row",
    3: "names a version above its rows but is no newer than the newest of them",
}
WITH_BLOB: Final = "{t}.inline, b.codec, b.data FROM {t} LEFT JOIN blobs b ON b.digest = {t}.blob"
ORPHANS: Final = (  # a version row of the scope whose key's refs row is lost
    "SELECT 1 FROM versions v WHERE v.scope = %s "
    "AND NOT EXISTS (SELECT 1 FROM refs r WHERE r.ref_id = v.ref_id) LIMIT 1"
)
NEWEST_ROW: Final = (  # a key's newest version row and its value (ref_id)
    f"SELECT {rows.entry_columns('versions')}, "
    + WITH_BLOB.format(t="versions")
    + " WHERE versions.ref_id = %s ORDER BY versions.version DESC LIMIT 1"
)
CURRENT: Final = (
    f"SELECT {rows.entry_columns('r')}, r.inline, b.codec, b.data, {NOT_NEWEST} "
    "FROM refs r LEFT JOIN blobs b ON b.digest = r.blob WHERE r.ref_id = %s"
)
COMPACTED: Final = (  # whether compaction dropped a version (ref_id, the version twice)
    "SELECT policy, time_ns FROM compactions WHERE ref_id = %s AND low <= %s AND high >= %s LIMIT 1"
)
HAS_VERSIONS: Final = "SELECT 1 FROM versions WHERE ref_id = %s LIMIT 1"
REMOVED: Final = (  # the keys of a scope compaction removed, with their last versions
    "SELECT ref_id, namespace, key, floor FROM refs WHERE scope = %s AND floor > 0 "
    "ORDER BY namespace, key"
)
COPY_NEWEST: Final = f"""
    UPDATE refs r SET ({rows.ENTRY}, {rows.VALUE}) = (
        SELECT {rows.ENTRY}, {rows.VALUE}
        FROM versions v WHERE v.ref_id = r.ref_id ORDER BY v.version DESC LIMIT 1
    )
    WHERE r.ref_id = %s
"""
LOCK: Final = (  # a write's row lock: floor, the copy of the newest entry, its value, NOT_NEWEST
    f"SELECT floor, {rows.ENTRY}, inline, {NOT_NEWEST} FROM refs r WHERE r.ref_id = %s FOR UPDATE"
)
# A key's new row; its floor is the last version compaction dropped, if a row was lost.
NEW_REF: Final = (
    "INSERT INTO refs (ref_id, scope, namespace, key, ns_id, key_head, floor) "
    "VALUES (%s, %s, %s, %s, %s, %s, "
    "coalesce((SELECT max(high) FROM compactions WHERE ref_id = %s), 0)) ON CONFLICT DO NOTHING"
)
VERSION: Final = (  # then ``prev`` (index 11): the version the row's entry followed
    f"SELECT {rows.entry_columns('v')}, v.inline, b.codec, b.data, v.prev "
    "FROM versions v LEFT JOIN blobs b ON b.digest = v.blob "
    "WHERE v.ref_id = %s AND v.version >= %s ORDER BY v.version LIMIT %s"
)
EXACT_VERSION: Final = VERSION.replace("v.version >= %s", "v.version = %s").replace(
    " ORDER BY v.version LIMIT %s", ""
)
VALUE_OF: Final = (
    "SELECT v.inline, b.codec, b.data FROM versions v LEFT JOIN blobs b ON b.digest = v.blob "
    "WHERE v.ref_id = %s AND v.version = %s"
)
_SET_HEAD: Final = (
    "UPDATE refs SET version = %(v)s, op = %(op)s, time_ns = %(t)s, digest = %(d)s, "
    "size = %(sz)s, created_ns = %(cr)s, audit = %(a)s, damaged_from = %(df)s, "
    "blob = %(bl)s, inline = %(in)s WHERE ref_id = %(id)s"
)
INSERT_VERSION: Final = (
    "INSERT INTO versions (ref_id, version, scope, op, time_ns, digest, size, created_ns, "
    "audit, damaged_from, blob, inline, prev) VALUES (%(id)s, %(v)s, %(s)s, %(op)s, %(t)s, "
    "%(d)s, %(sz)s, %(cr)s, %(a)s, %(df)s, %(bl)s, %(in)s, %(pv)s)"
)
# A blob row, new or refreshed for gc (either locks it): alone, or with a version below.
# A stored row that is not what this writer would store (its data damaged, its size edited)
# is replaced: the writer holds the value's bytes, and a new version never points at a
# damaged copy of them. The rows are compared once (bytea equality compares lengths
# first, then the bytes); a row kept keeps its data's TOAST pointer: only ``touched_ns``
# is new, as before.
UPSERT_BLOB: Final = (
    "INSERT INTO blobs (digest, codec, size, data, touched_ns) "
    "VALUES (%(bl)s, %(codec)s, %(sz)s, %(data)s, %(now)s) "
    "ON CONFLICT (digest) DO UPDATE SET (touched_ns, codec, size, data) = ("
    "SELECT EXCLUDED.touched_ns, "
    + ", ".join(
        f"CASE WHEN same THEN blobs.{c} ELSE EXCLUDED.{c} END" for c in ("codec", "size", "data")
    )
    + " FROM (SELECT (blobs.codec, blobs.size, blobs.data) "
    "IS NOT DISTINCT FROM (EXCLUDED.codec, EXCLUDED.size, EXCLUDED.data) AS same) AS stored)"
)
_TOUCH_BLOB: Final = "UPDATE blobs SET touched_ns = %(now)s WHERE digest = %(bl)s"
# One statement per version: its blob (new, or refreshed for gc), its row, the newest copy.
APPEND_NEW_BLOB: Final = f"WITH b AS ({UPSERT_BLOB}), v AS ({INSERT_VERSION}) {_SET_HEAD}"
# A blob this write inserted already (an import's value given twice): only refreshed.
APPEND_KNOWN_BLOB: Final = f"WITH b AS ({_TOUCH_BLOB}), v AS ({INSERT_VERSION}) {_SET_HEAD}"
APPEND_ROW: Final = f"WITH v AS ({INSERT_VERSION}) {_SET_HEAD}"  # inline value, or none


@exits.contextmanager
def snapshot(cur: Cursor) -> Iterator[None]:
    """Run the block's reads on one snapshot: a read-only repeatable-read transaction.

    In autocommit each statement sees its own snapshot, so reads that must
    agree with each other (a row's absence and why) race other sessions'
    commits. Inside a transaction already (a write, under its key's row
    lock) the block runs as it is.
    """
    info = cur.connection.info
    if info.transaction_status != TransactionStatus.IDLE or info.pipeline_status:
        yield  # in a transaction (a pipelined write's BEGIN may not be sent yet)
        return
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.Error):  # a failed statement's error goes on
            cur.execute("COMMIT")


class RowView:
    """What a decision reads of its locked ref, in the write's transaction."""

    def __init__(
        self, cur: Cursor, ref: Ref, newest: Entry | None, inline: bytes | None = None
    ) -> None:
        self._cur = cur
        self._ref = ref
        self._newest = newest
        self._inline = inline  # the newest value, when small: read with the row lock

    def value(self) -> bytes | None:
        """The newest entry's verified value (None for a delete or no entry)."""
        if self._newest is not None and self._inline is not None:
            return rows.value(self._ref, self._newest, self._inline, None, None)
        return self.value_at(self._newest) if self._newest is not None else None

    def entry_at(self, version: int) -> Entry | None:
        """The entry of ``version``, or None."""
        return entry_at(self._cur, self._ref, version)[0]

    def value_at(self, entry: Entry) -> bytes | None:
        """The verified value of an entry of this ref."""
        if not entry.live or entry.op == OP_DAMAGED:
            return rows.value(self._ref, entry, None, None, None)
        self._cur.execute(VALUE_OF, (rows.ref_id(self._ref), entry.version))
        found = self._cur.fetchone()
        return rows.value(self._ref, entry, *(found if found is not None else (None, None, None)))

    def absolute(self, loc: BlobLoc) -> BlobLoc:
        """``loc`` itself: no location hints here, values are found by digest."""
        return loc  # no location hints here: values are found by their digest


def entry_at(cur: Cursor, ref: Ref, version: int) -> tuple[Entry | None, bytes | None]:
    """The entry holding ``version`` (or a damaged range over it) and its value.

    Raises:
        NotFoundError: compaction dropped the version.
        CorruptionError: its value fails verification, or its row was lost (the
            key's chain of rows, :mod:`castore.postgres.chains`, or its copy of
            the newest version, names it).
    """
    key = rows.ref_id(ref)
    row = cur.execute(EXACT_VERSION, (key, version), binary=True).fetchone()  # the common case
    if row is not None:
        found = rows.entry(row, 0, ref)
        assert found is not None  # noqa: S101 - a version row has a version
        return found, rows.value(ref, found, *row[8:11])
    with snapshot(cur):  # why there is no row, read as of one moment
        return _without_row(cur, ref, key, version)


def _without_row(
    cur: Cursor, ref: Ref, key: bytes, version: int
) -> tuple[Entry | None, bytes | None]:
    """``entry_at`` of a version without a row of its own."""
    row = cur.execute(VERSION, (key, version, 1)).fetchone()  # a damaged range over it?
    found = rows.entry(row, 0, ref) if row is not None else None
    if row is not None and found is not None and found.first <= version:
        return found, rows.value(ref, found, *row[8:11])
    dropped = cur.execute(COMPACTED, (key, version, version)).fetchone()
    if dropped is not None:
        raise NotFoundError(
            f"{ref} version {version} was compacted ({dropped[0]}, {rfc3339(dropped[1])})"
        )
    if row is not None:  # the next row up: did its entry follow this version or one above?
        prev = row[11]  # see castore.postgres.chains
        if (
            prev is not None
            and prev >= version
            and not cur.execute(COMPACTED, (key, prev, prev)).fetchone()
        ):
            raise CorruptionError(
                f"{ref} version {version}: its row is missing (version {row[0]} followed "
                f"version {prev}; castore check --repair records the lost versions)"
            )
        return None, None
    newest = cur.execute(f"SELECT version FROM refs WHERE {REF}", (key,)).fetchone()
    if newest is not None and newest[0] is not None and newest[0] >= version:
        raise CorruptionError(
            f"{ref} version {version}: its row is missing (the key's newest is version "
            f"{newest[0]}; castore check --repair restores it)"
        )
    return None, None


def params(ref: Ref, entry: Entry, prev: int) -> dict[str, Any]:
    """The parameters of an append statement: the ref's id and scope, the entry's columns.

    ``prev``: the version of the entry before it (0 for the key's first).
    """
    return {
        "pv": prev,
        "id": rows.ref_id(ref),
        "s": ref.scope,
        "v": entry.version,
        "op": entry.op,
        "t": entry.time_ns,
        "d": bytes.fromhex(entry.hash) if entry.hash else None,
        "bl": None,
        "in": None,
        "sz": entry.size,
        "cr": entry.created_ns,
        "a": rows.audit_json(entry.audit),
        "df": entry.damaged_from,
    }


def verified(ref: Ref, row: tuple[Any, ...] | None) -> Entry | None:
    """The entry of an ``ENTRY`` + value row if it decodes and its value verifies, else None."""
    if row is None:
        return None
    try:
        found = rows.entry(row, 0, ref)
        if found is not None and found.op != OP_DAMAGED:
            rows.value(ref, found, row[8], row[9], row[10])
    except CorruptionError:
        return None
    return found


def copy_refuted(cur: Cursor, ref: Ref, how: int) -> bool:
    """Whether a key's copy flagged ``how`` by :data:`NOT_NEWEST` must not be read.

    A copy behind its rows (1), or above them but no newer than the newest (3),
    never is. A copy that differs from its version's row (2)
    is read only where that row does not verify: the copy is then the version's one
    good record (and check restores the row from it); else the two disagree and
    nothing tells which is right (check keeps the row).
    """
    if how != 2:
        return how in (1, 3)
    return verified(ref, cur.execute(NEWEST_ROW, (rows.ref_id(ref),)).fetchone()) is not None
