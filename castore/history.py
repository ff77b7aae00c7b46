"""History operations of :class:`castore.Store`: versions, audit, rollback, version diffs.

A mixin so that ``store.py`` stays the home of Dagu's five operations; both
act on the same backend. Every version ever written stays readable until a
maintenance tool compacts it (docs/DESIGN.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jsonpatch

from castore import codec
from castore.backend import LogView, Write
from castore.errors import ConflictError, InvalidRefError, NotFoundError
from castore.keys import Ref
from castore.records import OP_DELETE, OP_ROLLBACK, Entry
from castore.results import (
    GetResult,
    HistoryEntry,
    HistoryResult,
    RollbackResult,
    VersionDiff,
    rfc3339,
)

if TYPE_CHECKING:
    from castore.backend import Backend
    from castore.records import Audit

__all__ = ["History", "history_entry"]


def history_entry(entry: Entry) -> HistoryEntry:
    """The public view of one stored entry."""
    audit = entry.audit
    return HistoryEntry(
        version=entry.version,
        operation=entry.op,
        hash=entry.hash,
        time=rfc3339(entry.time_ns),
        dag_name=audit.dag_name,
        run_id=audit.run_id,
        step_name=audit.step_name,
        attempt=audit.attempt,
        user=audit.user,
        host=audit.host,
        pid=audit.pid,
        actor=audit.actor,
        reason=audit.reason,
        rollback_from=audit.rollback_from,
        damaged_from=entry.damaged_from,
    )


def _check_version(version: int, what: str) -> None:
    if version < 1:
        raise InvalidRefError(f"{what} must be 1 or more, not {version}")


class History:
    """Version-aware reads and writes; mixed into :class:`castore.Store`."""

    _backend: Backend

    def ref(self, key: str, scope: str = "dag", namespace: str | None = None) -> Ref:
        """Validate and resolve a ref (implemented by Store)."""
        raise NotImplementedError

    def _audit(self, reason: str = "", rollback_from: int = 0) -> Audit:
        raise NotImplementedError

    def _version(self, ref: Ref, version: int) -> tuple[Entry, bytes | None]:
        """The entry of ``version`` and its value, or NotFoundError naming the version."""
        _check_version(version, "version")
        entry, value = self._backend.version(ref, version)
        if entry is None:
            raise NotFoundError(f"{ref} has no version {version}")
        return entry, value

    def _get_version(self, ref: Ref, version: int, required: bool) -> GetResult:
        entry, value = self._version(ref, version)
        if value is None:  # a tombstone
            if required:
                raise NotFoundError(f"{ref} version {version} is a delete")
            return GetResult(scope=ref.scope, namespace=ref.namespace, key=ref.key, found=False)
        return GetResult(
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            found=True,
            version=entry.version,
            hash=entry.hash,
            value=codec.decode_value(value),
            value_json=value,
        )

    def history(
        self,
        key: str,
        *,
        scope: str = "dag",
        namespace: str | None = None,
        limit: int = 0,
        before_version: int | None = None,
    ) -> HistoryResult:
        """Versions of a key, newest first, with their audit records.

        Page with ``limit`` and ``before_version`` (versions strictly below it);
        the cost of a page does not grow with the length of the history.

        Raises:
            InvalidRefError: bad scope, namespace, key, limit or before_version.
        """
        ref = self.ref(key, scope, namespace)
        if limit < 0:
            raise InvalidRefError("limit must be greater than or equal to zero")
        if before_version is not None:
            _check_version(before_version, "before_version")
        before = before_version if before_version is not None else 2**63
        entries = self._backend.history(ref, before, limit)
        lowest = entries[-1].version if entries else 0
        more = bool(limit) and len(entries) == limit and lowest > 1
        return HistoryResult(
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            entries=[history_entry(e) for e in entries],
            next_before_version=lowest if more else 0,
        )

    def rollback(
        self,
        key: str,
        *,
        to_version: int,
        scope: str = "dag",
        namespace: str | None = None,
        expected_version: int | None = None,
        reason: str = "",
    ) -> RollbackResult:
        """Append a new version whose value is version ``to_version``'s.

        The new entry points at the same blob (same hash, nothing copied) and
        its audit records ``rollback_from``. Rolling back to a tombstone
        deletes the key. ``expected_version`` works as in :meth:`set`.

        Raises:
            InvalidRefError: bad scope, namespace, key or version.
            NotFoundError: ``to_version`` does not exist (never written, or compacted).
            ConflictError: ``expected_version`` did not match.
            CorruptionError: the old value fails verification.
            LockTimeoutError: the key stayed locked for the lock timeout.
        """
        ref = self.ref(key, scope, namespace)
        _check_version(to_version, "to_version")

        def decide(previous: Entry | None, view: LogView) -> Write:
            live = previous.version if previous is not None and previous.live else 0
            if expected_version is not None and expected_version != live:
                raise ConflictError(str(ref), expected_version, live)
            target = view.entry_at(to_version)
            if target is None:
                raise NotFoundError(f"{ref} has no version {to_version}")
            audit = self._audit(reason, rollback_from=to_version)
            if not target.live:
                return Write(OP_DELETE, None, "", audit)
            value = view.value_at(target)
            hint = view.absolute(target.blob) if target.blob is not None else None
            return Write(OP_ROLLBACK, value, target.hash, audit, hint)

        previous, written = self._backend.write(ref, decide)
        entry = written[-1]
        return RollbackResult(
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            version=entry.version,
            hash=entry.hash,
            to_version=to_version,
            deleted=not entry.live,
            created=entry.live and (previous is None or not previous.live),
        )

    def diff_versions(
        self,
        key: str,
        *,
        from_version: int,
        to_version: int | None = None,
        scope: str = "dag",
        namespace: str | None = None,
    ) -> VersionDiff:
        """A structural diff between two stored versions, as an RFC 6902 JSON Patch.

        ``to_version`` defaults to the newest version. Tombstones compare as
        ``null``. Applying ``patch`` to the old value gives the new one.

        Raises:
            InvalidRefError: bad scope, namespace, key or version.
            NotFoundError: a version does not exist.
            CorruptionError: a value fails verification.
        """
        ref = self.ref(key, scope, namespace)
        if to_version is None:
            newest = self._backend.current(ref).entry
            if newest is None:
                raise NotFoundError(str(ref))
            to_version = newest.version
        old_entry, old = self._version(ref, from_version)
        new_entry, new = self._version(ref, to_version)
        before: Any = codec.decode_value(old) if old is not None else None
        after: Any = codec.decode_value(new) if new is not None else None
        patch = jsonpatch.make_patch(before, after).patch
        return VersionDiff(
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            from_version=from_version,
            to_version=to_version,
            from_hash=old_entry.hash,
            to_hash=new_entry.hash,
            patch=list(patch),
        )
