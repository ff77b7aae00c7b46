"""The export file's format: its lines, bounded and validated (docs/CLI.md, export).

What :mod:`castore.transfer` writes and reads; nothing here touches a store.

Format ``castore-export`` version 2 (one JSON object per line, UTF-8):

* line 1: ``{"format":"castore-export","version":2}``;
* then one line per version, refs in byte-wise (scope, namespace, key)
  order and each ref's versions oldest first: ``scope``, ``namespace``, ``key``,
  ``version``, ``op`` (``set``/``delete``/``rollback``/``damaged``),
  ``time_ns``, ``created_ns``, ``hash``, ``audit`` (the audit record, empty
  fields omitted), ``value`` (the normalized JSON, absent for deletes and
  damaged entries) and ``damaged_from`` (a damaged entry's lowest version).
  A key that compaction removed is one ``delete`` line at its last version,
  ``time_ns`` 1, audit reason :data:`REMOVED_REASON`: imported, its versions go on
  above it, as they would in the store it came from;
* last, ``{"end":"castore-export","versions":N}``, N the number of version
  lines: an export that failed or was stopped part way has no end line, so
  its import is refused instead of restoring some keys and not others.
  Version 1 (exports before 2026-12-05) is the same without the end line,
  and is still read.

Exporting, importing into an empty store and exporting again gives the same
bytes: versions, hashes, times and audit records are reproduced exactly.
Both directions stream: memory holds one ref's versions at a time.

Input is bounded: a line may hold at most :data:`MAX_RECORD_BYTES` (its newline
not counted). :func:`read_lines` refuses a longer line after reading one byte
past the limit, so a hostile file costs at most one line of memory, never
the whole line; :func:`parse_export` refuses such a line from any reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, Annotated, ClassVar, Final, Literal

import blake3
import msgspec

from castore import codec
from castore.backend import NewVersion
from castore.errors import InvalidValueError
from castore.identity import check_audit
from castore.jsonparse import with_deep_members
from castore.keys import Ref, validate_key, validate_namespace, validate_scope
from castore.records import OP_DAMAGED, OP_DELETE, OP_ROLLBACK, OP_SET, Audit
from castore.reports import PlainReport

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MAX_RECORD_BYTES",
    "NO_VALUE",
    "REMOVED_REASON",
    "ExportEnd",
    "ExportHeader",
    "ExportRecord",
    "ImportReport",
    "OnConflict",
    "parse_export",
    "read_lines",
]

EXPORT_FORMAT: Final = "castore-export"
REMOVED_REASON: Final = "removed by compaction"  # the audit reason of a removed key's line
EXPORT_VERSION = 2
_READABLE: Final = (1, EXPORT_VERSION)  # version 1: the same lines, without the end line
# One export line: the value is embedded as its normalized JSON, unescaped, so it
# takes at most MAX_VALUE_BYTES; the same again covers the rest (scope, namespace
# and key of at most 4 KiB each, 6x when JSON-escaped, and free-text audit fields),
# and 64 KiB the fixed fields. 2 MiB + 64 KiB = 2,162,688 bytes.
MAX_RECORD_BYTES: Final = 2 * codec.MAX_VALUE_BYTES + (64 << 10)
OnConflict = Literal["refuse", "skip", "overwrite"]
NO_VALUE = msgspec.Raw(b"")
# A version, a time or a pid: what every backend stores (PostgreSQL's bigint, msgpack's int).
_Count = Annotated[
    int, msgspec.Meta(ge=0, le=(1 << 63) - 1)
]  # the default of ExportRecord.value: omitted when encoding


# A version's time: 1 or more (every stored version has one; 0 would mean "now").
_Time = Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)]


class ExportHeader(msgspec.Struct, frozen=True, kw_only=True):
    """First line of an export."""

    format: str
    version: int


class ExportEnd(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Last line of an export (version 2): the number of version lines before it."""

    end: Literal["castore-export"]
    versions: _Count


class ExportRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One version of one ref in an export."""

    scope: str
    namespace: str
    key: str
    version: _Count
    op: str
    time_ns: _Time
    created_ns: _Count = 0
    hash: str = ""
    audit: Audit = Audit()
    value: msgspec.Raw = NO_VALUE  # a delete or a damaged entry carries no value
    damaged_from: _Count = 0  # a ``damaged`` entry: the versions damaged_from..version were lost


class ImportReport(PlainReport, frozen=True, kw_only=True):
    """What an import did: counts of refs and versions written, refs skipped."""

    _operation: ClassVar[str] = "import"

    refs: int
    versions: int
    skipped_refs: list[str]
    overwritten_refs: list[str]


_header_decoder = msgspec.json.Decoder(ExportHeader)
_record_decoder = msgspec.json.Decoder(ExportRecord)
_end_decoder = msgspec.json.Decoder(ExportEnd)


def _too_long(number: int) -> InvalidValueError:
    return InvalidValueError(
        f"line {number}: longer than {MAX_RECORD_BYTES} bytes, the limit of one export line"
    )


def _start_of(stream: IO[bytes]) -> int | None:
    """Where a seekable stream is (None: it cannot seek, a pipe)."""
    try:
        return stream.tell() if stream.seekable() else None
    except (AttributeError, OSError):  # a reader without seek, or one that refuses it
        return None


def read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the lines of a binary stream, each with its newline, in bounded memory.

    At most ``MAX_RECORD_BYTES + 1`` bytes of one line are ever held: a longer
    line is refused as soon as its first byte past the limit is read, and the
    rest of it is never read. A seekable stream is put back where the lines
    started once they end (or are left), so ``lambda: read_lines(f)`` gives
    the same lines on each call, as :func:`castore.import_lines` needs.

    Raises:
        TypeError: ``stream`` is not a file object (checked when called: a path is not one).
        InvalidValueError: a line holds more than :data:`MAX_RECORD_BYTES` bytes,
            its newline not counted (the message names the line and the limit).
    """
    if not callable(getattr(stream, "readline", None)):
        kind = type(stream).__name__
        raise TypeError(f"stream must be a file object opened 'rb' (not a path), not {kind}")
    return _lines(stream)


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """:func:`read_lines`' lines, its stream checked."""
    start = _start_of(stream)
    number = 0
    try:
        while line := stream.readline(MAX_RECORD_BYTES + 1):
            number += 1
            if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
                raise _too_long(number)
            yield line
    finally:
        if start is not None and not getattr(stream, "closed", False):
            stream.seek(start)


