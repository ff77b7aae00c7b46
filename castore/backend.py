"""The contract between :class:`~castore.store.Store` and a storage backend.

``Store`` and every backend-independent feature (history, rollback, version
diffs, audit, export/import, import-dagu) talk to storage only through
:class:`Backend` (docs/DESIGN.md, "The backend contract"). A write is a
*decision* run inside the backend's atomic section for one ref (the log's
``flock`` in the file backend; a row lock or a serializable transaction in a
database): given the newest entry and a :class:`LogView`, it returns what to
append, or nothing. Maintenance (check/repair, gc, compaction, stats) is
part of the contract too: every backend offers it, each in its own way, and
reports it in the shared types of :mod:`castore.reports`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final, NamedTuple, Protocol

from castore.defaults import LOCK_TIMEOUT_SECONDS
from castore.errors import ConflictError, CorruptionError
from castore.keys import Ref
from castore.records import OP_DAMAGED, OP_DELETE, Audit, BlobLoc, Entry
from castore.reports import CheckReport, CompactReport, GCReport, Retention, StoreStats
from castore.results import ListEntry

__all__ = [
    "LOCK_TIMEOUT_SECONDS",
    "MAX_VERSION",
    "Backend",
    "Current",
    "Decide",
    "LogView",
    "NewVersion",
    "NothingView",
    "Progress",
    "changed_since",
    "lost_error",
    "lost_marker",
    "next_entry",
    "overwrite_refusal",
    "stored_time",
]


class Current(NamedTuple):
    """The newest entry of a ref, its value when live, and where its frame starts."""

    entry: Entry | None
    value: bytes | None
    entry_start: int = -1

    @property
    def live(self) -> Entry | None:
        """The newest entry unless it is a tombstone (or absent)."""
        return self.entry if self.entry is not None and self.entry.live else None


class NewVersion(NamedTuple):
    """One version a decision asks to append.

    ``normalized`` is None for a tombstone. ``hint`` is a known location of
    the blob (from :meth:`LogView.absolute`), tried before any lookup.
    ``version``, ``time_ns`` and ``created_ns`` are set only by imports that
    reproduce a history; otherwise they are the next version and now.
    """

    op: str
    normalized: bytes | None
    digest_hex: str
    audit: Audit
    hint: BlobLoc | None = None
    version: int = 0
    time_ns: int = 0
    created_ns: int = 0
    damaged_from: int = 0  # an import reproducing a ``damaged`` entry's range


class LogView(Protocol):
    """What a decision may read of its ref, inside the backend's atomic section."""

    def value(self) -> bytes | None:
        """The newest entry's value (None for a tombstone or no entry)."""

    def entry_at(self, version: int) -> Entry | None:
        """The entry of ``version``, or None."""

    def value_at(self, entry: Entry) -> bytes | None:
        """The verified value of an entry of this ref."""

    def absolute(self, loc: BlobLoc) -> BlobLoc:
        """A blob location of this ref, usable as a :attr:`NewVersion.hint` elsewhere."""


Progress = Callable[[int], object]
"""Told how many more items (logs, keys) a long operation has done."""

Decide = Callable[[Entry | None, LogView], "NewVersion | list[NewVersion] | None"]
"""A write's decision: given the newest entry and a view of the ref, what to append.

A backend may also run it once on nothing (no entry, an empty view) before
its atomic section, to learn whether a write to a location that holds no
store yet appends anything (a read never creates a store); so a decision
has no effect besides its result and its errors.
"""


