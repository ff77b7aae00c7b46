"""Export a store's full history as JSON lines, and import it back (docs/CLI.md, export).

The format, and reading it in bounded memory, is :mod:`castore.exportfile`.
Exporting, importing into an empty store and exporting again gives the same
bytes: versions, hashes, times and audit records are reproduced exactly.
Both directions stream: memory holds one ref's versions at a time. An
import validates every line and finds every refusal before it writes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import msgspec

from castore import codec
from castore.argcheck import check_callable
from castore.backend import MAX_VERSION, Decide, LogView, NewVersion, overwrite_refusal
from castore.decisions import as_it_is
from castore.errors import ConflictError, CorruptionError, InvalidValueError
from castore.exportfile import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MAX_RECORD_BYTES,
    NO_VALUE,
    REMOVED_REASON,
    ExportEnd,
    ExportHeader,
    ExportRecord,
    ImportReport,
    OnConflict,
    parse_export,
    read_lines,
)
from castore.identity import out_of_range
from castore.keys import SCOPES, Ref, validate_filters
from castore.records import OP_DAMAGED, OP_DELETE, Audit, Entry
from castore.store import Store, check_store

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MAX_RECORD_BYTES",
    "REMOVED_REASON",
    "ExportEnd",
    "ExportHeader",
    "ExportRecord",
    "ImportReport",
    "OnConflict",
    "export_lines",
    "import_lines",
    "read_lines",
]

_encoder = msgspec.json.Encoder()


def _line(record: msgspec.Struct) -> bytes:
    """One export line: U+2028 and U+2029 escaped, so that it stays one line for any reader."""
    return codec.line_separators_escaped(_encoder.encode(record)) + b"\n"


def _refs(
    store: Store, scope: str | None, namespace: str | None
) -> Iterator[tuple[Ref, int, bool]]:
    """Every ref in export order: the last version of a removed key (or 0), and if listed.

    A removed key may be listed again with no entry (a write killed between its
    ``KEYS`` line and its append, FORMAT.md §5): its removal is exported then too.
    """
    for sc in [scope] if scope else sorted(SCOPES):
        removed: dict[str, dict[str, int]] = {}
        for ns, key, top in store.backend.removed(sc, namespace):
            removed.setdefault(ns, {})[key] = top
        listed = store.backend.namespaces(sc) if namespace is None else [namespace]
        for ns in sorted({*listed, *removed}, key=str.encode):
            # verify: the logs' headers too (export reads every log anyway), so that damage
            # to KEYS never leaves a key out of a backup
            keys = dict.fromkeys(store.backend.keys(sc, ns, "", verify=True), 0)
            gone = removed.get(ns, {})
            for key in sorted({**keys, **gone}, key=str.encode):
                yield Ref(sc, ns, key), gone.get(key, 0), key in keys


def _removed_record(ref: Ref, version: int) -> ExportRecord:
    """A key compaction removed, as the tombstone it ended with (its time is not kept)."""
    return ExportRecord(
        scope=ref.scope,
        namespace=ref.namespace,
        key=ref.key,
        version=version,
        op=OP_DELETE,
        time_ns=1,  # not 0, which an import reads as "now"
        audit=Audit(reason=REMOVED_REASON),
    )


def export_lines(
    store: Store, *, scope: str | None = None, namespace: str | None = None
) -> Iterator[bytes]:
    """Yield the export, one line (with its newline) at a time.

    The arguments are checked when it is called, before the first line is asked for.

    Raises:
        TypeError: ``store`` is not a Store, or a filter not a str (or None).
        InvalidRefError: bad scope or namespace filter.
        CorruptionError: a stored value fails verification (while iterating).
    """
    check_store(store)
    validate_filters(scope, namespace)
    return _lines(store, scope, namespace)


def _lines(store: Store, scope: str | None, namespace: str | None) -> Iterator[bytes]:
    """:func:`export_lines`' lines, its arguments checked."""
    refs = _refs(store, scope, namespace)
    first = next(refs, None)  # the store answers before the first line: nothing if it cannot
    yield _line(ExportHeader(format=EXPORT_FORMAT, version=EXPORT_VERSION))
    count = 0
    for ref, removed, listed in itertools.chain([first] if first else [], refs):
        if removed and not listed:  # an import puts its tombstone back: versions go on above
            count += 1
            yield _line(_removed_record(ref, removed))
            continue
        before = count
        for entry, value in store.backend.iter_versions(ref):
            _importable(ref, entry)
            if value is not None:  # never a line an import refuses, nor a partial document
                codec.check_stored(value, ref, entry.version)
            record = ExportRecord(
                scope=ref.scope,
                namespace=ref.namespace,
                key=ref.key,
                version=entry.version,
                op=entry.op,
                time_ns=entry.time_ns,
                created_ns=entry.created_ns,
                hash=entry.hash,
                audit=_exported(entry.audit),
                value=NO_VALUE if value is None else msgspec.Raw(value),
                damaged_from=entry.damaged_from,
            )
            count += 1
            yield _line(record)
        if removed and count == before:  # listed again, not written again
            count += 1
            yield _line(_removed_record(ref, removed))
    yield _line(ExportEnd(end=EXPORT_FORMAT, versions=count))  # complete