def _refuse_text(line: object) -> None:
    """A line that is not bytes (``str``: a file opened without ``b``) is a TypeError."""
    if not isinstance(line, bytes | bytearray):
        kind = type(line).__name__
        raise TypeError(f"read() must give lines as bytes, not {kind} (open the file 'rb')")


def _numbered(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Number lines from 1, refusing one over the limit from whatever reader gave it."""
    for number, line in enumerate(lines, start=1):
        _refuse_text(line)
        if len(line) - (1 if line.endswith(b"\n") else 0) > MAX_RECORD_BYTES:
            raise _too_long(number)
        yield number, line


def _decode_record(line: bytes) -> ExportRecord:
    """One version's line; a value nested deeper than msgspec recurses is taken as text.

    Raises:
        msgspec.DecodeError, ValueError: not a record.
    """
    try:
        return _record_decoder.decode(line)
    except RecursionError:  # msgspec recurses through a value, even one it keeps Raw
        return with_deep_members(line, _record_decoder.decode, ("value",))


EMPTY: Final = "the file is empty: a castore export starts with its header line"


def parse_export(
    lines: Iterable[bytes], empty: str = EMPTY
) -> Iterator[tuple[Ref, list[NewVersion]]]:
    """Validate an export and yield each ref's versions as new versions.

    ``empty``: the error when there is no line at all.
    """
    it = _numbered(lines)
    first = next(it, None)
    if first is None:
        raise InvalidValueError(empty)
    try:
        header = _header_decoder.decode(first[1])
    except (msgspec.DecodeError, RecursionError) as exc:  # a member nested too deep: not ours
        why = exc if isinstance(exc, msgspec.DecodeError) else "nested too deep"
        raise InvalidValueError(f"line 1: not a castore export header ({why})") from None
    if header.format != EXPORT_FORMAT or header.version not in _READABLE:
        raise InvalidValueError(
            f"line 1: export {header.format} version {header.version} is not supported"
        )
    current: Ref | None = None
    new_versions: list[NewVersion] = []
    seen: set[bytes] = set()  # a digest of each ref: memory does not grow with key lengths
    count, end, number = 0, 0, 1
    for number, line in it:
        if not line.strip():
            continue
        if end:
            raise InvalidValueError(f"line {number}: a line after the export's end line")
        try:
            rec = _decode_record(line)
            ref = Ref(validate_scope(rec.scope), validate_namespace(rec.namespace), rec.key)
            validate_key(rec.key)
        except (msgspec.DecodeError, ValueError) as exc:
            end = _end_line(line, number, count, header.version, exc)
            continue
        count += 1
        if ref != current:
            if current is not None:
                yield current, new_versions
            digest = _ref_digest(ref)
            if digest in seen:
                raise InvalidValueError(f"line {number}: versions of {ref} are not contiguous")
            seen.add(digest)
            current, new_versions = ref, []
        if new_versions and rec.time_ns < new_versions[-1].time_ns:
            raise InvalidValueError(f"line {number}: time_ns goes back within {ref}")
        new_versions.append(
            _new_version(rec, number, new_versions[-1].version if new_versions else 0)
        )
    if header.version >= 2 and not end:
        raise InvalidValueError(
            f"the file ends at line {number} without the export's end line: an export "
            "cut short (it failed or was stopped), so some keys would be missing"
        )
    if current is not None:
        yield current, new_versions


def _ref_digest(ref: Ref) -> bytes:
    """16 bytes naming ``ref`` (its parts length-prefixed, so no two refs share them)."""
    parts = [part.encode("utf-8", "surrogatepass") for part in ref]
    return blake3.blake3(b"".join(len(p).to_bytes(4, "big") + p for p in parts)).digest(16)


def _end_line(line: bytes, number: int, count: int, version: int, exc: Exception) -> int:
    """The line number of the end line ``line``, which follows ``count`` version lines.

    Raises:
        InvalidValueError: ``line`` is no end line (``exc``: why it is no record either),
            or counts another number of versions, or the format has none (version 1).
    """
    try:
        end = _end_decoder.decode(line)
    except (msgspec.DecodeError, ValueError):
        if str(exc) == "Input data was truncated":  # msgspec's words: the line ends mid-JSON
            exc = ValueError("the line ends inside its JSON (a file cut short, or edited)")
        raise InvalidValueError(f"line {number}: {exc}") from None
    if version < 2:
        raise InvalidValueError(f"line {number}: {exc}")
    if end.versions != count:
        raise InvalidValueError(
            f"line {number}: the end line counts {end.versions} versions, the file holds {count}"
        )
    return number


def _new_version(rec: ExportRecord, number: int, last_version: int) -> NewVersion:
    try:
        check_audit(rec.audit)  # what the store's own writes hold: every export line fits
    except InvalidValueError as exc:
        raise InvalidValueError(f"line {number}: {exc.detail}") from None
    if rec.hash and not codec.is_digest(rec.hash):
        raise InvalidValueError(f"line {number}: hash {rec.hash[:80]!r} is not a sha256 hex digest")
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
