"""``Store.list``: the live keys of one namespace, over the backend contract."""

from __future__ import annotations

from collections.abc import Mapping

from castore import codec
from castore.backend import Backend, Current
from castore.errors import CorruptionError, RecordError
from castore.keys import Ref
from castore.records import Entry
from castore.results import ListEntry, ListResult, rfc3339

__all__ = ["list_live"]


def _entry(
    scope: str, ns: str, key: str, entry: Entry, current: Current, include_values: bool
) -> ListEntry:
    return ListEntry(
        scope=scope,
        namespace=ns,
        key=key,
        version=entry.version,
        hash=entry.hash,
        created_at=rfc3339(entry.created_ns),
        updated_at=rfc3339(entry.time_ns),
        value=codec.result_value(current.value, Ref(scope, ns, key), entry.version)
        if include_values and current.value is not None
        else None,
        value_json=current.value if include_values else None,
    )


def list_live(
    backend: Backend, scope: str, ns: str, prefix: str, limit: int, include_values: bool
) -> ListResult:
    """Live keys of a namespace starting with ``prefix`` (validated), byte-wise sorted.

    Without values, what the backend knows of each key's newest version
    (:meth:`Backend.listing`) answers; the other keys are read one by one
    and then remembered. A key whose newest record cannot be read is named
    in ``skipped`` (with ``include_values`` the list fails instead). A key
    the key index names without an entry makes the list read the keys the
    logs name, once, so damage to the index never hides a key.

    Raises:
        CorruptionError: ``include_values`` and a key's newest value is unreadable.
    """
    known: Mapping[str, ListEntry | None] = {}
    known = known if include_values else backend.listing(scope, ns, prefix)
    entries: list[ListEntry] = []
    skipped: list[str] = []
    unknown: list[str] = []
    candidates = backend.keys(scope, ns, prefix)
    done: set[str] = set()
    rounds = 0
    while candidates:
        rounds += 1
        inconsistent = False
        for key in candidates:
            if key in known:
                hit = known[key]
            else:
                unknown.append(key)
                try:
                    current = backend.current(Ref(scope, ns, key))
                except (CorruptionError, RecordError):
                    if include_values:
                        raise  # a value cannot be listed: never a partial answer
                    skipped.append(key)
                    continue
                inconsistent |= current.entry is None  # the index names a key with no entry
                entry = current.live
                hit = (
                    None
                    if entry is None
                    else _entry(scope, ns, key, entry, current, include_values)
                )
            if hit is not None:
                entries.append(hit)
                if limit and len(entries) >= limit:
                    break
        if not inconsistent or (limit and len(entries) >= limit):
            break
        done.update(candidates)
        candidates = [k for k in backend.keys(scope, ns, prefix, verify=True) if k not in done]
    if rounds > 1:
        entries.sort(key=lambda e: e.key.encode("utf-8"))
    if limit:
        del entries[limit:]
    if unknown and not include_values:
        backend.remember(scope, ns, unknown)
    return ListResult(scope=scope, namespace=ns, prefix=prefix, entries=entries, skipped=skipped)
