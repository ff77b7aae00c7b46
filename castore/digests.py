"""sha256, castore's content address and file names, from the implementation that pays.

Importing :mod:`hashlib` loads OpenSSL's libcrypto: 4-5 ms of a new process here,
about a seventh of a CLI ``get`` (docs/PERFORMANCE.md, "CLI start-up"). CPython
also has a sha256 of its own (the ``_sha2`` module from 3.12, ``_sha256`` before),
which loads nothing more but is 3-6x slower past a few hundred bytes. Both compute
the same function of the bytes, so:

- :func:`small_sha256` is CPython's own: the file names of keys and namespaces
  (short), and the one value a CLI ``get`` checks (``castore.cli.quick``);
- :func:`value_sha256` is OpenSSL's, imported on first use: every value the
  library stores or reads.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["small_sha256", "value_sha256"]


def _builtin() -> Callable[[bytes], str]:
    """CPython's own sha256 (hex digest), else hashlib's where CPython was built without it."""
    for module in ("_sha2", "_sha256", "hashlib"):  # 3.12 and later, 3.11, anything else
        try:
            sha256 = __import__(module).sha256
        except (ImportError, AttributeError):
            continue
        return lambda data: str(sha256(data).hexdigest())
    raise ImportError("no sha256 implementation")


small_sha256 = _builtin()
_openssl: list[Callable[[bytes], str]] = []


def value_sha256(data: bytes) -> str:
    """The lowercase hex sha256 of ``data``, by OpenSSL (:mod:`hashlib`, loaded on first use)."""
    if not _openssl:
        import hashlib

        _openssl.append(lambda value: hashlib.sha256(value).hexdigest())
    return _openssl[0](data)
