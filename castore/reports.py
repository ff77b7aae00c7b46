"""What the maintenance operations report, whatever backend ran them (docs/CLI.md).

Field names and order are the JSON the CLI prints (``rename="camel"``);
every backend returns these types from the maintenance calls of
:class:`~castore.backend.Backend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from castore.argcheck import check_integer, check_number, check_text
from castore.errors import InvalidValueError
from castore.keys import validate_filters, validate_prefix
from castore.records import Entry

__all__ = [
    "GC_GRACE_SECONDS",
    "MAX_COUNT",
    "MAX_SECONDS",
    "CheckReport",
    "CompactReport",
    "Finding",
    "GCReport",
    "Retention",
    "ScopeStats",
    "StoreStats",
    "UpgradeReport",
    "check_seconds",
    "lost_range",
    "retained",
]

GC_GRACE_SECONDS = 3600.0  # 1 hour: far above any write's duration


class PlainReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A report that converts to plain data: the CLI's line (``operation`` first, if any)."""

    _operation: ClassVar[str] = ""  # the command that prints it ("" for a part of one)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data, in the CLI's field order and names."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        return {"operation": self._operation, **data} if self._operation else data

    def to_json(self) -> bytes:
        """The JSON line the CLI prints for this report (without newline)."""
        return msgspec.json.encode(self.to_dict())


class Finding(PlainReport, frozen=True, kw_only=True):
    """One problem: the file, what is wrong, what repair does (and whether it did)."""

    path: str
    problem: str
    repair: str
    repaired: bool = False
    severity: str = "error"  # "info": harmless (derived data, leftovers); ok stays true


class CheckReport(PlainReport, frozen=True, kw_only=True):
    """Result of a check. ``ok`` means nothing is (still) wrong."""

    _operation: ClassVar[str] = "check"

    ok: bool
    logs: int
    entries: int
    blobs: int
    findings: list[Finding]


class GCReport(PlainReport, frozen=True, kw_only=True):
    """What gc found, kept and freed (or, with ``dry_run``, would free)."""

    _operation: ClassVar[str] = "gc"

    dry_run: bool
    grace_seconds: float
    blobs_found: int
    blobs_kept: int
    blobs_freed: int
    bytes_found: int
    bytes_kept: int
    bytes_freed: int
    logs_rewritten: int
    logs_removed: int
    leftovers_removed: int


class CompactReport(PlainReport, frozen=True, kw_only=True):
    """What a compaction did (or, with ``dry_run``, would do)."""

    _operation: ClassVar[str] = "compact"

    policy: str
    dry_run: bool
    refs_examined: int
    refs_compacted: int
    versions_dropped: int
    keys_removed: int
    bytes_before: int
    bytes_after: int


class ScopeStats(msgspec.Struct, kw_only=True, rename="camel"):
    """Counts for one scope (see :class:`StoreStats`)."""

    keys: int = 0
    deleted_keys: int = 0
    versions: int = 0
    blobs: int = 0
    stored_bytes: int = 0
    logical_bytes: int = 0
    reclaimable_bytes: int = 0


class StoreStats(PlainReport, frozen=True, kw_only=True):
    """Statistics of a store: per scope and in total."""

    _operation: ClassVar[str] = "stats"

    scopes: dict[str, ScopeStats]
    total: ScopeStats


class UpgradeReport(PlainReport, frozen=True, kw_only=True):
    """Result of an upgrade: the formats before and after, files converted.

    ``graves_damaged``: the ``GRAVES`` files (relative paths) that held bytes that are no
    record; they are carried over as damage for ``check --repair`` to replace by a floor.
    """

    _operation: ClassVar[str] = "upgrade"

    from_version: int
    to_version: int
    graves_converted: int
    graves_damaged: list[str] = []


MAX_COUNT = (1 << 63) - 1  # a count or version every backend stores (a bigint)
MAX_SECONDS = MAX_COUNT // 1_000_000_000  # a span whose nanoseconds are a bigint (292 years)