def _importable(ref: Ref, entry: Entry) -> None:
    """Refuse to export an audit record no castore wrote (a row edited by hand).

    Raises:
        CorruptionError: naming the version; ``check`` reports it too.
    """
    if (problem := out_of_range(entry.audit)) is not None:
        raise CorruptionError(f"{ref} version {entry.version}: {problem}")


def _exported(audit: Audit) -> Audit:
    """An audit record as exported: without the request id of a write through ``castore serve``.

    The id only recognizes a retried write in its own store; an import writes its
    own, so export, import, export stays byte-identical on every backend.
    """
    return msgspec.structs.replace(audit, request_id="") if audit.request_id else audit


def _only_if_empty(new_versions: list[NewVersion]) -> Decide:
    def decide(previous: Entry | None, _view: LogView) -> list[NewVersion] | None:
        return new_versions if previous is None else None

    return decide


def _skipped(store: Store, ref: Ref) -> Ref | None:
    """Settle a key a durable import skips (FORMAT.md §6 step 3), or return it to settle last.

    On a backend that ``settles_all_at_once`` (PostgreSQL) one settle at the import's end
    makes every skipped key durable; elsewhere each is settled now.
    """
    if store.backend.settles_all_at_once:
        return ref
    store.backend.write(ref, as_it_is)
    return None


def _refusal(
    ref: Ref,
    existing: Entry | None,
    new_versions: list[NewVersion],
    on_conflict: OnConflict,
    grave: int,
) -> ConflictError | None:
    """Why the writing pass would refuse ``ref``'s versions (versions never repeat), or None.

    ``overwrite`` may not take a key's versions back, and no import may start
    a key again at a version that a life compaction removed used (``grave``:
    its last version, :meth:`Backend.removed`).
    """
    first = new_versions[0].version
    if on_conflict == "overwrite" and (why := overwrite_refusal(ref, existing, new_versions)):
        return why
    if (existing is None or on_conflict == "overwrite") and first <= grave:
        return ConflictError(
            str(ref),
            None,
            0,
            f"compaction removed this key at version {grave}, and the import starts at "
            f"version {first}: its versions would repeat",
        )
    return None


def _removed_alike(new_versions: list[NewVersion], grave: int) -> bool:
    """True for a removed key's export line (:func:`_removed_record`) of this very life."""
    return (
        len(new_versions) == 1
        and new_versions[0].op == OP_DELETE
        and grave == (new_versions[0].version)
    )


def _newest(store: Store, ref: Ref) -> Entry | None:
    """The newest entry of ``ref``, a repair's record of lost versions included.

    Raises:
        CorruptionError: damage hides the newest entry.
    """
    try:
        return store.backend.current(ref).entry
    except CorruptionError:  # its value is unreadable: is its entry a lost range?
        page = store.backend.history(ref, MAX_VERSION + 1, 1)
        if not page or page[0].op != OP_DAMAGED:
            raise
        return page[0]  # a key with history, as any other (refused, skipped, overwritten)


