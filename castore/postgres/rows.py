"""Rows of the PostgreSQL store and the records they become: entries, values, list entries.

A ref's row key is ``(scope, namespace, key)`` with namespace and key as
UTF-8 bytes (byte-wise order, as Dagu's). :data:`ENTRY` selects the columns
of an entry, from ``versions`` or from the copy of the newest one in
``refs``, in the order :func:`entry` reads them.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from castore import valuecodec
from castore.errors import CorruptionError
from castore.keys import Ref
from castore.records import OP_DAMAGED, Audit, Entry
from castore.results import ListEntry, rfc3339

__all__ = [
    "ENTRY",
    "VALUE",
    "audit_json",
    "entry",
    "key_range",
    "list_entry",
    "ref_params",
    "value",
]

ENTRY: Final = "version, op, time_ns, digest, size, created_ns, audit::text, damaged_from"
"""The columns of an entry, in :func:`entry`'s order (prefix them with a table alias as needed)."""
VALUE: Final = "inline, blob"
"""The columns of a version's value: inline bytes, else the digest of its ``blobs`` row."""

_audit_decoder = msgspec.json.Decoder(Audit)
_audit_encoder = msgspec.json.Encoder()


def ref_params(ref: Ref) -> tuple[str, bytes, bytes]:
    """The row key of ``ref``: scope, namespace and key as UTF-8."""
    return ref.scope, ref.namespace.encode("utf-8"), ref.key.encode("utf-8")


def key_range(prefix: str) -> tuple[bytes, bytes | None]:
    """The bytes ``[low, high)`` holding the keys that start with ``prefix`` (None: no bound)."""
    low = prefix.encode("utf-8")
    stem = low.rstrip(b"\xff")
    high = stem[:-1] + bytes((stem[-1] + 1,)) if stem else None
    return low, high


def audit_json(audit: Audit) -> str:
    """An audit record as the JSON text its ``jsonb`` column takes."""
    return _audit_encoder.encode(audit).decode("utf-8")


def entry(row: tuple[Any, ...], at: int = 0) -> Entry | None:
    """The entry in ``row[at:]`` (:data:`ENTRY`'s columns); None when its version is null."""
    version, op, time_ns, digest, size, created_ns, audit, damaged_from = row[at : at + 8]
    if version is None:
        return None
    try:
        who = _audit_decoder.decode(audit) if audit and audit != "{}" else Audit()
    except msgspec.DecodeError as exc:
        raise CorruptionError(f"version {version}: bad audit record: {exc}") from None
    return Entry(
        version=version,
        op=op,
        time_ns=time_ns,
        hash=bytes(digest).hex() if digest is not None else "",
        size=size,
        created_ns=created_ns,
        audit=who,
        damaged_from=damaged_from or 0,
    )


def value(
    ref: Ref, found: Entry, inline: bytes | None, codec: int | None, data: bytes | None
) -> bytes | None:
    """The verified value of ``found``: ``inline`` bytes, else its blob's ``codec`` and ``data``.

    None for a delete.

    Raises:
        CorruptionError: the blob is missing or does not hash to the entry's
            hash, or the version was lost to damage (a ``damaged`` entry).
    """
    if not found.live:
        return None
    if found.op == OP_DAMAGED:
        lost = (
            f"versions {found.first}-{found.version}"
            if found.damaged_from
            else f"version {found.version}"
        )
        raise CorruptionError(f"{ref} {lost} lost: {found.audit.reason}")
    if inline is not None:
        codec, data = valuecodec.CODEC_RAW, inline
    if codec is None or data is None:
        raise CorruptionError(f"{ref} version {found.version}: blob {found.hash} is missing")
    try:
        return valuecodec.unpack(codec, bytes(data), found.hash)
    except CorruptionError as exc:
        raise CorruptionError(f"{ref} version {found.version}: {exc.detail}") from None


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
