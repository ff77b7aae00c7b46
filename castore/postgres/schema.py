"""The tables of a PostgreSQL store, their version, and how they are created and upgraded.

One schema per store (the location's ``schema`` parameter). Version 2:

* ``castore_meta``: ``schema_version`` (a store refuses a newer one);
* ``blobs``: one row per value of :data:`INLINE_MAX_BYTES` or more, named by
  the sha256 of its normalized JSON (``digest``), packed raw or as zstd
  (:mod:`castore.valuecodec`), shared by every key and version;
  ``touched_ns`` is the last time a write used it (gc's grace period);
* ``refs``: one row per key ever written, named by ``ref_id`` (the sha256
  of its scope, namespace and key: a key castore accepts may be 4 KiB, more
  than a btree entry holds). It keeps the names (``scope``, and
  ``namespace`` and ``key`` as UTF-8 ``bytea``: byte-wise order, as Dagu's,
  and NUL fits), ``ns_id`` and ``key_head`` (the key's first
  :data:`KEY_HEAD_BYTES`) for ``list``'s index, a copy of the key's newest
  version (for ``get`` and ``list``, one indexed query each; null columns
  once compaction removed the key) and ``floor``, the last version of a
  removed life (so versions never repeat). Every write locks its key's row;
* ``versions``: one row per version: ``ref_id``, ``version``, ``scope``
  (for per-scope statistics), ``op``, times, ``digest`` (the value's sha256;
  null for a delete), ``size``, ``audit`` (the audit record as JSON bytes:
  exact, and NUL-safe where ``jsonb`` is not), and the value: ``blob`` (the
  digest of its ``blobs`` row; no foreign key: it costs every insert, and
  gc's safety comes from row locks, :mod:`castore.postgres.maintenance`) or,
  for a value shorter than :data:`INLINE_MAX_BYTES`, ``inline`` (the
  normalized JSON itself: a row in ``blobs`` would cost more than the copy
  it saves, as in the file store), and ``prev``: the version of the key's
  entry before this one when it was written (0 for a key's first), so a
  row lost from the middle of a history is told from a version that never
  was (:mod:`castore.postgres.chains`); null in rows written at version 1;
* ``compactions``: the version ranges compaction dropped, with the policy (by ``ref_id``);
* ``quarantine`` (made by the first repair that needs it: :func:`make_quarantine`):
  damaged version rows as they were, before a repair recorded their versions lost.

Version 1 had no ``prev``: :func:`upgrade_schema` adds the column (rows
already there keep null: their chain is not known), and a store at version
1 is refused until then; a castore of version 1 that opened the store before
the upgrade has its inserts refused by a trigger the upgrade adds, so no
castore writes rows without it.

docs/DESIGN.md, "The PostgreSQL backend", has the transactions.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import sql

from castore.errors import FormatVersionError

__all__ = [
    "INLINE_MAX_BYTES",
    "KEY_HEAD_BYTES",
    "SCHEMA_VERSION",
    "create",
    "make_quarantine",
    "upgrade_schema",
    "version_of",
]

SCHEMA_VERSION: Final = 2
INLINE_MAX_BYTES: Final = 256  # shorter values live in their version row, not in blobs
KEY_HEAD_BYTES: Final = 256  # the part of a key list's index orders by

_PREV: Final = "prev bigint CHECK (prev >= 0 AND prev < version)"  # added at version 2
_TABLES: Final = (
    "CREATE TABLE castore_meta (name text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE blobs (
        digest bytea PRIMARY KEY CHECK (length(digest) = 32),
        codec smallint NOT NULL,
        size integer NOT NULL,
        data bytea NOT NULL,
        touched_ns bigint NOT NULL
    )""",
    # zstd already compressed what helps: no second compression by TOAST
    "ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL",
    """CREATE TABLE refs (
        ref_id bytea PRIMARY KEY,
        scope text NOT NULL,
        namespace bytea NOT NULL,
        key bytea NOT NULL,
        ns_id bytea NOT NULL,
        key_head bytea NOT NULL,
        floor bigint NOT NULL DEFAULT 0,
        version bigint,
        op text,
        time_ns bigint,
        digest bytea,
        size integer,
        created_ns bigint,
        audit bytea,
        damaged_from bigint,
        blob bytea,
        inline bytea
    )""",
    "CREATE INDEX refs_list ON refs (ns_id, key_head)",
    """CREATE TABLE versions (
        ref_id bytea NOT NULL,
        version bigint NOT NULL CHECK (version > 0),
        scope text NOT NULL,
        op text NOT NULL,
        time_ns bigint NOT NULL,
        digest bytea,
        size integer NOT NULL,
        created_ns bigint NOT NULL,
        audit bytea NOT NULL,
        damaged_from bigint NOT NULL DEFAULT 0,
        blob bytea,
        inline bytea,
        """
    + _PREV
    + """,
        PRIMARY KEY (ref_id, version),
        CHECK (blob IS NULL OR blob = digest),
        CHECK (blob IS NULL OR inline IS NULL)
    )""",
    "CREATE INDEX versions_blob ON versions (blob) WHERE blob IS NOT NULL",
    """CREATE TABLE compactions (
        ref_id bytea NOT NULL,
        low bigint NOT NULL,
        high bigint NOT NULL,
        policy text NOT NULL,
        time_ns bigint NOT NULL
    )""",
    "CREATE INDEX compactions_ref ON compactions (ref_id)",
)


