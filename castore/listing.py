"""``Store.list``: the live keys of one namespace, over the backend contract."""

from __future__ import annotations

from collections.abc import Mapping

from castore import codec
from castore.backend import Backend, Current
from castore.errors import CorruptionError, RecordError
from castore.keys import Ref
from castore.results import ListEntry, ListResult, rfc3339

__all__ = ["list_live"]


def _entry(
    scope: str, ns: str, key: str, current: Current, include_values: bool
) -> ListEntry | None:
    """The list entry of a key whose newest record is ``current``; None if it is not live."""
    entry = current.live
    if entry is None:
        return None
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


def _ghost(
    backend: Backend, where: tuple[str, str, str], rest: list[str], known: Mapping[str, object]
) -> bool:
    """Whether a key the index names past a limited list's cut has no record.

    A damaged line of the index may name a key that never was in place of
    one that is (FORMAT.md §5): past the cut, it would hide that key from
    the list. ``known`` (what :meth:`Backend.listing` answered) vouches for
    the keys it holds; each other is looked up (for a directory, a ``stat``)
    and remembered, so that the next list finds it known.
    """
    scope, ns, prefix = where  # the list's
    if rest and not known:
        known = backend.listing(scope, ns, prefix)
    looked: list[str] = []
    for key in rest:
        if key not in known:
            try:
                if not backend.exists(Ref(scope, ns, key)):
                    return True
            except (CorruptionError, RecordError):
                continue  # a lost log: its key was real (a read of it says why)
            looked.append(key)
    if looked:
        backend.remember(scope, ns, looked)
    return False


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
        before = len(entries)  # this round's live keys count: its candidates ascend
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
                hit = _entry(scope, ns, key, current, include_values)
            if hit is not None:
                entries.append(hit)
                if limit and len(entries) - before >= limit:  # the keys past the cut, round 1:
                    cut = candidates.index(key) + 1  # once: no counter in the loop (list all)
                    rest = candidates[cut:] if rounds == 1 and not inconsistent else []
                    inconsistent |= _ghost(backend, (scope, ns, prefix), rest, known)
                    break
        if not inconsistent:
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
