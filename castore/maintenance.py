"""Store's maintenance calls (check, gc, compact, stats): a base class of ``Store``.

Each passes straight to the backend, which does the work in its own way
(docs/DESIGN.md, "The backend contract") and reports it in the shared types
of :mod:`castore.reports`.
"""

from __future__ import annotations

from castore import reports
from castore.argcheck import check_callable, check_flag
from castore.backend import Backend, Progress
from castore.handle import Handle

__all__ = ["Maintenance"]


class Maintenance(Handle):
    """The maintenance half of :class:`~castore.store.Store` (it sets ``_backend``)."""

    _backend: Backend

    def check(
        self, *, repair: bool = False, progress: Progress | None = None
    ) -> reports.CheckReport:
        """Verify every stored record; with ``repair``, fix what can be fixed, keeping originals.

        A key (or file) another process keeps locked past the lock timeout is not
        raised: it is a finding ("locked by another process for N s: not checked",
        or "not repaired"), an error, and the check goes on with the others.

        Raises:
            LockTimeoutError: PostgreSQL only (directly or through ``castore serve``):
                with ``repair``, a ``refs`` row whose names or floor it mends stayed
                locked for the lock timeout; or no connection of the handle's pool
                came free within it (other threads held them all).
        """
        check_flag(repair, "repair")
        check_callable(progress, "progress", optional=True)
        return self._backend.check(repair=repair, progress=progress)

    def gc(
        self,
        *,
        grace_seconds: float = reports.GC_GRACE_SECONDS,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> reports.GCReport:
        """Free values no version references, and crash leftovers older than ``grace_seconds``.

        Raises:
            TypeError: ``grace_seconds`` is not a number, or ``progress`` not callable.
            InvalidValueError: ``grace_seconds`` is not from 0 to 292 years.
            CorruptionError: a log is damaged; run :meth:`check` with ``repair`` first.
            LockTimeoutError: gc or a ref stayed locked for the lock timeout.
        """
        reports.check_seconds(grace_seconds, "grace_seconds")
        check_flag(dry_run, "dry_run")
        check_callable(progress, "progress", optional=True)
        return self._backend.collect_garbage(  # a float, as the CLI and a server report it
            grace_seconds=float(grace_seconds), dry_run=dry_run, progress=progress
        )

    def compact(
        self,
        *,
        keep_last: int | None = None,
        keep_within_seconds: float | None = None,
        scope: str | None = None,
        namespace: str | None = None,
        prefix: str = "",
        dry_run: bool = False,
        progress: Progress | None = None,
        keep_within_text: str = "",
    ) -> reports.CompactReport:
        """Drop the versions a :class:`~castore.reports.Retention` of these arguments does not keep.

        ``keep_within_text`` is the duration as the user wrote it, for the report's policy.

        Raises:
            InvalidValueError: no policy given, or a negative one.
            InvalidRefError: bad filters.
            LockTimeoutError: a ref stayed locked for the lock timeout.
        """
        check_flag(dry_run, "dry_run")
        check_callable(progress, "progress", optional=True)
        retention = reports.Retention(
            keep_last=keep_last,
            keep_within_seconds=keep_within_seconds,
            scope=scope,
            namespace=namespace,
            prefix=prefix,
            keep_within_text=keep_within_text,
        )
        return self._backend.compact(retention, dry_run=dry_run, progress=progress)

    def stats(self) -> reports.StoreStats:
        """Counts of keys, versions, values and bytes, per scope and in total."""
        return self._backend.stats()
