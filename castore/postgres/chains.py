"""A key's chain of version rows: a row lost from a history is damage, not a version that never was.

Each version row written at schema version 2 holds ``prev``: the version of
the key's entry before it when it was written (0 for a key's first entry,
and for the first of a life after compaction removed the key). A history
may skip versions legitimately (an import of an export that left out what
compaction dropped): ``prev`` skips them too. Compaction deletes rows and
records their ranges in ``compactions``. So, reading a key's rows in version
order, a row whose ``prev`` is not the version of the row right below it
(0: none) is damage: rows were lost between them (``prev`` above it), or a
row is there that the chain does not name (``prev`` below it). The one
exception is a ``prev`` that compaction dropped: what was below it is not
known, and not needed. Rows written at version 1 (``prev`` null) prove
nothing either way.

The readers of whole pages here check each page's links, and the link to
the row above the page. A page whose links all hold costs nothing more; one
with a link to check against ``compactions`` is read again on one snapshot
(an import's overwrite may replace the history and its compactions between
two autocommit statements). docs/DESIGN.md, "The PostgreSQL backend".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from castore.errors import CorruptionError
from castore.keys import Ref
from castore.postgres import rows
from castore.postgres import statements as q
from castore.postgres.connection import Cursor, Row

__all__ = ["copy_without_row", "history_page", "versions_page"]

_TOP: Final = "SELECT version FROM refs WHERE ref_id = %s"  # the key's copy of its newest
_HISTORY: Final = (  # a page newest first, and the row of ``before`` above it if any; the copy's
    f"SELECT {rows.entry_columns('v')}, v.prev, "
    "(SELECT r.version FROM refs r WHERE r.ref_id = %s) FROM versions v "
    "WHERE v.ref_id = %s AND v.version <= %s ORDER BY v.version DESC LIMIT %s"
)
_ROWLESS_COPY: Final = (  # the key's copy of its newest version, if no row holds it
    "SELECT r.version FROM refs r WHERE r.ref_id = %s AND r.version IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.ref_id = r.ref_id "
    "AND v.version >= r.version)"
)
Link = tuple[int, int | None, int]  # a row's version, its prev, the version of the row below
# (a page from the top links the key's copy of its newest version as (its version, the same, ...))


def _broken(prev: int | None, below: int, was_dropped: Callable[[int], bool]) -> bool:
    """Whether a row whose entry followed ``prev`` cannot sit right above version ``below``.

    ``below`` is 0 where no row is below it; ``was_dropped`` says whether
    compaction dropped a version (asked only where rows may be missing).
    """
    if prev is None or prev == below:
        return False
    return prev < below or not was_dropped(prev)


def _missing(ref: Ref, upper: int, prev: int, below: int) -> CorruptionError:
    """The error for a broken link: ``upper`` followed ``prev``, the row under it is ``below``.

    ``upper == prev``: the key's copy of its newest version, above the newest row ``below``.
    """
    under = f"version {below}" if below else "none"
    if upper == prev:
        return CorruptionError(
            f"{ref}: the key's newest version is {upper} (its copy), but the newest version "
            f"row is {under} (castore check --repair restores them)"
        )
    if prev < below:
        return CorruptionError(
            f"{ref} version {upper} followed version {prev}, but the row below it is {under}: "
            "a version row the key's history does not name"
        )
    return CorruptionError(
        f"{ref}: version rows are missing below version {upper}: it followed version {prev}, "
        f"the row below it is {under} (castore check --repair records them as lost)"
    )


def _checked(cur: Cursor, ref: Ref, read: Callable[[], tuple[list[Row], list[Link]]]) -> list[Row]:
    """The rows ``read`` returns, once its links hold (read again on one snapshot to decide)."""
    found, links = read()
    if all(prev is None or prev == below for _, prev, below in links):
        return found
    key = rows.ref_id(ref)

    def was_dropped(version: int) -> bool:
        return cur.execute(q.COMPACTED, (key, version, version)).fetchone() is not None

    with q.snapshot(cur):
        found, links = read()
        for upper, prev, below in links:
            if _broken(prev, below, was_dropped):
                raise _missing(ref, upper, prev or 0, below)
    return found


def history_page(cur: Cursor, ref: Ref, before: int, limit: int) -> list[Row]:
    """Rows (``ENTRY``'s columns) below version ``before``, newest first, ``limit`` at most.

    Raises:
        CorruptionError: the page's rows, or the row of ``before`` above them, do
            not chain: rows were lost.
    """

    def read() -> tuple[list[Row], list[Link]]:
        key = rows.ref_id(ref)
        found: list[Row] = cur.execute(
            _HISTORY, (key, key, before, min(limit + 1, 2**63 - 1) if limit else None)
        ).fetchall()
        top = found[0][9] if found else (cur.execute(_TOP, (key,)).fetchone() or (None,))[0]
        link = found.pop(0) if found and found[0][0] == before else None
        bottom = not limit or len(found) < limit  # the page ends with the key's oldest row
        page = found[:limit] if limit else found
        chained = ([link] if link is not None else []) + page
        below = [r[0] for r in chained[1:]] + ([0] if bottom else [])
        links = [(r[0], r[8], under) for r, under in zip(chained, below, strict=False)]
        if link is None and top is not None and before >= top:  # the page starts at the top:
            links.append((top, top, page[0][0] if page else 0))  # at the copy's version
        return page, links

    return _checked(cur, ref, read)


def versions_page(cur: Cursor, ref: Ref, below: int) -> list[Row]:
    """:data:`~castore.postgres.statements.VERSION`'s rows above version ``below``, a page.

    ``below``: the last version of the page before (0 for the first page);
    its row, read again, is the link the page's first row must follow.

    Raises:
        CorruptionError: the rows do not chain: rows were lost.
    """

    def read() -> tuple[list[Row], list[Link]]:
        start = below or 1
        found: list[Row] = cur.execute(q.VERSION, (rows.ref_id(ref), start, q.PAGE + 1)).fetchall()
        link: int | None  # the version the first row must follow (None: not known)
        if below and found and found[0][0] == below:
            link = found.pop(0)[0]
        else:  # the row is not there any more (compacted, replaced): the first row unchecked
            link = None if below else 0
            found = found[: q.PAGE]
        unders = [link] + [r[0] for r in found]
        return found, [(r[0], r[11], u) for r, u in zip(found, unders) if u is not None]  # noqa: B905

    return _checked(cur, ref, read)


def copy_without_row(cur: Cursor, ref: Ref) -> None:
    """Check that the key's copy of its newest version has its row (one statement).

    Raises:
        CorruptionError: no row holds the copy's version or one above it.
    """
    found: Any = cur.execute(_ROWLESS_COPY, (rows.ref_id(ref),)).fetchone()
    if found is not None:
        raise CorruptionError(
            f"{ref} version {found[0]}: its row is missing (the key's copy of its newest "
            "version names it; castore check --repair restores it)"
        )
