"""What a version is, whatever stores it: :class:`Entry`, its :class:`Audit`, its operations.

Every backend returns these; the file backend also writes them into its
``E`` frames (:mod:`castore.file.records`, docs/FORMAT.md §3).
"""

from __future__ import annotations

import msgspec

__all__ = ["OP_DAMAGED", "OP_DELETE", "OP_ROLLBACK", "OP_SET", "Audit", "BlobLoc", "Entry"]

OP_SET = "set"
OP_DELETE = "delete"
OP_ROLLBACK = "rollback"
OP_DAMAGED = "damaged"  # versions lost to damage; written by check --repair (FORMAT.md §7)


class Audit(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who wrote a version. Empty fields are omitted on disk."""

    dag_name: str = ""
    run_id: str = ""
    step_name: str = ""
    attempt: str = ""
    user: str = ""
    host: str = ""
    pid: int = 0
    actor: str = ""
    reason: str = ""
    rollback_from: int = 0
    request_id: str = ""  # the client's id of the write (an http:// store): a retry is applied once


class BlobLoc(msgspec.Struct, frozen=True, array_like=True):
    """Where a blob frame was written: a location *hint*, verified on read.

    ``log`` is the log's path relative to the store's ``refs/`` directory,
    or ``""`` for the log that holds this entry.
    """

    log: str
    offset: int
    length: int


class Entry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One version of a ref: a set (or rollback) pointing at a blob, or a tombstone."""

    version: int
    op: str
    time_ns: int
    hash: str = ""
    size: int = 0
    blob: BlobLoc | None = None
    created_ns: int = 0
    audit: Audit = Audit()
    damaged_from: int = 0  # OP_DAMAGED: the versions damaged_from..version were lost

    @property
    def live(self) -> bool:
        """True unless this entry is a tombstone (a damaged version counts as existing)."""
        return self.op != OP_DELETE

    @property
    def first(self) -> int:
        """The lowest version this entry stands for (several for a damaged range)."""
        return self.damaged_from or self.version
