"""The castore exception tree.

Every error castore raises on purpose is a :class:`CastoreError`. Real
``OSError`` (disk full, permissions) propagate unchanged.

::

    CastoreError                         base; never raised directly
    ├── InvalidRefError      (ValueError)    bad scope / namespace / key / prefix / limit
    ├── InvalidValueError    (ValueError)    not JSON, or cannot be normalized
    │   └── ValueTooLargeError               raw or normalized size > MAX_VALUE_BYTES
    ├── NotFoundError        (LookupError)   ref (or ref at a version) absent
    ├── ConflictError                        expected_version / create_only failed
    │   └── PatchTestError                   a JSON Patch ``test`` operation failed
    ├── LockTimeoutError     (TimeoutError)  a ref lock was not taken in time
    ├── BackendUnavailableError              a location names a backend not installed here
    ├── StoreUnavailableError (ConnectionError) the store's server cannot be reached,
    │                                        or its directory went away under a handle
    └── CorruptionError                      stored bytes fail verification
        ├── DigestMismatchError              blob bytes do not hash to their name
        ├── RecordError                      record unparsable or fails its checksum
        ├── FormatVersionError               not a castore store, or another format
        └── UnsafePathError                  a store path is a symlink or leaves the root

Every class survives pickling (multi-process tests send them across
processes): each passes all of its constructor arguments to
``super().__init__`` and rebuilds its message from them.
"""

from __future__ import annotations

import errno

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BackendUnavailableError",
    "CastoreError",
    "ConflictError",
    "CorruptionError",
    "DigestMismatchError",
    "FormatVersionError",
    "InvalidRefError",
    "InvalidValueError",
    "LockTimeoutError",
    "NotFoundError",
    "PatchTestError",
    "RecordError",
    "StoreUnavailableError",
    "UnsafePathError",
    "ValueTooLargeError",
]


class CastoreError(Exception):
    """Base class of every error castore raises on purpose; never raised directly."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidRefError(CastoreError, ValueError):
    """Raised when a scope, namespace, key, prefix or limit is not valid.

    The message follows Dagu's wording, e.g. ``invalid ref: invalid key "../bad"``.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"invalid ref: {self.detail}"


class InvalidValueError(CastoreError, ValueError):
    """Raised when a value is not exactly one JSON value or cannot be normalized.

    ``position``: for JSON text that does not parse, the 1-based line and column
    (in characters) of what the message names (one past the end for ``unexpected
    EOF``); None otherwise. The message itself is Go's words, as Dagu's.
    """

    position: tuple[int, int] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"invalid value: {self.detail}"


class ValueTooLargeError(InvalidValueError):
    """Raised when a value's raw input or normalized form exceeds the size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes exceeds {limit}")
        self.args = (size, limit)
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return f"value too large: {self.size} bytes exceeds {self.limit}"


class NotFoundError(CastoreError, LookupError):
    """Raised when a required ref, or a ref at a given version, does not exist."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what

    def __str__(self) -> str:
        return f"not found: {self.what}"


_EXISTS = "key exists"  # the reason of a create_only conflict


class ConflictError(CastoreError):
    """Raised when ``expected_version`` or ``create_only`` does not hold.

    Attributes:
        ref: the ref as ``scope/namespace/key`` text.
        expected: the version the caller expected (``None`` for create_only).
        actual: the live version found (0 when the key does not exist).
        reason: a short phrase saying which condition failed.
    """

    def __init__(self, ref: str, expected: int | None, actual: int, reason: str = "") -> None:
        super().__init__(ref, expected, actual, reason)
        self.ref = ref
        self.expected = expected
        self.actual = actual
        self.reason = reason

    def __str__(self) -> str:
        if self.expected is None and self.reason not in ("", _EXISTS):  # no guard: an import's
            why = f"actual version {self.actual} ({self.reason})" if self.actual else self.reason
            return f"conflict on {self.ref}: {why}"
        if self.expected is None:
            want = "create_only (key must not exist)"
        else:
            want = f"expected version {self.expected}"
        why = f" ({self.reason})" if self.reason else ""
        return f"conflict on {self.ref}: {want}, actual version {self.actual}{why}"


class PatchTestError(ConflictError):
    """Raised when a ``test`` operation of a JSON Patch fails: nothing is written.

    ``actual`` is the live version the patch was tested against (0: the key is
    absent); ``reason`` says which test failed.
    """

    def __str__(self) -> str:
        at = f"at version {self.actual}"
        return f"conflict on {self.ref}: JSON Patch test failed {at}: {self.reason}"


class BackendUnavailableError(CastoreError, NotImplementedError):
    """Raised when a store location names a backend this castore does not provide (yet)."""


class StoreUnavailableError(CastoreError, ConnectionError):
    """Raised when the server behind a store location cannot be reached or fails.

    Also when a store directory a handle opened is gone (its ``FORMAT``
    deleted, moved or unmounted): never "not found", never a new store there.

    The message names the location without credentials and says what
    failed; for a write it also says whether the write may have been applied
    (a connection lost after the commit was sent: read the key to find out).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class LockTimeoutError(CastoreError, TimeoutError):
    """Raised when a ref or blob lock could not be taken within the timeout."""

    def __init__(self, path: str, timeout_seconds: float, ref: str = "") -> None:
        # OSError's two-argument form: errno and strerror stay meaningful.
        super().__init__(errno.ETIMEDOUT, f"{path} not locked within {timeout_seconds:g} s")
        self.path = path
        self.timeout_seconds = timeout_seconds
        self.ref = ref  # the key whose log it is, when the writer knows it

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.path, self.timeout_seconds)  # as before the key was named: older clients
        return (self.__class__, (*args, self.ref) if self.ref else args, self.__dict__)

    def __str__(self) -> str:
        what = f"{self.ref} ({self.path})" if self.ref else self.path
        return f"lock timeout: {what} not locked within {self.timeout_seconds:g} s"


class CorruptionError(CastoreError):
    """Raised when stored bytes fail verification (see subclasses)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"corrupt store: {self.detail}"


class DigestMismatchError(CorruptionError):
    """Raised when a blob's bytes do not hash to the digest that names it."""


class RecordError(CorruptionError):
    """Raised when a log record is unparsable or fails its checksum."""


class FormatVersionError(CorruptionError):
    """Raised when a location is not a castore store, or one written in another format.

    The message names the path and what it holds (``... not a castore store``,
    ``format version 1 ... run castore upgrade``); it does not say "corrupt store":
    most often the path is simply wrong.
    """

    def __str__(self) -> str:
        return self.detail


class UnsafePathError(CorruptionError):
    """Raised when a path inside the store is a symbolic link, or a name would leave the root.

    castore never follows a link inside its root (docs/RELIABILITY.md, "Security").
    """
