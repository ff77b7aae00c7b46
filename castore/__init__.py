"""castore: a content-addressed, versioned JSON state store, compatible with Dagu.

Only the names in ``__all__`` (and ``castore.errors``) are the stable API.
"""

from castore.errors import (
    CastoreError,
    ConflictError,
    CorruptionError,
    InvalidRefError,
    InvalidValueError,
    LockTimeoutError,
    NotFoundError,
    ValueTooLargeError,
)
from castore.results import (
    DeleteResult,
    DiffResult,
    GetResult,
    ListEntry,
    ListResult,
    SetResult,
)
from castore.store import Store

__version__ = "0.1.0"

__all__ = [
    "CastoreError",
    "ConflictError",
    "CorruptionError",
    "DeleteResult",
    "DiffResult",
    "GetResult",
    "InvalidRefError",
    "InvalidValueError",
    "ListEntry",
    "ListResult",
    "LockTimeoutError",
    "NotFoundError",
    "SetResult",
    "Store",
    "ValueTooLargeError",
]