def version_of(cur: psycopg.Cursor[Any], schema: str, *, older: bool = False) -> int:
    """The schema's version: 0 when it holds no store (absent, or empty).

    Raises:
        FormatVersionError: the schema holds tables that are not a castore
            store, a store newer than this castore knows, or (unless ``older``)
            an older one, which ``castore upgrade`` converts.
    """
    # One snapshot for both counts: a store being created is seen whole or not at all.
    cur.execute(
        "SELECT count(*) FILTER (WHERE c.relname = 'castore_meta'), count(*) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        (schema,),
    )
    row = cur.fetchone()
    assert row is not None  # noqa: S101 - one row by construction
    has_meta, relations = row
    if not has_meta:
        if relations:
            raise FormatVersionError(
                f"schema {schema} holds tables but no castore store: give another ?schema="
            )
        return 0
    cur.execute(
        sql.SQL("SELECT value FROM {}.castore_meta WHERE name = 'schema_version'").format(
            sql.Identifier(schema)
        )
    )
    found = cur.fetchone()
    text = str(found[0]) if found is not None else ""
    version = int(text) if text.isascii() and text.isdigit() else -1  # "²" is a digit
    if version < 1:
        raise FormatVersionError(f"schema {schema}: castore_meta holds no schema version")
    if version > SCHEMA_VERSION:
        raise FormatVersionError(
            f"schema {schema} holds a castore store of schema version {version}; "
            f"this castore knows {SCHEMA_VERSION}: upgrade castore"
        )
    if version < SCHEMA_VERSION and not older:
        raise FormatVersionError(
            f"schema {schema} holds a castore store of schema version {version}: "
            f"run `castore upgrade` once to convert it to version {SCHEMA_VERSION}"
        )
    return version


