"""castore: a content-addressed, versioned JSON state store, compatible with Dagu.

Only the names in ``__all__`` (and ``castore.errors``) are the stable API.
The whole-store entry points that are not :class:`Store` methods (audit,
export, import, Dagu import, upgrade) are functions here. Every public name
is loaded on first use, so that ``import castore`` costs nothing and the CLI,
which imports castore's modules themselves, loads only what a command uses
(docs/PERFORMANCE.md, "CLI start-up").
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:  # each loaded on first use: see __getattr__
    from typing import Any

    from castore.audit import AuditRecord
    from castore.audit import audit as audit_records
    from castore.backends import upgrade
    from castore.dagu import DaguImport, import_dagu
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
    from castore.records import Audit
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
    from castore.transfer import ImportReport, export_lines, import_lines, read_lines

from castore import errors as errors  # noqa: E402  # stable API: castore.errors after import castore

__version__ = "0.1.0"

_ERRORS = (
    "BackendUnavailableError CastoreError ConflictError CorruptionError DigestMismatchError "
    "FormatVersionError InvalidRefError InvalidValueError LockTimeoutError NotFoundError "
    "PatchTestError RecordError StoreUnavailableError UnsafePathError ValueTooLargeError"
)
_REPORTS = (
    "CheckReport CompactReport Finding GCReport Retention ScopeStats StoreStats UpgradeReport"
)
_RESULTS = (
    "DeleteResult DiffResult GetResult HistoryEntry HistoryResult IncrResult ListEntry "
    "ListResult PatchResult RollbackResult SetResult VersionDiff"
)

# Public name -> (module, name there): imported by __getattr__ on first use, so that
# ``import castore`` (and the CLI, which imports submodules) loads only what it uses.
_LAZY = {
    **{name: ("castore.errors", name) for name in _ERRORS.split()},
    **{name: ("castore.reports", name) for name in _REPORTS.split()},
    **{name: ("castore.results", name) for name in _RESULTS.split()},
    "Audit": ("castore.records", "Audit"),
    "Ref": ("castore.keys", "Ref"),
    "Store": ("castore.store", "Store"),
    "upgrade": ("castore.backends", "upgrade"),
    "AuditRecord": ("castore.audit", "AuditRecord"),
    "DaguImport": ("castore.dagu", "DaguImport"),
    "ImportReport": ("castore.transfer", "ImportReport"),
    "audit_records": ("castore.audit", "audit"),
    "export_lines": ("castore.transfer", "export_lines"),
    "import_dagu": ("castore.dagu", "import_dagu"),
    "import_lines": ("castore.transfer", "import_lines"),
    "read_lines": ("castore.transfer", "read_lines"),
}


if not TYPE_CHECKING:  # a type checker sees the names above, so a misspelled one is an error

    def __getattr__(name: str) -> Any:
        """Load a public name of :data:`_LAZY` on first use (PEP 562)."""
        if name not in _LAZY:
            raise AttributeError(f"module 'castore' has no attribute {name!r}")
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value


del TYPE_CHECKING  # not a public name


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Audit",
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
