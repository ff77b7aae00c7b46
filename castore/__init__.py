"""castore: a content-addressed, versioned JSON state store, compatible with Dagu.

Only the names in ``__all__`` (and ``castore.errors``) are the stable API.
"""

from castore.errors import (
    BackendUnavailableError,
    CastoreError,
    ConflictError,
    CorruptionError,
    InvalidRefError,
    InvalidValueError,
    LockTimeoutError,
    NotFoundError,
    PatchTestError,
    ValueTooLargeError,
)
from castore.keys import Ref
from castore.reports import (
    CheckReport,
    CompactReport,
    Finding,
    GCReport,
    Retention,
    ScopeStats,
    StoreStats,
    UpgradeReport,
)
from castore.results import (
    DeleteResult,
    DiffResult,
    GetResult,
    HistoryEntry,
    HistoryResult,
    IncrResult,
    ListEntry,
    ListResult,
    PatchResult,
    RollbackResult,
    SetResult,
    VersionDiff,
)
from castore.store import Store

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CastoreError",
    "CheckReport",
    "CompactReport",
    "ConflictError",
    "CorruptionError",
    "DeleteResult",
    "DiffResult",
    "Finding",
    "GCReport",
    "GetResult",
    "HistoryEntry",
    "HistoryResult",
    "IncrResult",
    "InvalidRefError",
    "InvalidValueError",
    "ListEntry",
    "ListResult",
    "LockTimeoutError",
    "NotFoundError",
    "PatchResult",
    "PatchTestError",
    "Ref",
    "Retention",
    "RollbackResult",
    "ScopeStats",
    "SetResult",
    "Store",
    "StoreStats",
    "UpgradeReport",
    "ValueTooLargeError",
    "VersionDiff",
]