def check_seconds(value: float, what: str) -> None:
    """A span of time in seconds: a finite number from 0 to :data:`MAX_SECONDS`.

    Raises:
        InvalidValueError: naming ``what`` and the value.
        TypeError: not a number.
    """
    check_number(value, what)
    if not 0 <= value <= MAX_SECONDS:  # NaN fails both
        raise InvalidValueError(f"{what} must be from 0 to {MAX_SECONDS} seconds (got {value:g})")


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """A compaction policy and the refs it applies to (validated on construction).

    Keeps the newest ``keep_last`` versions and/or every version younger
    than ``keep_within_seconds``; a version either rule keeps is kept, and
    so is the newest. A key whose tombstone is older than
    ``keep_within_seconds`` is removed; its versions stay reserved.

    Attributes:
        keep_last: keep the newest N versions of each key.
        keep_within_seconds: keep versions younger than this.
        scope: only this scope (None: every scope).
        namespace: only this namespace (None: every namespace).
        prefix: only keys starting with this.
        keep_within_text: ``keep_within_seconds`` as the user wrote it (``30d``),
            for :attr:`policy`; "" prints the seconds.

    Raises:
        InvalidValueError: no policy, or a policy out of range (keep_last < 1).
        InvalidRefError: bad scope, namespace or prefix filters.
    """

    keep_last: int | None = None
    keep_within_seconds: float | None = None
    scope: str | None = None
    namespace: str | None = None
    prefix: str = ""
    keep_within_text: str = ""

    def __post_init__(self) -> None:
        check_integer(self.keep_last, "keep_last", optional=True)
        check_text(self.keep_within_text, "keep_within_text")
        if self.keep_last is None and self.keep_within_seconds is None:
            raise InvalidValueError("give a retention policy: keep_last and/or keep_within")
        if self.keep_last is not None and not 1 <= self.keep_last <= MAX_COUNT:
            raise InvalidValueError(
                f"keep_last must be from 1 to {MAX_COUNT} (got {self.keep_last})"
            )
        if self.keep_within_seconds is not None:
            check_seconds(self.keep_within_seconds, "keep_within_seconds")
        validate_filters(self.scope, self.namespace)
        validate_prefix(self.prefix)

    @property
    def policy(self) -> str:
        """The policy as text, e.g. ``keep-last 5, keep-within 30d`` (as the user wrote it).

        Without ``keep_within_text``, the seconds in full: ``keep-within 86400s``.
        """
        parts = []
        if self.keep_last is not None:
            parts.append(f"keep-last {self.keep_last}")
        if self.keep_within_seconds is not None:
            seconds = self.keep_within_seconds
            whole = int(seconds) if seconds == int(seconds) else seconds
            parts.append(f"keep-within {self.keep_within_text or f'{whole}s'}")
        return ", ".join(parts)


def retained(
    entries: Sequence[Entry], keep_last: int | None, cutoff_ns: int | None
) -> set[int] | None:
    """The versions of one key a retention policy keeps (every backend's one rule).

    ``entries`` are the key's entries, oldest first (at least one);
    ``cutoff_ns`` is the time before which ``keep_within`` keeps nothing.
    The newest version is always kept. None: the key goes away (its newest
    entry is a delete older than the cutoff).
    """
    newest = entries[-1]
    if not newest.live and cutoff_ns is not None and newest.time_ns < cutoff_ns:
        return None
    keep = {newest.version}
    if keep_last is not None:
        keep.update(e.version for e in entries[-keep_last:])
    if cutoff_ns is not None:
        keep.update(e.version for e in entries if e.time_ns >= cutoff_ns)
    return keep


def lost_range(ref: str, entry: Entry) -> str:
    """What ``check`` says of a ``damaged`` entry: the versions a repair recorded as lost."""
    reason = f" ({entry.audit.reason})" if entry.audit.reason else ""
    return f"{ref} versions {entry.first}-{entry.version} were lost to damage{reason}"
