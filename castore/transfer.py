"""Export a store's full history as JSON lines, and import it back (docs/CLI.md, export).

Format ``castore-export`` version 1 (one JSON object per line, UTF-8):

* line 1: ``{"format":"castore-export","version":1}``;
* then one line per version, refs in byte-wise (scope, namespace, key)
  order and each ref's versions oldest first: ``scope``, ``namespace``, ``key``,
  ``version``, ``op`` (``set``/``delete``/``rollback``/``damaged``),
  ``time_ns``, ``created_ns``, ``hash``, ``audit`` (the audit record, empty
  fields omitted), ``value`` (the normalized JSON, absent for deletes and
  damaged entries) and ``damaged_from`` (a damaged entry's lowest version).

Exporting, importing into an empty store and exporting again gives the same
bytes: versions, hashes, times and audit records are reproduced exactly.
Both directions stream: memory holds one ref's versions at a time.

Input is bounded: a line may hold at most :data:`MAX_RECORD_BYTES` (its newline
not counted). :func:`read_lines` refuses a longer line after reading one byte
past the limit, so a hostile file costs at most one line of memory, never
the whole line; :func:`import_lines` refuses such a line from any reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import IO, Annotated, Final, Literal

import msgspec

from castore import codec
from castore.backend import Decide, LogView, NewVersion
from castore.errors import ConflictError, InvalidValueError, NotFoundError
from castore.keys import (
    SCOPES,
    Ref,
    validate_filters,
    validate_key,
    validate_namespace,
    validate_scope,
)
from castore.records import OP_DAMAGED, OP_DELETE, OP_ROLLBACK, OP_SET, Audit, Entry
from castore.store import Store

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MAX_RECORD_BYTES",
    "ExportHeader",
    "ExportRecord",
    "ImportReport",
    "OnConflict",
    "export_lines",
    "import_lines",
    "read_lines",
]

EXPORT_FORMAT = "castore-export"
EXPORT_VERSION = 1
# One export line: the value is embedded as its normalized JSON, unescaped, so it
# takes at most MAX_VALUE_BYTES; the same again covers the rest (scope, namespace
# and key of at most 4 KiB each, 6x when JSON-escaped, and free-text audit fields),
# and 64 KiB the fixed fields. 2 MiB + 64 KiB = 2,162,688 bytes.
MAX_RECORD_BYTES: Final = 2 * codec.MAX_VALUE_BYTES + (64 << 10)
OnConflict = Literal["refuse", "skip", "overwrite"]
_NO_VALUE = msgspec.Raw(b"")
# A version, a time or a pid: what every backend stores (PostgreSQL's bigint, msgpack's int).
_Count = Annotated[
    int, msgspec.Meta(ge=0, le=(1 << 63) - 1)
]  # the default of ExportRecord.value: omitted when encoding


class ExportHeader(msgspec.Struct, frozen=True, kw_only=True):
    """First line of an export."""

    format: str
    version: int


class ExportRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One version of one ref in an export."""

    scope: str
    namespace: str
    key: str
    version: _Count
    op: str
    time_ns: _Count
    created_ns: _Count = 0
    hash: str = ""
    audit: Audit = Audit()
    value: msgspec.Raw = _NO_VALUE  # a delete or a damaged entry carries no value
    damaged_from: _Count = 0  # a ``damaged`` entry: the versions damaged_from..version were lost


class ImportReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What an import did: counts of refs and versions written, refs skipped."""

    refs: int
    versions: int
    skipped_refs: list[str]
    overwritten_refs: list[str]


_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(ExportHeader)
_record_decoder = msgspec.json.Decoder(ExportRecord)


def _refs(store: Store, scope: str | None, namespace: str | None) -> Iterator[Ref]:
    for sc in [scope] if scope else sorted(SCOPES):
        names = store.backend.namespaces(sc)
        for ns in names if namespace is None else [n for n in names if n == namespace]:
            for key in store.backend.keys(sc, ns, ""):
                yield Ref(sc, ns, key)


def export_lines(
    store: Store, *, scope: str | None = None, namespace: str | None = None
) -> Iterator[bytes]:
    """Yield the export, one line (with its newline) at a time.

    Raises:
        InvalidRefError: bad scope or namespace filter.
        CorruptionError: a stored value fails verification.
    """
    validate_filters(scope, namespace)
    yield _encoder.encode(ExportHeader(format=EXPORT_FORMAT, version=EXPORT_VERSION)) + b"\n"
    for ref in _refs(store, scope, namespace):
        for entry, value in store.backend.iter_versions(ref):
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
                value=_NO_VALUE if value is None else msgspec.Raw(value),
                damaged_from=entry.damaged_from,
            )
            yield _encoder.encode(record) + b"\n"


def _exported(audit: Audit) -> Audit:
    """An audit record as exported: without the request id of a write through ``castore serve``.

    The id only recognizes a retried write in its own store; an import writes its
    own, so export, import, export stays byte-identical on every backend.
    """
    return msgspec.structs.replace(audit, request_id="") if audit.request_id else audit


def _too_long(number: int) -> InvalidValueError:
    return InvalidValueError(
        f"line {number}: longer than {MAX_RECORD_BYTES} bytes, the limit of one export line"
    )


def read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the lines of a binary stream, each with its newline, in bounded memory.

    At most ``MAX_RECORD_BYTES + 1`` bytes of one line are ever held: a longer
    line is refused as soon as its first byte past the limit is read, and the
    rest of it is never read.

    Raises:
        InvalidValueError: a line holds more than :data:`MAX_RECORD_BYTES` bytes,
            its newline not counted (the message names the line and the limit).
    """
    number = 0
    while line := stream.readline(MAX_RECORD_BYTES + 1):
        number += 1
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            raise _too_long(number)
        yield line


