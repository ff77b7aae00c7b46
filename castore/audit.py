"""Audit query across keys: every write and delete that matches, newest first, streamed.

Each ref log is read backwards a page at a time; a heap merges the refs by
time, holding one pending entry per ref, packed (:class:`_Merge`), and pages
of a bounded number of entries in all. Filters on scope and namespace choose which
logs are opened at all; ``since`` stops a ref's walk at the first older entry.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any, Final

import msgspec

from castore.argcheck import check_integer, check_text
from castore.backend import MAX_VERSION, Backend
from castore.errors import InvalidRefError, InvalidValueError
from castore.history import history_entry
from castore.keys import SCOPES, Ref, go_quote, resolve_namespace, validate_filters
from castore.records import Entry
from castore.results import HistoryEntry, PlainResult
from castore.store import Store, check_store

__all__ = ["ENTRIES_HELD", "PAGE_SIZES", "AuditRecord", "audit", "dag_filter"]

# The entries of one ref's history read at a time: its newest alone (many refs start
# side by side), then pages as its walk goes on.
PAGE_SIZES: Final = (1, 16, 256)
# Decoded entries the merge holds at most beyond each ref's next one, whatever the number
# of keys: a ref's read is at most ENTRIES_HELD // (refs whose walk goes on) entries.
ENTRIES_HELD: Final = 16384

_FIELDS: Final = HistoryEntry.__struct_fields__  # a pending record's, packed as an array
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(tuple[str | int, ...]).decode


class AuditRecord(PlainResult, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """One write or delete of one ref, with its audit fields (empty ones omitted)."""

    scope: str
    namespace: str
    key: str
    version: int
    operation: str
    hash: str = ""
    time: str
    time_ns: int
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
    damaged_from: int = 0


def dag_filter(
    scope: str | None, namespace: str | None, dag: str | None, root_dag: str | None
) -> tuple[str | None, str | None]:
    """The scope and namespace filters DAG names select, as the CLI's filters do.

    Without ``scope`` and ``namespace``, ``dag`` alone narrows to scope ``dag``
    and ``root_dag`` alone to ``root_dag``; with scope ``dag`` or ``root_dag``
    and no namespace, the namespace is the DAG names' (as ``get`` resolves it),
    or every one when none is given.

    Raises:
        InvalidRefError: ``dag`` and ``root_dag`` without a scope saying which narrows.
    """
    if scope is None and namespace is None and (dag or root_dag):
        if dag and root_dag:
            raise InvalidRefError("dag and root_dag: say which with scope dag or root_dag")
        scope = "dag" if dag else "root_dag"
    if namespace is not None or scope not in ("dag", "root_dag"):
        return scope, namespace
    if dag is None and (scope == "dag" or root_dag is None):
        return scope, None
    return scope, resolve_namespace(scope, None, dag=dag, root_dag=root_dag or dag)


def _matches(entry: Entry, run_id: str | None, actor: str | None, step: str | None) -> bool:
    """True if the entry's audit record has each of the values given (None: any)."""
    record = entry.audit
    return (
        (run_id is None or record.run_id == run_id)
        and (actor is None or record.actor == actor)
        and (step is None or record.step_name == step)
    )


def _check_utf8(text: str | None, name: str) -> None:
    """Refuse a filter no record can hold (a lone surrogate: bytes that are not UTF-8).

    Else it matched nothing, and an audit of a mis-encoded actor looked like one of an
    actor who wrote nothing (the CLI refuses such bytes everywhere else, exit 2).
    """
    if text is None or text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValueError(f"audit filter {name} {go_quote(text)}: not valid UTF-8") from None