def _validated(
    store: Store, read: Callable[[], Iterable[bytes]], on_conflict: OnConflict
) -> tuple[dict[Ref, Entry], set[Ref]]:
    """The validating pass: refs with history (their newest entry), removed keys as they are.

    Nothing is written. A removed key's line at its own last version (a store's
    own export) is a key with history: refused, or skipped by ``skip`` and
    ``overwrite`` (there is nothing to replace). So is, for ``skip``, any
    removed key whose import starts within its removed life (elsewhere refused:
    its versions would repeat).

    Raises:
        InvalidValueError: a malformed or over-long line.
        ConflictError: ``refuse`` and some refs exist, or a ref the writing pass
            would refuse (:func:`_refusal`).
    """
    conflicts: dict[Ref, int] = {}
    seen: dict[Ref, Entry] = {}
    alike: set[Ref] = set()
    refused: list[ConflictError] = []
    graves: dict[str, dict[tuple[str, str], int]] = {}
    for ref, new_versions in parse_export(read()):
        if ref.scope not in graves:
            graves[ref.scope] = {(n, k): v for n, k, v in store.backend.removed(ref.scope)}
        grave = graves[ref.scope].get((ref.namespace, ref.key), 0)
        existing = _newest(store, ref)
        removed_life = on_conflict == "skip" and new_versions[0].version <= grave
        if existing is None and (removed_life or _removed_alike(new_versions, grave)):
            conflicts[ref] = grave  # a key with history: its removed life's
            alike.add(ref)
            continue
        if existing is not None:
            conflicts[ref] = existing.version
            seen[ref] = existing
        refusal = _refusal(ref, existing, new_versions, on_conflict, grave)
        if refusal is not None:
            refused.append(refusal)
        elif existing is None or on_conflict == "overwrite":  # written by the second pass
            store.backend.check_history_size(ref, new_versions)
    if conflicts and on_conflict == "refuse":
        first = next(iter(conflicts))
        raise ConflictError(
            str(first),
            0,
            conflicts[first],
            f"{len(conflicts)} imported key(s) already exist; use skip or overwrite",
        )
    if refused:  # before anything is written: a refused key refuses the whole import
        why = refused[0]
        counted = f"{why.reason}; {len(refused)} key(s) refused, nothing imported"
        raise ConflictError(why.ref, why.expected, why.actual, counted)
    return seen, alike


_AGAIN_EMPTY: Final = (  # the first pass had lines: read() is not giving them again
    "read() gave no lines the second time: it must return a fresh iterable on each call "
    "(reopen the file or seek it back; read_lines does that for a seekable file)"
)


def import_lines(
    store: Store,
    read: Callable[[], Iterable[bytes]],
    *,
    on_conflict: OnConflict = "refuse",
    progress: Callable[[int], object] | None = None,
) -> ImportReport:
    """Import an export into ``store``, reproducing versions, hashes, times and audits.

    ``read`` is called twice (a validating pass, then the writing pass), so
    a bad line, a line over :data:`MAX_RECORD_BYTES` or a refused conflict
    changes nothing; it must give the same lines each time.
    ``lambda: read_lines(f)`` of a file does (and keeps memory bounded):
    :func:`read_lines` seeks the file back to where it started. A ref that
    already has history in the store is a conflict: ``refuse`` (default) fails
    before writing anything, ``skip`` leaves it as it is, ``overwrite``
    replaces its history with the imported one.

    Raises:
        TypeError: ``store`` is not a Store, ``read`` is not callable, or it gives
            lines that are not bytes (a file opened in text mode).
        InvalidValueError: a malformed or over-long line (the message names it), or
            ``read`` gave no lines the second time.
        ConflictError: ``refuse`` and some refs already exist.
    """
    check_store(store)
    check_callable(read, "read")  # not the lines themselves: read is called twice
    check_callable(progress, "progress", optional=True)
    if on_conflict not in ("refuse", "skip", "overwrite"):  # a typo must not overwrite
        raise InvalidValueError(
            f"on_conflict must be 'refuse', 'skip' or 'overwrite', not {on_conflict!r}"
        )
    clash, alike = _validated(store, read, on_conflict)
    refs = versions = 0
    skipped: list[str] = []
    overwritten: list[str] = []
    unsettled: Ref | None = None  # a skipped key whose settling settles every one before it
    for ref, new_versions in parse_export(read(), _AGAIN_EMPTY):
        if ref in alike or (ref in clash and on_conflict == "skip"):
            if ref in clash and store.durable:  # reported as it is: made durable as it is
                unsettled = _skipped(store, ref)
            skipped.append(str(ref))
            continue
        if ref in clash:  # refused if it changed since the first pass: nothing is erased
            store.backend.replace(ref, new_versions, clash[ref])
            overwritten.append(str(ref))
        else:
            _, written = store.backend.write(ref, _only_if_empty(new_versions))
            if not written:  # created concurrently since the first pass
                skipped.append(str(ref))
                continue
        refs += 1
        versions += len(new_versions)
        if progress is not None:
            progress(len(new_versions))
    if unsettled is not None:
        store.backend.write(unsettled, as_it_is)
    return ImportReport(
        refs=refs, versions=versions, skipped_refs=skipped, overwritten_refs=overwritten
    )