def _numbered(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Number lines from 1, refusing one over the limit from whatever reader gave it."""
    for number, line in enumerate(lines, start=1):
        if len(line) - (1 if line.endswith(b"\n") else 0) > MAX_RECORD_BYTES:
            raise _too_long(number)
        yield number, line


def _parse(lines: Iterable[bytes]) -> Iterator[tuple[Ref, list[NewVersion]]]:
    """Validate an export and yield each ref's versions as new versions."""
    it = _numbered(lines)
    try:
        header = _header_decoder.decode(next(it)[1])
    except (StopIteration, msgspec.DecodeError) as exc:
        raise InvalidValueError(f"line 1: not a castore export header ({exc})") from None
    if header.format != EXPORT_FORMAT or header.version != EXPORT_VERSION:
        raise InvalidValueError(
            f"line 1: export {header.format} version {header.version} is not supported"
        )
    current: Ref | None = None
    new_versions: list[NewVersion] = []
    seen: set[Ref] = set()
    for number, line in it:
        if not line.strip():
            continue
        try:
            rec = _record_decoder.decode(line)
            ref = Ref(validate_scope(rec.scope), validate_namespace(rec.namespace), rec.key)
            validate_key(rec.key)
        except (msgspec.DecodeError, ValueError) as exc:
            raise InvalidValueError(f"line {number}: {exc}") from None
        if ref != current:
            if current is not None:
                yield current, new_versions
            if ref in seen:
                raise InvalidValueError(f"line {number}: versions of {ref} are not contiguous")
            seen.add(ref)
            current, new_versions = ref, []
        if new_versions and rec.time_ns < new_versions[-1].time_ns:
            raise InvalidValueError(f"line {number}: time_ns goes back within {ref}")
        new_versions.append(
            _new_version(rec, number, new_versions[-1].version if new_versions else 0)
        )
    if current is not None:
        yield current, new_versions


def _new_version(rec: ExportRecord, number: int, last_version: int) -> NewVersion:
    if not (0 <= rec.audit.pid < 1 << 63 and 0 <= rec.audit.rollback_from < 1 << 63):
        raise InvalidValueError(f"line {number}: audit pid or rollback_from out of range")
    if rec.version <= last_version:
        raise InvalidValueError(f"line {number}: version {rec.version} after {last_version}")
    if rec.op not in (OP_SET, OP_DELETE, OP_ROLLBACK, OP_DAMAGED):
        raise InvalidValueError(f"line {number}: unknown op {rec.op!r}")
    if rec.op == OP_DAMAGED:  # versions a repair recorded as lost: kept as lost
        if len(rec.value) or rec.damaged_from > rec.version or rec.damaged_from < 0:
            raise InvalidValueError(f"line {number}: a damaged entry carries no value")
        if rec.damaged_from and rec.damaged_from <= last_version:
            raise InvalidValueError(f"line {number}: damaged range overlaps version {last_version}")
        return NewVersion(
            OP_DAMAGED,
            None,
            rec.hash,
            rec.audit,
            None,
            rec.version,
            rec.time_ns,
            rec.created_ns,
            rec.damaged_from,
        )
    if rec.op == OP_DELETE:
        if len(rec.value) or rec.hash:
            raise InvalidValueError(f"line {number}: a delete carries no value")
        return NewVersion(OP_DELETE, None, "", rec.audit, None, rec.version, rec.time_ns, 0)
    if not len(rec.value):
        raise InvalidValueError(f"line {number}: {rec.op} without a value")
    try:
        normalized = codec.normalize_json(bytes(rec.value))
    except InvalidValueError as exc:
        raise InvalidValueError(f"line {number}: {exc.detail}") from None
    digest = codec.hexdigest(normalized)
    if digest != rec.hash:
        raise InvalidValueError(f"line {number}: value hashes to {digest}, line says {rec.hash}")
    return NewVersion(
        rec.op, normalized, digest, rec.audit, None, rec.version, rec.time_ns, rec.created_ns
    )


def _only_if_empty(new_versions: list[NewVersion]) -> Decide:
    def decide(previous: Entry | None, _view: LogView) -> list[NewVersion] | None:
        return new_versions if previous is None else None

    return decide


def _refusal(
    store: Store,
    ref: Ref,
    existing: Entry | None,
    new_versions: list[NewVersion],
    on_conflict: OnConflict,
) -> ConflictError | None:
    """Why the writing pass would refuse ``ref``'s versions (versions never repeat), or None.

    ``overwrite`` may not take a key's versions back; a key that compaction
    removed may not start again at a version its removed life used (the
    backend answers ``NotFoundError``, "was compacted", for such a version).
    """
    first, top = new_versions[0].version, new_versions[-1].version
    if existing is not None:
        if on_conflict == "overwrite" and top < existing.version:
            return ConflictError(
                str(ref), None, existing.version, f"the import's newest version {top} is below it"
            )
        return None
    try:
        store.backend.version(ref, first)
    except NotFoundError:
        return ConflictError(
            str(ref),
            None,
            0,
            f"compaction removed this key after it had a version {first}, "
            "the import's first: its versions would repeat",
        )
    return None


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
    changes nothing; have it yield :func:`read_lines` of a file to keep memory
    bounded. A ref that already has history in the store is a conflict:
    ``refuse`` (default) fails before writing anything, ``skip`` leaves it as
    it is, ``overwrite`` replaces its history with the imported one.

    Raises:
        InvalidValueError: a malformed or over-long line (the message names it).
        ConflictError: ``refuse`` and some refs already exist.
    """
    conflicts: dict[Ref, int] = {}
    refused: list[ConflictError] = []
    for ref, new_versions in _parse(read()):
        existing = store.backend.current(ref).entry
        if existing is not None:
            conflicts[ref] = existing.version
        refusal = _refusal(store, ref, existing, new_versions, on_conflict)
        if refusal is not None:
            refused.append(refusal)
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
    clash = set(conflicts)
    refs = versions = 0
    skipped: list[str] = []
    overwritten: list[str] = []
    for ref, new_versions in _parse(read()):
        if ref in clash and on_conflict == "skip":
            skipped.append(str(ref))
            continue
        if ref in clash:
            store.backend.replace(ref, new_versions)
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
    return ImportReport(
        refs=refs, versions=versions, skipped_refs=skipped, overwritten_refs=overwritten
    )
