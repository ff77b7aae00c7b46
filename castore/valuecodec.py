"""How a stored value is packed, whatever stores it: raw, or one zstd frame; verified on read.

A value is its normalized JSON, named by its sha256. Backends store it as a
codec number and data: :data:`CODEC_RAW` (the JSON itself) or
:data:`CODEC_ZSTD` (one zstd frame, level 3, content size set), the latter
only when the value is at least :data:`COMPRESS_MIN_BYTES` long and
compression makes it smaller (docs/FORMAT.md §3; the PostgreSQL backend's
``blobs`` table, docs/DESIGN.md). Unpacking re-hashes: a value that does not
hash to its name is never returned.
"""

from __future__ import annotations

import functools

from castore.digests import value_sha256
from castore.errors import DigestMismatchError, RecordError
from castore.jsonrules import MAX_VALUE_BYTES

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    import threading

    from zstandard import ZstdCompressor, ZstdDecompressor

__all__ = [
    "CODEC_RAW",
    "CODEC_ZSTD",
    "COMPRESS_MIN_BYTES",
    "ZSTD_LEVEL",
    "pack",
    "unpack",
    "unpacked",
]

CODEC_RAW = 0  # data is the normalized JSON itself
CODEC_ZSTD = 1  # data is one zstd frame holding the normalized JSON
COMPRESS_MIN_BYTES = 128  # smaller values are stored raw: zstd's frame overhead wins
ZSTD_LEVEL = 3  # zstd's default level


@functools.cache
def _threads() -> threading.local:
    """Where each thread keeps its zstd pair (zstd objects are not thread-safe)."""
    import threading  # with zstandard: a get of a small value loads neither (CLI start-up)

    return threading.local()


def _zstd() -> tuple[ZstdCompressor, ZstdDecompressor]:
    """This thread's zstd compressor and decompressor, made on first use.

    zstandard is imported here, not at start: a process that never meets a
    value of :data:`COMPRESS_MIN_BYTES` or more never loads it (a CLI ``get``
    of a small value). The import is thread-safe (the import lock) and the
    pair is per thread, as zstd objects are not thread-safe.
    """
    local = _threads()
    pair: tuple[ZstdCompressor, ZstdDecompressor] | None = getattr(local, "pair", None)
    if pair is None:
        import zstandard

        pair = (zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor())
        local.pair = pair
    return pair


def pack(normalized: bytes) -> tuple[int, bytes]:
    """The codec and data that store ``normalized``: zstd only when it is long and helps."""
    if len(normalized) >= COMPRESS_MIN_BYTES:
        packed = _zstd()[0].compress(normalized)
        if len(packed) < len(normalized):
            return CODEC_ZSTD, packed
    return CODEC_RAW, normalized


def unpacked(codec: int, data: bytes, expected_hex: str) -> bytes:
    """The bytes that ``codec`` and ``data`` hold, *not* verified (see :func:`unpack`).

    Raises:
        RecordError: the codec is unknown or the zstd data is corrupt.
    """
    if codec == CODEC_RAW:
        return data
    if codec != CODEC_ZSTD:
        raise RecordError(f"blob {expected_hex}: unknown codec {codec}")
    decompressor = _zstd()[1]
    import zstandard  # loaded by _zstd(): a dictionary lookup

    try:
        declared = zstandard.frame_content_size(data)
        if declared > MAX_VALUE_BYTES:  # never inflate what no value can be (a bomb)
            raise RecordError(f"blob {expected_hex}: zstd data declares {declared} bytes")
        return decompressor.decompress(data)
    except zstandard.ZstdError as exc:
        raise RecordError(f"blob {expected_hex}: bad zstd data: {exc}") from exc


def unpack(codec: int, data: bytes, expected_hex: str) -> bytes:
    """The normalized JSON that ``codec`` and ``data`` hold, verified to hash to ``expected_hex``.

    Raises:
        DigestMismatchError: the value's sha256 is not ``expected_hex``.
        RecordError: the codec is unknown or the zstd data is corrupt.
    """
    value = unpacked(codec, data, expected_hex)
    actual = value_sha256(value)
    if actual != expected_hex:
        raise DigestMismatchError(f"blob {expected_hex}: data hashes to {actual}")
    return value