def audit(
    store: Store,
    *,
    scope: str | None = None,
    namespace: str | None = None,
    run_id: str | None = None,
    actor: str | None = None,
    step: str | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> Iterator[AuditRecord]:
    """Yield matching writes and deletes of all refs, newest first.

    ``run_id``, ``actor`` and ``step`` keep only the records with exactly that
    value (None: any); ``since_ns`` and ``until_ns`` bound the write time
    (inclusive, Unix ns). The arguments are checked when it is called, before
    the first record is asked for.

    Raises:
        TypeError: ``store`` is not a Store, a filter not a str (or None), or a
            time not an int (or None).
        InvalidRefError: bad scope or namespace filter.
        InvalidValueError: a ``run_id``, ``actor`` or ``step`` that is not UTF-8 text.
        CorruptionError: a log record fails verification (while iterating).
    """
    check_store(store)
    validate_filters(scope, namespace)
    for text, name in ((run_id, "run_id"), (actor, "actor"), (step, "step")):
        check_text(text, name, optional=True)
        _check_utf8(text, name)
    check_integer(since_ns, "since_ns", optional=True)
    check_integer(until_ns, "until_ns", optional=True)
    return _records(store, scope, namespace, (run_id, actor, step), since_ns, until_ns)


def _records(
    store: Store,
    scope: str | None,
    namespace: str | None,
    wanted: tuple[str | None, str | None, str | None],
    since_ns: int | None,
    until_ns: int | None,
) -> Iterator[AuditRecord]:
    """:func:`audit`'s records, its arguments checked (the merge: :class:`_Merge`)."""
    merge = _Merge(store.backend, wanted, since_ns, until_ns)
    for sc in [scope] if scope else sorted(SCOPES):
        for ns in store.backend.namespaces(sc) if namespace is None else [namespace]:
            for key in store.backend.keys(sc, ns, "", verify=True):  # KEYS may be damaged
                merge.start(Ref(sc, ns, key))
    yield from merge.records()


class _Merge:
    """The refs' walks merged newest first, holding a packed record per ref, not its page.

    Each ref's history is read newest first in pages of :data:`PAGE_SIZES`
    entries (its first read is its newest entry alone). The heap holds, per
    ref, only its next entry, packed: the heap key (time, push order) and,
    for an entry the filters keep, its :class:`HistoryEntry`'s fields as a
    msgpack array (about 130 bytes, where the decoded entry took 1.7 KB).
    The rest of each page read is held until its entries are popped; a read
    takes at most :data:`ENTRIES_HELD` // ``live`` entries (the refs whose
    walk goes on), so the pages hold at most :data:`ENTRIES_HELD` entries in
    all (``live`` only falls once the walks started: a page read earlier,
    when it was higher, is smaller). A store of few keys reads in pages of
    256; one of 100,000 keys one entry at a time (docs/DESIGN.md, "Memory of
    store-wide commands").
    """

    def __init__(
        self,
        backend: Backend,
        wanted: tuple[str | None, str | None, str | None],
        since_ns: int | None,
        until_ns: int | None,
    ) -> None:
        self.backend, self.wanted = backend, wanted
        self.since_ns, self.until_ns = since_ns, until_ns
        self.refs: list[Ref] = []
        self.steps = bytearray()  # per ref: the index in PAGE_SIZES of its next read
        self.pages: dict[int, list[Entry]] = {}  # per ref: the rest of its page, oldest first
        self.heap: list[tuple[int, int, int, int, bytes | None]] = []
        self.order = 0
        self.live = 0  # refs whose walk goes on

    def start(self, ref: Ref) -> None:
        """Walk ``ref`` too: read its newest entry."""
        self.refs.append(ref)
        self.steps.append(0)
        self.live += 1
        self.advance(len(self.refs) - 1, MAX_VERSION + 1)

    def advance(self, idx: int, before: int) -> None:
        """Push ref ``idx``'s next entry, below version ``before`` (none: its walk ends)."""
        page = self.pages.pop(idx, None)
        if not page:
            step = self.steps[idx]
            size = min(PAGE_SIZES[step], max(1, ENTRIES_HELD // self.live))
            # version 1 was its oldest, or its walk ends here
            page = self.backend.history(self.refs[idx], before, size) if before > 1 else []
            self.steps[idx] = min(step + 1, len(PAGE_SIZES) - 1)
            if not page:
                self.live -= 1
                return
            page.reverse()
        entry = page.pop()
        if self.since_ns is not None and entry.time_ns < self.since_ns:
            self.live -= 1
            return  # older entries of this ref are older still
        if page:
            self.pages[idx] = page
        self.order += 1
        kept = (self.until_ns is None or entry.time_ns <= self.until_ns) and _matches(
            entry, *self.wanted
        )
        packed = _pack(msgspec.structs.astuple(history_entry(entry))) if kept else None
        heapq.heappush(self.heap, (-entry.time_ns, self.order, idx, entry.version, packed))

    def records(self) -> Iterator[AuditRecord]:
        """Pop the newest pending entry, push its ref's next; yield the kept ones."""
        heap = self.heap
        while heap:
            neg_time, _, idx, version, packed = heapq.heappop(heap)
            self.advance(idx, version)
            if packed is not None:
                ref = self.refs[idx]
                fields: dict[str, Any] = dict(zip(_FIELDS, _unpack(packed), strict=True))
                yield AuditRecord(
                    scope=ref.scope,
                    namespace=ref.namespace,
                    key=ref.key,
                    time_ns=-neg_time,
                    **fields,
                )
