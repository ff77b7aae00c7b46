"""check of what no read verifies in a PostgreSQL store's ``refs`` rows: names and floors.

A ``refs`` row's ``ref_id`` is the sha256 of its namespace id and key
(:func:`castore.postgres.rows.ref_id`), so its names can be checked: a row whose
scope, namespace or key no longer hash to its id, or whose ``ns_id`` or
``key_head`` (what ``list``, ``export`` and ``audit`` find keys by) are not its
names', hides its key from those commands while ``get`` still finds it. The
derived columns are repaired from the names when the names still hash to the id;
names that do not cannot be (the id is a one-way hash): reported.

A key's ``floor`` (the last version of a life compaction removed) must not be
below a version compaction dropped when the key has no newer version (row or
copy): a write would give those versions again. The repair raises it.
"""

from __future__ import annotations

from typing import Any, Final

from castore.keys import Ref
from castore.postgres import rows
from castore.postgres.connection import Cursor, Database
from castore.postgres.schema import KEY_HEAD_BYTES
from castore.reports import Finding

__all__ = ["check_floors", "check_names", "check_orphans"]

_BATCH: Final = 1000
_NAMES: Final = (
    "SELECT ref_id, scope, namespace, key, ns_id, key_head FROM refs "
    "WHERE ref_id > %s ORDER BY ref_id LIMIT %s"
)
_FIX_NAMES: Final = "UPDATE refs SET ns_id = %s, key_head = %s WHERE ref_id = %s"
_LOW_FLOORS: Final = """
    SELECT r.ref_id, r.scope, r.namespace, r.key, r.floor, c.high FROM refs r
    JOIN (SELECT ref_id, max(high) AS high FROM compactions GROUP BY ref_id) c
        ON c.ref_id = r.ref_id
    WHERE c.high > greatest(r.floor, coalesce(r.version, 0), coalesce(
        (SELECT max(v.version) FROM versions v WHERE v.ref_id = r.ref_id), 0))
    ORDER BY r.scope, r.namespace, r.key
"""
_RAISE_FLOOR: Final = "UPDATE refs SET floor = greatest(floor, %s) WHERE ref_id = %s"
# Compactions of a key whose refs row is gone: its names are lost (a hand's DELETE); its
# next write makes the row again above them (NEW_REF), so only a report.
_ORPHANS: Final = """
    SELECT c.ref_id, max(c.high) FROM compactions c
    WHERE NOT EXISTS (SELECT 1 FROM refs r WHERE r.ref_id = c.ref_id)
    GROUP BY c.ref_id ORDER BY c.ref_id
"""


def _name(scope: str, namespace: bytes, key: bytes) -> str:
    """A ref's name as stored, shown even when its bytes are not UTF-8."""
    return str(Ref(scope, namespace.decode("utf-8", "replace"), key.decode("utf-8", "replace")))


def _names_problem(row: tuple[Any, ...]) -> tuple[str, tuple[bytes, bytes] | None] | None:
    """What is wrong with a row's names, and the derived columns to set (None: cannot)."""
    ref_id, scope, namespace, key, ns_id, key_head = (row[0], row[1], *map(bytes, row[2:]))
    try:
        ref = Ref(scope, namespace.decode("utf-8"), key.decode("utf-8"))
    except UnicodeDecodeError:
        return "its namespace or key is not UTF-8", None
    if rows.ref_id(ref) != bytes(ref_id):
        return "its scope, namespace and key do not hash to its ref_id (edited)", None
    want = (rows.ns_id(scope, ref.namespace), key[:KEY_HEAD_BYTES])
    if (ns_id, key_head) != want:
        return "its ns_id or key_head is not its names' (list and export miss it)", want
    return None


def _fix(db: Database, params: tuple[bytes, bytes, bytes]) -> None:
    def work(cur: Cursor) -> None:
        cur.execute(_FIX_NAMES, params)

    db.run(work, "repairing")


def check_names(db: Database, repair: bool) -> list[Finding]:
    """A finding per ``refs`` row whose names or derived columns are damaged (repaired)."""
    findings: list[Finding] = []
    after = b""
    while True:
        batch = db.fetch(_NAMES, (after, _BATCH), "checking")
        for row in batch:
            found = _names_problem(row)
            if found is None:
                continue
            problem, fix = found
            if repair and fix is not None:
                _fix(db, (*fix, bytes(row[0])))
            findings.append(
                Finding(
                    path=f"refs/{bytes(row[0]).hex()}",
                    problem=f"{_name(row[1], bytes(row[2]), bytes(row[3]))}: {problem}",
                    repair="set them from its names" if fix else "none: its names are lost",
                    repaired=repair and fix is not None,
                )
            )
        if len(batch) < _BATCH:
            return findings
        after = bytes(batch[-1][0])


def check_orphans(db: Database) -> list[Finding]:
    """A finding per key whose compactions remain without its ``refs`` row (not repairable)."""
    return [
        Finding(
            path=f"compactions/{bytes(ref_id).hex()}",
            problem=f"compactions up to version {high} of a key whose refs row is lost",
            repair="none: its names are lost (its next write goes on above that version)",
            repaired=False,
        )
        for ref_id, high in db.fetch(_ORPHANS, (), "checking")
    ]


def check_floors(db: Database, repair: bool) -> list[Finding]:
    """A finding per key whose floor is below a version compaction dropped (raised)."""
    findings: list[Finding] = []
    for ref_id, scope, namespace, key, floor, high in db.fetch(_LOW_FLOORS, (), "checking"):

        def lift(cur: Cursor, high: int = high, ref_id: bytes = bytes(ref_id)) -> None:
            cur.execute(_RAISE_FLOOR, (high, ref_id))

        if repair:
            db.run(lift, "repairing", ref=_name(scope, bytes(namespace), bytes(key)))
        findings.append(
            Finding(
                path=f"refs/{_name(scope, bytes(namespace), bytes(key))}",
                problem=f"its floor {floor} is below version {high}, which compaction dropped",
                repair=f"raise the floor to {high}",
                repaired=repair,
            )
        )
    return findings
