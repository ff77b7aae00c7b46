"""Rows of the PostgreSQL store and the records they become: entries, values, list entries.

A ref's rows are found by its ``ref_id`` (:func:`ref_id`), a namespace's by
its ``ns_id``; names are kept as UTF-8 bytes (byte-wise order, as Dagu's).
:data:`ENTRY` selects the columns of an entry, from ``versions`` or from the
copy of the newest one in ``refs``, in the order :func:`entry` reads them.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

from castore import valuecodec
from castore.backend import lost_error
from castore.errors import CorruptionError
from castore.keys import Ref
from castore.postgres.schema import KEY_HEAD_BYTES
from castore.records import OP_DAMAGED, OP_DELETE, OP_ROLLBACK, OP_SET, Audit, Entry
from castore.results import ListEntry, rfc3339

__all__ = [
    "ENTRY",
    "IDS_CACHED",
    "ID_NAMES_CACHED",
    "REF",
    "VALUE",
    "audit_json",
    "entry",
    "entry_columns",
    "key_range",
    "list_entry",
    "namespace_name",
    "ns_id",
    "prefix_filter",
    "ref_id",
    "ref_name",
    "ref_row",
    "stored_ref",
    "value",
]

REF: Final = "ref_id = %s"
"""The condition that picks one ref's rows (parameter: :func:`ref_id`)."""
ENTRY: Final = "version, op, time_ns, digest, size, created_ns, audit, damaged_from"
"""The columns of an entry, in :func:`entry`'s order (prefix them with a table alias as needed)."""
VALUE: Final = "inline, blob"
"""The columns of a version's value: inline bytes, else the digest of its ``blobs`` row."""
_OPS: Final = frozenset((OP_SET, OP_DELETE, OP_ROLLBACK, OP_DAMAGED))  # what castore writes
_MAX_INT: Final = (1 << 63) - 1  # a bigint: the largest version, time or size


def entry_columns(table: str) -> str:
    """:data:`ENTRY`'s columns, each qualified by ``table`` (a name or an alias)."""
    return ", ".join(f"{table}.{column}" for column in ENTRY.split(", "))


_audit_decoder = msgspec.json.Decoder(Audit)
_audit_encoder = msgspec.json.Encoder()


IDS_CACHED: Final = 65536  # ids a process remembers (two sha256 per call otherwise: 10% of a get)
ID_NAMES_CACHED: Final = 16 << 20  # and the characters of their names; emptied past either
_ids: dict[object, bytes] = {}  # (scope, namespace) or a Ref -> its id
_id_chars = [0]


def _remember(asked: object, chars: int, made: bytes) -> bytes:
    """Keep ``made`` as the id of ``asked`` (whose names hold ``chars`` characters)."""
    if len(_ids) >= IDS_CACHED or _id_chars[0] + chars > ID_NAMES_CACHED:
        _ids.clear()  # a server's requests bring new strings: what they hold is bounded
        _id_chars[0] = 0
    _id_chars[0] += chars
    _ids[asked] = made
    return made


def ns_id(scope: str, namespace: str) -> bytes:
    """The id of a namespace's rows: sha256 of its scope, a NUL, and its name."""
    got = _ids.get((scope, namespace))
    if got is None:
        made = hashlib.sha256(b"%s\0%s" % (scope.encode(), namespace.encode("utf-8"))).digest()
        got = _remember((scope, namespace), len(namespace), made)
    return got


def ref_id(ref: Ref) -> bytes:
    """The id of a ref's rows: sha256 of its namespace id and key (names may hold NUL)."""
    got = _ids.get(ref)
    if got is None:
        made = hashlib.sha256(ns_id(ref.scope, ref.namespace) + ref.key.encode("utf-8")).digest()
        got = _remember(ref, len(ref.key) + len(ref.namespace), made)
    return got


def ref_row(ref: Ref) -> tuple[bytes, str, bytes, bytes, bytes, bytes, bytes]:
    """A new ``refs`` row's identity (ref_id, scope, namespace, key, ns_id, key_head), ref_id."""
    key = ref.key.encode("utf-8")
    scope, namespace = ref.scope, ref.namespace
    ids = (ref_id(ref), scope, namespace.encode("utf-8"), key, ns_id(scope, namespace))
    return (*ids, key[:KEY_HEAD_BYTES], ref_id(ref))


def ref_name(scope: str, namespace: bytes, key: bytes) -> str:
    """A ref, as errors and findings name it, from its stored names (even if not UTF-8)."""
    names = (bytes(namespace).decode("utf-8", "replace"), bytes(key).decode("utf-8", "replace"))
    return str(Ref(scope, *names))


def namespace_name(scope: str, namespace: bytes) -> str:
    """A namespace's stored name as text.

    Raises:
        CorruptionError: the name is not UTF-8 (edited by hand).
    """
    try:
        return bytes(namespace).decode("utf-8")
    except UnicodeDecodeError:
        shown = bytes(namespace).decode("utf-8", "replace")
        raise CorruptionError(
            f"{scope}/{shown}: a namespace name that is not UTF-8: run castore check"
        ) from None


