"""A write's rows: each new version, its blob row, and the key's copy of its newest.

Run by :mod:`castore.postgres.backend` inside the write's transaction, once the
key's ``refs`` row is locked. One statement per version inserts its ``versions``
row (its ``prev``: the version before it, :mod:`castore.postgres.chains`), its
blob (new, or refreshed for gc: ``touched_ns``; a value under
:data:`~castore.postgres.schema.INLINE_MAX_BYTES` is inline instead) and the
new copy in ``refs``. A blob row is locked by the statement that inserts or
refreshes it, so a write whose versions use more than one blob takes those
rows first, in digest order, as gc does: two writes sharing values in other
orders (two imports, say) never wait on each other crosswise.
"""

from __future__ import annotations

import time
from typing import Any

from castore.backend import NewVersion, next_entry
from castore.keys import Ref
from castore.postgres import statements as q
from castore.postgres.connection import Cursor
from castore.postgres.schema import INLINE_MAX_BYTES
from castore.records import OP_DAMAGED, Entry
from castore.valuecodec import pack

__all__ = ["append_all"]


def append_all(
    cur: Cursor, ref: Ref, previous: Entry | None, floor: int, news: list[NewVersion]
) -> list[Entry]:
    """Append ``news`` after ``previous`` (``floor``: the base of a key without entries).

    Raises:
        ConflictError: a version would repeat, or none can follow (``next_entry``).
    """
    now = time.time_ns()
    # Blob rows this write has inserted or refreshed. Not the previous version's: its
    # row may be gone (damage, a hand's DELETE), and this write has the bytes: each
    # write's first use of a blob upserts it, so an acknowledged value is never missing.
    known: set[str] = set()
    written: list[Entry] = []
    last = previous
    for new in news:
        last = next_entry(ref, new, last, floor, now)
        written.append(last)
    pairs = list(zip(written, news, strict=True))
    blobs = {e.hash: n.normalized for e, n in pairs if _blob_of(e, n.normalized)}
    if len(blobs) > 1:
        for digest in sorted(blobs):
            _upsert_blob(cur, digest, blobs[digest], now)
            known.add(digest)
    below = previous.version if previous is not None else 0  # each row's ``prev``
    for entry, new in pairs:
        _append(cur, q.params(ref, entry, below), entry, new.normalized, known, now)
        below = entry.version
    return written


def _blob_of(entry: Entry, normalized: bytes | None) -> bool:
    """Whether ``entry``'s value is kept in a blob row (not inline, not absent)."""
    return normalized is not None and entry.op != OP_DAMAGED and len(normalized) >= INLINE_MAX_BYTES


def _upsert_blob(cur: Cursor, digest: str, normalized: bytes | None, now: int) -> None:
    """Insert a blob row, or refresh it for gc if it is there; either locks it."""
    assert normalized is not None  # noqa: S101 - _blob_of holds only stored values
    codec, data = pack(normalized)
    blob = {"bl": bytes.fromhex(digest), "codec": codec, "data": data, "now": now}
    cur.execute(q.UPSERT_BLOB, {**blob, "sz": len(normalized)})


def _append(
    cur: Cursor,
    params: dict[str, Any],
    entry: Entry,
    normalized: bytes | None,
    known: set[str],
    now: int,
) -> None:
    """Insert ``entry`` (``params``; its blob unless ``known`` holds it) as the ref's newest."""
    if normalized is None or entry.op == OP_DAMAGED:
        cur.execute(q.APPEND_ROW, params)
    elif len(normalized) < INLINE_MAX_BYTES:
        cur.execute(q.APPEND_ROW, {**params, "in": normalized})
    elif entry.hash in known:
        cur.execute(q.APPEND_KNOWN_BLOB, {**params, "bl": params["d"], "now": now})
    else:
        codec, data = pack(normalized)
        blob = {"bl": params["d"], "codec": codec, "data": data, "now": now}
        cur.execute(q.APPEND_NEW_BLOB, {**params, **blob})
        known.add(entry.hash)
