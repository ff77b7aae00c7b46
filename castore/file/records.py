"""Record types of the file backend's frames and their encodings (docs/FORMAT.md §3).

Pure: structs, encoders and decoders; no I/O.

* ``H`` frame: :class:`Header`, the first frame of every ref log (JSON).
* ``B`` frame: a blob, ``digest[32] codec:u8 data`` (binary, see
  :func:`encode_blob`). The digest is the sha256 of the *normalized* JSON,
  never of the stored (possibly compressed) bytes.
* ``E`` frame: :class:`~castore.records.Entry`, one version of a ref (JSON).
* ``C`` frame: :class:`Compaction`, versions dropped by ``compact`` (JSON).
* ``G`` frame: :class:`Grave`, in a namespace's ``GRAVES`` file: the last
  version of a key compaction removed, or a floor for every such key (JSON).
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

from castore import valuecodec
from castore.codec import is_digest
from castore.errors import DigestMismatchError, RecordError
from castore.records import OP_ROLLBACK, OP_SET, Entry
from castore.valuecodec import CODEC_RAW, CODEC_ZSTD, COMPRESS_MIN_BYTES, ZSTD_LEVEL

__all__ = [
    "CODEC_RAW",
    "CODEC_ZSTD",
    "COMPRESS_MIN_BYTES",
    "EARLIER_RUNS",
    "KIND_BLOB",
    "KIND_COMPACTED",
    "KIND_ENTRY",
    "KIND_GRAVE",
    "KIND_HEADER",
    "ZSTD_LEVEL",
    "Compaction",
    "CompactionRun",
    "Grave",
    "Header",
    "decode_blob",
    "decode_compaction",
    "decode_entry",
    "decode_grave",
    "decode_header",
    "encode_blob",
    "encode_record",
    "grave_key_bytes",
]

KIND_HEADER = ord("H")
KIND_BLOB = ord("B")
KIND_ENTRY = ord("E")
KIND_COMPACTED = ord("C")
KIND_GRAVE = ord("G")

T = TypeVar("T")


class CompactionRun(msgspec.Struct, frozen=True, kw_only=True):
    """An earlier compaction of a log, as its ``C`` frame said (:attr:`Compaction.earlier`)."""

    versions: list[tuple[int, int]]  # every version compacted away by then: inclusive ranges
    policy: str
    time_ns: int


class Compaction(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A ``C`` frame: versions compactions dropped, and the policies that dropped them.

    ``versions`` names every version dropped so far, ``policy`` and ``time_ns`` the
    newest compaction; ``earlier`` the ``C`` frames it replaced (each with every
    version dropped by its time), oldest first, at most :data:`EARLIER_RUNS`.
    """

    versions: list[tuple[int, int]]  # inclusive ranges
    policy: str
    time_ns: int
    earlier: list[CompactionRun] = []

    def dropped_by(self, version: int) -> tuple[str, int] | None:
        """``(policy, time_ns)`` of the first compaction named here that dropped ``version``.

        None when none did. Past :data:`EARLIER_RUNS` compactions, the oldest ones are
        forgotten: their versions name the oldest one remembered (it had dropped them by
        its time).
        """
        for run in (*self.earlier, self.run()):
            if any(low <= version <= high for low, high in run.versions):
                return run.policy, run.time_ns
        return None

    def run(self) -> CompactionRun:
        """This frame as one of a later frame's :attr:`earlier` compactions."""
        return CompactionRun(versions=self.versions, policy=self.policy, time_ns=self.time_ns)


EARLIER_RUNS = 32  # earlier compactions a ``C`` frame remembers one by one