def stored_ref(row_id: bytes, scope: str, namespace: bytes, key: bytes) -> Ref:
    """The ref a ``refs`` row names, once its names are UTF-8 and hash to its ``ref_id``.

    Raises:
        CorruptionError: names edited by hand (a read would serve one key's
            versions under another's name, or fail on bytes that are not text).
    """
    try:
        ref = Ref(scope, bytes(namespace).decode("utf-8"), bytes(key).decode("utf-8"))
    except UnicodeDecodeError:
        ref = None
    if ref is None or ref_id(ref) != bytes(row_id):
        raise CorruptionError(
            f"{ref_name(scope, namespace, key)}: its refs row's names are not its own "
            "(not UTF-8, or not what its ref_id was made of): run castore check"
        )
    return ref


def key_range(prefix: str) -> tuple[bytes, bytes | None]:
    """The bytes ``[low, high)`` holding the keys that start with ``prefix`` (None: no bound)."""
    low = prefix.encode("utf-8")
    stem = low.rstrip(b"\xff")
    high = stem[:-1] + bytes((stem[-1] + 1,)) if stem else None
    return low, high


def prefix_filter(scope: str, namespace: str, prefix: str) -> tuple[str, list[Any]]:
    """The ``WHERE`` condition (and its parameters) of a namespace's keys starting with ``prefix``.

    ``refs_list`` orders ``(ns_id, key_head)``: a prefix no longer than the
    head bounds the head as it bounds the key; a longer one fixes the head.
    """
    low, high = key_range(prefix)
    where, params = ["ns_id = %s", "key >= %s"], [ns_id(scope, namespace), low]
    if high is not None:
        where.append("key < %s")
        params.append(high)
    if len(low) > KEY_HEAD_BYTES:
        where.append("key_head = %s")
        params.append(low[:KEY_HEAD_BYTES])
    else:
        where.append("key_head >= %s")
        params.append(low)
        if high is not None:
            where.append("key_head < %s")
            params.append(high)
    return " AND ".join(where), params


def audit_json(audit: Audit) -> bytes:
    """An audit record as the JSON bytes its column holds (empty fields omitted)."""
    return _audit_encoder.encode(audit)


def entry(row: tuple[Any, ...], at: int = 0, ref: object = None) -> Entry | None:
    """The entry in ``row[at:]`` (:data:`ENTRY`'s columns); None when its version is null.

    Raises:
        CorruptionError: its audit record is not one, its op is none castore writes, or
            a time or size is missing or out of range (naming ``ref``, when given).
    """
    version, op, time_ns, digest, size, created_ns, audit, damaged_from = row[at : at + 8]
    if version is None:
        return None
    whose = f"{ref} " if ref is not None else ""
    if op not in _OPS:
        raise CorruptionError(f"{whose}version {version}: unknown op {str(op)[:80]!r}")
    if not (_in_range(time_ns, 1) and _in_range(created_ns, 0) and _in_range(size, 0)):
        raise CorruptionError(  # a copy in ``refs`` may hold nulls; no write leaves these
            f"{whose}version {version}: its time, creation time or size is missing or "
            f"out of range ({time_ns}, {created_ns}, {size})"
        )
    lost = damaged_from or 0
    if not (_in_range(lost, 0) and (not lost or (op == OP_DAMAGED and lost <= version))):
        raise CorruptionError(f"{whose}version {version}: damaged_from {lost} on a {op}")
    if op == OP_DELETE and digest is not None:
        raise CorruptionError(f"{whose}version {version}: a delete that names a value")
    try:
        blank = audit is None or audit == b"{}"  # castore writes "{}": b"" was cleared by hand
        who = Audit() if blank else _audit_decoder.decode(bytes(audit))
    except msgspec.DecodeError as exc:
        raise CorruptionError(f"{whose}version {version}: bad audit record: {exc}") from None
    return Entry(
        version=version,
        op=op,
        time_ns=time_ns,
        hash=bytes(digest).hex() if digest is not None else "",
        size=size,
        created_ns=created_ns,
        audit=who,
        damaged_from=lost,
    )


def _in_range(number: object, low: int) -> bool:
    return type(number) is int and low <= number <= _MAX_INT


def value(
    ref: Ref, found: Entry, inline: bytes | None, codec: int | None, data: bytes | None
) -> bytes | None:
    """The verified value of ``found``: ``inline`` bytes, else its blob's ``codec`` and ``data``.

    None for a delete.

    Raises:
        CorruptionError: the blob is missing, does not hash to the entry's hash
            or is not the entry's size, or the version was lost to damage (a
            ``damaged`` entry).
    """
    if not found.live:
        return None
    if found.op == OP_DAMAGED:
        raise lost_error(ref, found)
    if inline is not None:
        codec, data = valuecodec.CODEC_RAW, inline
    if codec is None or data is None:
        raise CorruptionError(f"{ref} version {found.version}: blob {found.hash} is missing")
    try:
        got = valuecodec.unpack(codec, bytes(data), found.hash)
    except CorruptionError as exc:
        raise CorruptionError(f"{ref} version {found.version}: {exc.detail}") from None
    if len(got) != found.size:
        raise CorruptionError(
            f"{ref} version {found.version}: the value holds {len(got)} bytes, "
            f"its entry says {found.size}"
        )
    return got


def list_entry(scope: str, namespace: str, key: str, found: Entry) -> ListEntry:
    """The list entry of a live key's newest version."""
    return ListEntry(
        scope=scope,
        namespace=namespace,
        key=key,
        version=found.version,
        hash=found.hash,
        created_at=rfc3339(found.created_ns),
        updated_at=rfc3339(found.time_ns),
    )
