"""castore: a content-addressed, versioned JSON state store, compatible with Dagu.

Only the names in ``__all__`` (and ``castore.errors``) are the stable API.
The whole-store entry points that are not :class:`Store` methods (audit,
export, import, Dagu import, upgrade) are functions here; the ones over the
audit, transfer and Dagu modules load them on first use, so that ``import
castore`` stays cheap (docs/PERFORMANCE.md).
"""

import typing

from castore.backends import upgrade
from castore.errors import (
    BackendUnavailableError,
    CastoreError,
    ConflictError,
    CorruptionError,
    DigestMismatchError,
    FormatVersionError,
    InvalidRefError,
    InvalidValueError,
    LockTimeoutError,
    NotFoundError,
    PatchTestError,
    RecordError,
    StoreUnavailableError,
    UnsafePathError,
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

if typing.TYPE_CHECKING:  # loaded on first use: see __getattr__
    from castore.audit import AuditRecord
    from castore.audit import audit as audit_records
    from castore.dagu import DaguImport, import_dagu
    from castore.transfer import ImportReport, export_lines, import_lines, read_lines

__version__ = "0.1.0"

# Public name -> (module, name there): imported by __getattr__ on first use.
_LAZY = {
    "AuditRecord": ("castore.audit", "AuditRecord"),
    "DaguImport": ("castore.dagu", "DaguImport"),
    "ImportReport": ("castore.transfer", "ImportReport"),
    "audit_records": ("castore.audit", "audit"),
    "export_lines": ("castore.transfer", "export_lines"),
    "import_dagu": ("castore.dagu", "import_dagu"),
    "import_lines": ("castore.transfer", "import_lines"),
    "read_lines": ("castore.transfer", "read_lines"),
}


def __getattr__(name: str) -> typing.Any:
    """Load an entry point of :data:`_LAZY` on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'castore' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AuditRecord",
    "BackendUnavailableError",
    "CastoreError",
    "CheckReport",
    "CompactReport",
    "ConflictError",
    "CorruptionError",
    "DaguImport",
    "DeleteResult",
    "DiffResult",
    "DigestMismatchError",
    "Finding",
    "FormatVersionError",
    "GCReport",
    "GetResult",
    "HistoryEntry",
    "HistoryResult",
    "ImportReport",
    "IncrResult",
    "InvalidRefError",
    "InvalidValueError",
    "ListEntry",
    "ListResult",
    "LockTimeoutError",
    "NotFoundError",
    "PatchResult",
    "PatchTestError",
    "RecordError",
    "Ref",
    "Retention",
    "RollbackResult",
    "ScopeStats",
    "SetResult",
    "Store",
    "StoreStats",
    "StoreUnavailableError",
    "UnsafePathError",
    "UpgradeReport",
    "ValueTooLargeError",
    "VersionDiff",
    "audit_records",
    "export_lines",
    "import_dagu",
    "import_lines",
    "read_lines",
    "upgrade",
]