class Grave(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A ``G`` frame: ``key``'s last version before compaction removed its log.

    A record without a key is a *floor*: every removed key of the namespace
    had a version at most ``version`` (written by a repair that could not
    read a damaged record).
    """

    version: int
    key: str | None = None


class Header(msgspec.Struct, frozen=True, kw_only=True):
    """First frame of a ref log: names the ref, so the log is self-describing."""

    format: int
    scope: str
    namespace: str
    key: str


_MAX_NS: Final = (1 << 63) - 1  # the latest time castore stores (2262-04-11)
_encoder = msgspec.json.Encoder()
_UNESCAPED: Final = frozenset("\x7f\u2028\u2029")  # other encoders may escape these
_entry_decoder = msgspec.json.Decoder(Entry)
_header_decoder = msgspec.json.Decoder(Header)
_compaction_decoder = msgspec.json.Decoder(Compaction)
_grave_decoder = msgspec.json.Decoder(Grave)


def encode_record(record: Entry | Header | Compaction | Grave) -> bytes:
    """JSON payload for an ``E``, ``H``, ``C`` or ``G`` frame."""
    return _encoder.encode(record)


def grave_key_bytes(key: str) -> bytes | None:
    r"""The bytes that end every ``G`` record of ``key`` (FORMAT.md §5), or None.

    :func:`encode_record` writes ``{"version":N,"key":K}``, ``K`` the key as
    msgspec writes a string: so a file whose bytes hold no ``,"key":K}`` holds
    no intact record of the key. None for a key whose string has escapes
    (``"``, ``\``, control characters), or characters other encoders escape
    (DEL, U+2028, U+2029): one form is certain only without them.
    """
    try:
        encoded = _encoder.encode(key)
    except UnicodeEncodeError:  # a lone surrogate: no key castore writes
        return None
    plain = encoded[1:-1] == key.encode("utf-8")
    if not plain or not _UNESCAPED.isdisjoint(key):
        return None
    return b',"key":' + encoded + b"}"


def _decoded(decoder: msgspec.json.Decoder[T], payload: bytes, what: str) -> T:
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise RecordError(f"bad {what} record: {exc}") from exc


def decode_entry(payload: bytes) -> Entry:
    """Decode an ``E`` frame payload.

    Raises:
        RecordError: when the payload is not a valid entry (a ``hash`` that is
            not 64 lowercase hex digits included, or a time no castore writes).
    """
    entry = _decoded(_entry_decoder, payload, "entry")
    if not (0 < entry.time_ns <= _MAX_NS and 0 <= entry.created_ns <= _MAX_NS):
        # What every backend stores (PostgreSQL's bigint; a stored time is never 0): an
        # export of it must import again, so it is damage, as it is in a PostgreSQL row.
        raise RecordError(
            f"bad entry record: version {entry.version}'s time {entry.time_ns} or creation "
            f"time {entry.created_ns} is out of range (time 1 to 2**63-1, creation 0 to it)"
        )
    if entry.hash and not is_digest(entry.hash):  # a value's name: what reads turn into bytes
        raise RecordError(f"bad entry record: hash {entry.hash[:80]!r} is not a sha256 digest")
    if not entry.hash and entry.op in (OP_SET, OP_ROLLBACK):  # a version with a value
        raise RecordError(f"bad entry record: a {entry.op} of version {entry.version} with no hash")
    return entry


def decode_compaction(payload: bytes) -> Compaction:
    """Decode a ``C`` frame payload.

    Raises:
        RecordError: when the payload is not a valid compaction record.
    """
    return _decoded(_compaction_decoder, payload, "compaction")


def decode_grave(payload: bytes) -> Grave:
    """Decode a ``G`` frame payload.

    Raises:
        RecordError: when the payload is not a valid grave record.
    """
    return _decoded(_grave_decoder, payload, "grave")


def decode_header(payload: bytes) -> Header:
    """Decode an ``H`` frame payload.

    Raises:
        RecordError: when the payload is not a valid header.
    """
    return _decoded(_header_decoder, payload, "header")


def encode_blob(digest: bytes, normalized: bytes) -> bytes:
    """Payload of a ``B`` frame: digest, codec byte, then raw or zstd data.

    zstd is used when the value is at least :data:`COMPRESS_MIN_BYTES` long
    and compression makes it smaller (:func:`castore.valuecodec.pack`).
    """
    codec, data = valuecodec.pack(normalized)
    return b"".join((digest, bytes((codec,)), data))


def decode_blob(payload: bytes, expected_hex: str) -> bytes:
    """Return the normalized JSON held by a ``B`` frame payload, verified.

    Raises:
        DigestMismatchError: when the digest field or the sha256 of the data
            is not ``expected_hex``.
        RecordError: when the codec is unknown or the zstd data is corrupt.
    """
    if len(payload) < 33:
        raise RecordError("blob record too short")
    digest = payload[:32]
    if digest.hex() != expected_hex:
        raise DigestMismatchError(f"blob record holds {digest.hex()}, not {expected_hex}")
    return valuecodec.unpack(payload[32], payload[33:], expected_hex)