class Backend(Protocol):
    """Storage of versioned refs: the whole contract ``Store`` relies on.

    Every method is safe for many processes and threads. Reads never guess:
    damage that hides an answer raises
    :class:`~castore.errors.CorruptionError`.
    """

    #: True if a durable write of nothing on one key (FORMAT.md §6 step 3) makes every
    #: change committed before it durable too, not only that key's (PostgreSQL: its
    #: synchronous commit flushes the whole WAL up to it): an import settles its skips once.
    settles_all_at_once: bool

    @property
    def loop_safe_reads(self) -> bool:
        """True if a read can be run on an event loop (``castore serve``).

        It does no network I/O, and whatever may make it wait (a lock, a
        whole-file read) raises :class:`castore.waits.WouldWait` inside
        :func:`castore.waits.no_waiting` (docs/SERVER.md); others run in
        worker threads.
        """

    def current(self, ref: Ref) -> Current:
        """Newest entry of ``ref`` and its value."""

    def write(self, ref: Ref, decide: Decide) -> tuple[Entry | None, list[Entry]]:
        """Run ``decide`` atomically for ``ref``; append what it returns.

        Only a write that appends something may create the store.

        Returns:
            The newest entry before, and the appended entries (empty: nothing written).
        """

    def replace(self, ref: Ref, new_versions: list[NewVersion], seen: Entry | None) -> list[Entry]:
        """Replace ``ref``'s whole history (an import's overwrite); :func:`overwrite_refusal`.

        ``seen``: the newest entry the import's validating pass read; if the newest
        entry is another one now, nothing is replaced (:func:`changed_since`).
        """

    def check_history_size(self, ref: Ref, new_versions: list[NewVersion]) -> None:
        """Refuse a history this backend cannot take in one write (an import's key).

        Raises:
            InvalidValueError: ``new_versions`` exceed what one write carries.
        """

    def exists(self, ref: Ref) -> bool:
        """True if ``ref`` has any stored record (even a tombstone)."""

    def keys(self, scope: str, namespace: str, prefix: str, *, verify: bool = False) -> list[str]:
        """Keys ever created in a namespace starting with ``prefix``, byte-wise sorted."""

    def namespaces(self, scope: str) -> list[str]:
        """Namespaces of ``scope`` that hold at least one key, byte-wise sorted."""

    def removed(self, scope: str, namespace: str | None = None) -> list[tuple[str, str, int]]:
        """(namespace, key, last version) of each key of ``scope`` compaction removed.

        Of ``namespace`` only when given (without looking at the others). A key
        created again since is listed too (its new versions go on above).
        """

    def listing(self, scope: str, namespace: str, prefix: str) -> Mapping[str, ListEntry | None]:
        """What the backend knows of keys' newest versions without reading each one.

        A live key maps to its list entry, a deleted one to None; a key that
        is absent must be read with :meth:`current`. Look keys up only; keys
        outside ``prefix`` may be left out.
        """

    def remember(self, scope: str, namespace: str, keys: list[str]) -> None:
        """A hint: ``list`` had to read ``keys`` one by one (the backend may index them)."""

    def version(self, ref: Ref, version: int) -> tuple[Entry | None, bytes | None]:
        """The entry of ``version`` and its value; (None, None) if it never existed."""

    def history(self, ref: Ref, before: int, limit: int) -> list[Entry]:
        """Entries below version ``before``, newest first, at most ``limit`` (0 = all)."""

    def iter_versions(self, ref: Ref) -> Iterator[tuple[Entry, bytes | None]]:
        """Every entry, oldest first, with its verified value (None: tombstone or lost)."""

    def check(self, *, repair: bool, progress: Progress | None) -> CheckReport:
        """Verify every stored record; with ``repair``, fix what can be fixed."""

    def collect_garbage(
        self, *, grace_seconds: float, dry_run: bool, progress: Progress | None
    ) -> GCReport:
        """Free stored values no version references (never one a writer may be using)."""

    def compact(
        self, retention: Retention, *, dry_run: bool, progress: Progress | None
    ) -> CompactReport:
        """Drop the versions ``retention`` does not keep; versions never repeat afterwards."""

    def stats(self) -> StoreStats:
        """Counts of keys, versions, values and bytes per scope."""

    def close(self) -> None:
        """Drop cached state (must not race with other calls)."""


def _kind(op: str) -> str:
    """What an entry of ``op`` leaves: a tombstone, a lost range, or a value."""
    return op if op in (OP_DELETE, OP_DAMAGED) else "value"


def overwrite_refusal(
    ref: Ref, newest: Entry | None, new_versions: list[NewVersion]
) -> ConflictError | None:
    """Why an import may not replace a history whose newest entry is ``newest``, or None.

    Versions never repeat: the import's newest version must be above the stored
    newest, or be that very version with the same value (a re-import), so that no
    compare-and-swap expecting the stored version passes against another value.
    """
    if newest is None or not new_versions:
        return None
    top = new_versions[-1]
    if top.version > newest.version:
        return None
    if top.version < newest.version:
        why = "is below it"
    elif top.digest_hex == newest.hash and _kind(top.op) == _kind(newest.op):
        return None
    else:
        why = "is the stored one, with another value"
    return ConflictError(
        str(ref), None, newest.version, f"the import's newest version {top.version} {why}"
    )