def _lock(cur: psycopg.Cursor[Any], schema: str) -> None:
    """Serialize creation and upgrades of ``schema`` (until the transaction ends)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('castore schema ' || %s::text))", (schema,))


def create(cur: psycopg.Cursor[Any], schema: str) -> bool:
    """Create the store's tables in ``schema`` unless present; True if this call made them.

    Run inside a transaction: two first users serialize on an advisory lock,
    and the second finds the tables the first committed.
    """
    _lock(cur, schema)
    if version_of(cur, schema, older=True):
        return False
    ident = sql.Identifier(schema)
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
    for statement in _TABLES:
        cur.execute(statement)
    cur.execute(
        sql.SQL("INSERT INTO {}.castore_meta VALUES ('schema_version', %s)").format(ident),
        (str(SCHEMA_VERSION),),
    )
    return True


# A castore of schema version 1 that opened the store before the upgrade goes on writing
# rows without ``prev`` (it checked the version once): its inserts are refused, and say why.
# Not a CHECK: a repair may rewrite a row written at version 1, whose ``prev`` stays null.
_OLD_WRITERS_REFUSED: Final = (
    """CREATE OR REPLACE FUNCTION {s}.castore_refuse_rows_without_prev() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'check_violation',
        MESSAGE = 'this store was upgraded to castore schema version 2, which every version '
            'row written since names its prev in: upgrade this castore'; END $$""",
    """CREATE TRIGGER castore_rows_name_prev BEFORE INSERT ON {s}.versions FOR EACH ROW
        WHEN (NEW.prev IS NULL) EXECUTE FUNCTION {s}.castore_refuse_rows_without_prev()""",
)
_QUARANTINE: Final = """CREATE TABLE IF NOT EXISTS {}.quarantine (
    ref_id bytea NOT NULL,
    version bigint NOT NULL,
    time_ns bigint NOT NULL,
    problem text NOT NULL,
    version_row jsonb NOT NULL,
    blob_row jsonb
)"""


def make_quarantine(cur: psycopg.Cursor[Any], schema: str) -> None:
    """Create the ``quarantine`` table unless present (in the caller's transaction).

    Made by the first ``check --repair`` that keeps a damaged version row there
    (:mod:`castore.postgres.versionrows`): one row per row kept, as it was
    (``to_jsonb`` of it and of its blob row: ``bytea`` columns as hex), with
    when and why. A store without damage has no such table; castore never
    reads it, and no schema version needs it.
    """
    _lock(cur, schema)
    cur.execute(sql.SQL(_QUARANTINE).format(sql.Identifier(schema)))


def upgrade_schema(cur: psycopg.Cursor[Any], schema: str) -> tuple[int, int]:
    """Bring ``schema`` to :data:`SCHEMA_VERSION`; return the versions before and after.

    An upgrade creates a missing store, adds version 2's ``prev`` column to a
    store at version 1 (a change of the catalog only: no row is rewritten),
    and leaves a current one as it is, but for the trigger that refuses a
    version-1 castore's rows, which a version-2 store without it gets (one
    upgraded before that trigger existed). Run in one transaction.
    """
    _lock(cur, schema)
    before = version_of(cur, schema, older=True)
    if before == 0:
        create(cur, schema)
    elif before == 1:
        ident = sql.Identifier(schema)
        cur.execute(sql.SQL("ALTER TABLE {}.versions ADD COLUMN " + _PREV).format(ident))
        for statement in _OLD_WRITERS_REFUSED:
            cur.execute(sql.SQL(statement).format(s=ident))
        cur.execute(
            sql.SQL("UPDATE {}.castore_meta SET value = %s WHERE name = 'schema_version'").format(
                ident
            ),
            (str(SCHEMA_VERSION),),
        )
    elif _needs_old_writers_refused(cur, schema):
        for statement in _OLD_WRITERS_REFUSED:
            cur.execute(sql.SQL(statement).format(s=sql.Identifier(schema)))
    return before, SCHEMA_VERSION


def _needs_old_writers_refused(cur: psycopg.Cursor[Any], schema: str) -> bool:
    """Whether a version-2 store lacks the trigger that refuses a version-1 castore's rows.

    The trigger came with castore's upgrade only on 2026-12-06: a store upgraded
    before has none (an empty one, or one whose old rows compaction dropped, shows
    no other sign of it), nor does a store made at version 2. Each gets it.
    """
    cur.execute(
        "SELECT EXISTS (SELECT FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
        " AND c.relname = 'versions' AND t.tgname = 'castore_rows_name_prev')",
        (schema,),
    )
    present = cur.fetchone()
    return present is not None and not present[0]
