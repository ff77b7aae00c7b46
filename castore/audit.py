"""Audit query across keys: every write and delete that matches, newest first, streamed.

Each ref log is read backwards a page at a time; a heap merges the refs by
time, holding one pending entry per ref (never the whole store). Filters
on scope and namespace choose which logs are opened at all; ``since`` stops a
ref's walk at the first older entry.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import msgspec

from castore.argcheck import check_integer, check_text
from castore.errors import InvalidRefError, InvalidValueError
from castore.history import history_entry
from castore.keys import SCOPES, Ref, go_quote, resolve_namespace, validate_filters
from castore.records import Entry
from castore.results import PlainResult
from castore.store import Store, check_store

__all__ = ["AuditRecord", "audit", "dag_filter"]


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


def _record(ref: Ref, entry: Entry) -> AuditRecord:
    fields = msgspec.structs.asdict(history_entry(entry))
    return AuditRecord(
        scope=ref.scope, namespace=ref.namespace, key=ref.key, time_ns=entry.time_ns, **fields
    )


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
    """:func:`audit`'s records, its arguments checked."""
    walks: list[tuple[int, int, Ref, Entry, Iterator[Entry]]] = []
    order = 0

    def push(ref: Ref, it: Iterator[Entry]) -> None:
        nonlocal order
        for entry in it:
            if since_ns is not None and entry.time_ns < since_ns:
                return  # older entries of this ref are older still
            order += 1
            heapq.heappush(walks, (-entry.time_ns, order, ref, entry, it))
            return

    for sc in [scope] if scope else sorted(SCOPES):
        for ns in store.backend.namespaces(sc):
            if namespace is not None and ns != namespace:
                continue
            for key in store.backend.keys(sc, ns, "", verify=True):  # KEYS may be damaged
                ref = Ref(sc, ns, key)
                push(ref, store.backend.iter_newest_first(ref))
    while walks:
        _, _, ref, entry, it = heapq.heappop(walks)
        push(ref, it)
        if until_ns is not None and entry.time_ns > until_ns:
            continue
        if not _matches(entry, *wanted):
            continue
        yield _record(ref, entry)