def changed_since(ref: Ref, newest: Entry | None, seen: Entry | None) -> ConflictError | None:
    """An overwrite's refusal when ``ref``'s newest entry is no longer ``seen``, or None.

    An import checks every key in its first pass and writes in its second: a write that
    came in between must not be erased by the import (docs/CLI.md, import).
    """
    if seen is None or _identity(newest) == _identity(seen):
        return None
    return ConflictError(
        str(ref),
        seen.version,
        newest.version if newest is not None else 0,
        "changed since the import checked it (a write between its two passes); nothing replaced",
    )


def _identity(entry: Entry | None) -> tuple[int, str, int, str] | None:
    return (entry.version, entry.op, entry.time_ns, entry.hash) if entry is not None else None


_MAX_TIME_NS = (1 << 63) - 1  # a time every backend stores (a bigint); an import may reach it
MAX_VERSION: Final = (1 << 63) - 1  # likewise a version: a key reaching it takes no more writes


def next_entry(
    ref: Ref,
    new: NewVersion,
    previous: Entry | None,
    base: int,
    now: int,
    blob: BlobLoc | None = None,
) -> Entry:
    """The entry ``new`` becomes after ``previous`` (``base``: the floor of a new key).

    Every backend numbers and stamps versions by this one rule: the next
    version (or an import's explicit one, never a repeat), a time never before
    the previous version's, ``created_ns`` carried while the key stays live.
    ``blob`` is the file backend's location hint (None elsewhere).

    Raises:
        ConflictError: an import's explicit version would repeat a version, or the key
            holds the highest version there is (2**63-1): no version can follow it.
    """
    floor = previous.version if previous is not None else base
    if new.version and new.version <= floor:
        raise ConflictError(str(ref), None, floor, f"version {new.version} would repeat a version")
    if not new.version and floor >= MAX_VERSION:
        raise ConflictError(str(ref), None, floor, "the highest version there is: none can follow")
    # Times never decrease within a ref, even if the wall clock steps back,
    # so history and audit order by time equals version order.
    not_before = min(previous.time_ns + 1, _MAX_TIME_NS) if previous is not None else 1
    stamp = new.time_ns or max(stored_time(now), not_before)
    created = 0
    if new.op == OP_DAMAGED:
        created = new.created_ns  # as recorded (an import of a lost version)
    elif new.op != OP_DELETE:
        live_before = previous is not None and previous.live
        created = new.created_ns or (previous.created_ns if previous and live_before else stamp)
    return Entry(
        version=new.version or floor + 1,
        op=new.op,
        time_ns=stamp,
        hash=new.digest_hex,
        size=len(new.normalized) if new.normalized is not None else 0,
        blob=blob,
        created_ns=created,
        audit=new.audit,
        damaged_from=new.damaged_from,
    )


class NothingView:
    """The view of a ref where there is no store yet: no entry, no value."""

    def value(self) -> bytes | None:
        """None: there is no entry."""
        return None

    def entry_at(self, version: int) -> Entry | None:
        """None: there is no entry."""
        return None

    def value_at(self, entry: Entry) -> bytes | None:
        """None: there is no entry."""
        return None

    def absolute(self, loc: BlobLoc) -> BlobLoc:
        """``loc`` itself."""
        return loc


def stored_time(now: int) -> int:
    """The clock's ``now`` as a time every backend stores and reads: 1 to 2**63-1.

    A clock at or before 1970, or past 2262, never stamps a time that readers
    refuse as damage (``records.decode_entry``, a PostgreSQL row's bigint).
    """
    return min(max(now, 1), _MAX_TIME_NS)


def lost_marker(first: int, last: int, now: int, reason: str) -> Entry:
    """The ``OP_DAMAGED`` entry recording versions ``first``..``last`` as lost."""
    return Entry(
        version=last,
        op=OP_DAMAGED,
        time_ns=stored_time(now),
        damaged_from=first if first < last else 0,
        audit=Audit(actor="castore check --repair", reason=reason),
    )


LOST_HINT: Final = (  # what a reader of a lost version can do next
    "castore history lists the versions kept; a set, or a rollback to one of them, "
    "writes a newer one"
)


def lost_error(ref: Ref, entry: Entry) -> CorruptionError:
    """The error a read of a ``damaged`` entry raises: its versions were lost (a repair said so)."""
    lost = (
        f"versions {entry.first}-{entry.version}"
        if entry.damaged_from
        else f"version {entry.version}"
    )
    why = entry.audit.reason or "recorded as lost (no reason given)"  # e.g. an imported line
    return CorruptionError(f"{ref} {lost} lost: {why}; {LOST_HINT}")
