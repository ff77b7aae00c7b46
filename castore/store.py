"""The Store: Dagu's five state operations over content-addressed, versioned refs.

``Store`` behaves like a ``Mapping[Ref, list[Entry]]`` whose last entry is
current: every write appends a version to the ref's log, a delete appends a
tombstone, and versions never repeat. See docs/DESIGN.md for the contract and
docs/FORMAT.md for the bytes.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from typing import Any, Final, final

from castore import codec, history
from castore.backend import LOCK_TIMEOUT_SECONDS, Backend, Decide, LogView, NewVersion, Progress
from castore.backends import open_backend
from castore.errors import ConflictError, NotFoundError
from castore.keys import (
    Ref,
    env_or,
    resolve_namespace,
    validate_key,
    validate_limit,
    validate_prefix,
)
from castore.listing import list_live
from castore.records import OP_DELETE, OP_SET, Audit, Entry
from castore.reports import (
    GC_GRACE_SECONDS,
    CheckReport,
    CompactReport,
    GCReport,
    Retention,
    StoreStats,
)
from castore.results import (
    DeleteResult,
    DiffResult,
    GetResult,
    HistoryResult,
    ListResult,
    RollbackResult,
    SetResult,
    VersionDiff,
)

__all__ = ["Store", "default_root"]

_UNSET: Final = object()
_REFS_CACHED: Final = 4096  # resolved refs a handle remembers


def _diff_result(
    ref: Ref, previous: Entry | None, written: list[Entry], prev_json: bytes | None, current: bytes
) -> DiffResult:
    """Dagu's diff output: the stored hash when nothing was written (``update=False``)."""
    live = previous if previous is not None and previous.live else None
    digest_hex = codec.hexdigest(current)
    return DiffResult(
        scope=ref.scope,
        namespace=ref.namespace,
        key=ref.key,
        changed=live is None or live.hash != digest_hex,
        found_previous=live is not None,
        previous_version=live.version if live else 0,
        version=written[-1].version if written else (live.version if live else 0),
        hash=written[-1].hash if written else (live.hash if live else ""),
        previous=None if prev_json is None else codec.decode_value(prev_json),
        previous_json=prev_json,
        current=codec.decode_value(current),
        current_json=current,
    )


def default_root() -> str:
    """``$CASTORE_DIR``, else ``$XDG_DATA_HOME/castore``, else ``~/.local/share/castore``."""
    if os.environ.get("CASTORE_DIR"):
        return os.environ["CASTORE_DIR"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "castore")


@final
class Store:
    """A castore store rooted at one directory.

    Safe for many processes on one machine (file locks) and for many threads
    sharing one handle (each call opens its own descriptors; the caches are
    guarded). Nothing outside the store root is ever touched, whatever links
    the directory holds (docs/RELIABILITY.md, "Security").

    Args:
        path: store directory; None means :func:`default_root`. Created on
            first use.
        dag: the current DAG name (namespace of scope ``dag``); None means
            ``$DAG_NAME``.
        root_dag: the root DAG name (namespace of scope ``root_dag``); None
            means ``$CASTORE_ROOT_DAG``, falling back to ``dag``.
        durable: when True (default) a returned set/delete survives a power
            loss; when False the store stays consistent after a process crash
            but an OS crash may lose recent writes (docs/DESIGN.md).
        lock_timeout: seconds to wait for a ref's lock before
            :class:`~castore.errors.LockTimeoutError`.
        actor: who writes, recorded in the audit; None means ``$CASTORE_ACTOR``.
        run_id: run id for the audit; None means ``$DAG_RUN_ID``.
        step: step name for the audit; None means ``$DAG_RUN_STEP_NAME``.

    Raises:
        FormatVersionError: the directory holds another format, or is a
            non-empty directory that is not a castore store.
        BackendUnavailableError: ``path`` is a ``postgresql://``,
            ``postgres://``, ``http://`` or ``https://`` location, whose
            backends are not available yet (:mod:`castore.backends`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        dag: str | None = None,
        root_dag: str | None = None,
        durable: bool = True,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
        actor: str | None = None,
        run_id: str | None = None,
        step: str | None = None,
    ) -> None:
        location = os.fspath(path) if path else default_root()
        self._backend = open_backend(location, durable=durable, lock_timeout=lock_timeout)
        self.root = os.path.abspath(location)
        self.dag = env_or(dag, "DAG_NAME")
        self.root_dag = env_or(root_dag, "CASTORE_ROOT_DAG")
        self.durable = durable
        self.lock_timeout = lock_timeout
        self.actor = actor
        self.run_id = run_id
        self.step = step
        self._identity: tuple[int, str, str] | None = None
        self._refs: dict[tuple[str, str, str | None, str | None, str | None], Ref] = {}

    # -- store directory -----------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The storage behind this store, through the backend contract (castore's own tools)."""
        return self._backend

    def close(self) -> None:
        """Drop cached state and close the cached directory descriptors.

        The handle stays usable (they are opened again on use), but ``close``
        must not run while other threads use the handle.
        """
        self._backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- refs and paths ------------------------------------------------------------------

    def ref(self, key: str, scope: str = "dag", namespace: str | None = None) -> Ref:
        """Validate and resolve ``(scope, namespace, key)`` into a :class:`Ref`.

        Raises:
            InvalidRefError: bad scope, namespace or key.
        """
        asked = (key, scope, namespace, self.dag, self.root_dag)
        try:
            ref = self._refs.get(asked)
        except TypeError:  # an unhashable argument: validation below names it
            ref = None
        if ref is None:  # validation is pure: a handle remembers the refs it resolved
            ns = resolve_namespace(scope, namespace, dag=self.dag, root_dag=self.root_dag)
            ref = Ref(scope, ns, validate_key(key))
            if len(self._refs) >= _REFS_CACHED:
                self._refs.clear()
            self._refs[asked] = ref
        return ref

    # -- reading -------------------------------------------------------------------------

    def get(
        self,
        key: str,
        *,
        scope: str = "dag",
        namespace: str | None = None,
        default: Any = _UNSET,
        required: bool = False,
        version: int | None = None,
    ) -> GetResult:
        """Read the latest version of a key, or the given ``version``.

        Lock-free; never sees a partly written version. When the key is absent
        (never set, or deleted) ``found`` is False and ``value`` is ``default``
        (normalized) if one was given. A ``version`` that is a tombstone reads
        as not found; one that does not exist raises NotFoundError.

        Raises:
            InvalidRefError: bad scope, namespace or key.
            InvalidValueError: ``default`` is not valid JSON data.
            NotFoundError: the key is absent and ``required`` is True, or
                ``version`` does not exist (never written, or compacted).
            CorruptionError: the stored value fails verification.
        """
        ref = self.ref(key, scope, namespace)
        if version is not None:
            return history.get_version(self._backend, ref, version, required)
        current = self._backend.current(ref)
        entry = current.live
        if entry is not None and current.value is not None:
            return history.found_result(ref, entry, current.value)
        if required:
            raise NotFoundError(str(ref))
        value_json = None if default is _UNSET else codec.normalize(default)
        return GetResult(
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            found=False,
            value=None if value_json is None else codec.decode_value(value_json),
            value_json=value_json,
        )

    # -- writing -------------------------------------------------------------------------

    def _audit(self, reason: str = "", rollback_from: int = 0) -> Audit:
        pid = os.getpid()
        if self._identity is None or self._identity[0] != pid:
            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = ""
            self._identity = (pid, user, socket.gethostname())
        env = os.environ
        return Audit(
            dag_name=env.get("DAG_NAME", ""),
            run_id=self.run_id if self.run_id is not None else env.get("DAG_RUN_ID", ""),
            step_name=self.step if self.step is not None else env.get("DAG_RUN_STEP_NAME", ""),
            attempt=env.get("DAG_RUN_ATTEMPT_ID", ""),
            user=self._identity[1],
            host=self._identity[2],
            pid=pid,
            actor=self.actor if self.actor is not None else env.get("CASTORE_ACTOR", ""),
            reason=reason,
            rollback_from=rollback_from,
        )

    def _set_plan(
        self,
        ref: Ref,
        normalized: bytes,
        expected_version: int | None,
        create_only: bool,
        reason: str,
    ) -> Decide:
        digest_hex = codec.hexdigest(normalized)

        def decide(previous: Entry | None, view: LogView) -> NewVersion:
            live = previous.version if previous is not None and previous.live else 0
            if create_only and live:
                raise ConflictError(str(ref), None, live, "key exists")
            if expected_version is not None and expected_version != live:
                raise ConflictError(str(ref), expected_version, live)
            hint = None
            if previous is not None and previous.hash == digest_hex and previous.blob is not None:
                hint = view.absolute(previous.blob)
            return NewVersion(OP_SET, normalized, digest_hex, self._audit(reason), hint)

        return decide

    def set(
        self,
        key: str,
        value: Any,
        *,
        scope: str = "dag",
        namespace: str | None = None,
        expected_version: int | None = None,
        create_only: bool = False,
        reason: str = "",
    ) -> SetResult:
        """Write a new version of a key (even when the value is unchanged).

        Atomic and serialized per key. ``expected_version`` must equal the
        live version (0 = the key must not exist); ``create_only`` requires the
        key to be absent. Versions keep increasing across deletes. When
        ``durable``, the version survives a power loss once this returns.

        Args:
            key: the key.
            value: Python data (dict, list, str, int, float, bool, None) or
                ``bytes`` holding JSON text.
            scope: ``dag``, ``root_dag``, ``global`` or ``custom``.
            namespace: overrides the scope's default namespace.
            expected_version: optimistic-concurrency guard.
            create_only: fail if the key exists.
            reason: free text recorded in the audit record.

        Raises:
            InvalidRefError: bad scope, namespace or key.
            InvalidValueError: the value is not one JSON value.
            ValueTooLargeError: raw or normalized value over 1 MiB.
            ConflictError: a guard failed; carries expected and actual versions.
            LockTimeoutError: the key stayed locked for ``lock_timeout`` seconds.
        """
        ref = self.ref(key, scope, namespace)
        normalized = codec.normalize(value)
        previous, written = self._backend.write(
            ref, self._set_plan(ref, normalized, expected_version, create_only, reason)
        )
        entry = written[-1]
        return SetResult(
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            version=entry.version,
            hash=entry.hash,
            created=previous is None or not previous.live,
        )

    def delete(
        self, key: str, *, scope: str = "dag", namespace: str | None = None, reason: str = ""
    ) -> DeleteResult:
        """Delete a key by appending a tombstone version.

        ``deleted`` is False (and nothing is written) when the key is absent.

        Raises:
            InvalidRefError: bad scope, namespace or key.
            LockTimeoutError: the key stayed locked for ``lock_timeout`` seconds.
        """
        ref = self.ref(key, scope, namespace)
        if not self._backend.exists(ref):
            return DeleteResult(
                scope=ref.scope, namespace=ref.namespace, key=ref.key, deleted=False
            )

        def decide(previous: Entry | None, _view: LogView) -> NewVersion | None:
            if previous is None or not previous.live:
                return None
            return NewVersion(OP_DELETE, None, "", self._audit(reason))

        _, written = self._backend.write(ref, decide)
        return DeleteResult(
            scope=ref.scope, namespace=ref.namespace, key=ref.key, deleted=bool(written)
        )

    def diff(
        self,
        key: str,
        value: Any,
        *,
        scope: str = "dag",
        namespace: str | None = None,
        update: bool = True,
        expected_version: int | None = None,
        reason: str = "",
    ) -> DiffResult:
        """Compare ``value`` with the stored one and, if changed and ``update``, write it.

        Dagu's semantics: the ``expected_version`` check comes first (a
        conflict even when unchanged); unchanged writes nothing; with
        ``update=False`` a changed value reports the *stored* hash. With
        ``update=True`` the compare and the write happen under the key's
        lock, so no concurrent write can slip between them.

        Raises:
            InvalidRefError: bad scope, namespace or key.
            InvalidValueError: the value is not one JSON value.
            ValueTooLargeError: raw or normalized value over 1 MiB.
            ConflictError: ``expected_version`` did not match.
            CorruptionError: the stored value fails verification.
            LockTimeoutError: the key stayed locked for ``lock_timeout`` seconds.
        """
        ref = self.ref(key, scope, namespace)
        current = codec.normalize(value)
        digest_hex = codec.hexdigest(current)
        seen: list[bytes | None] = []

        def compare(previous: Entry | None, load: Callable[[], bytes | None]) -> bool:
            live = previous if previous is not None and previous.live else None
            actual = live.version if live is not None else 0
            if expected_version is not None and expected_version != actual:
                raise ConflictError(str(ref), expected_version, actual)
            if live is not None:
                seen.append(load())
                return live.hash != digest_hex
            return True

        def decide(previous: Entry | None, view: LogView) -> NewVersion | None:
            if compare(previous, view.value) and update:
                return NewVersion(OP_SET, current, digest_hex, self._audit(reason))
            return None

        written: list[Entry] = []
        if update:
            previous, written = self._backend.write(ref, decide)
        else:
            now = self._backend.current(ref)
            previous = now.entry
            compare(previous, lambda: now.value)
        return _diff_result(ref, previous, written, seen[0] if seen else None, current)

    # -- listing -------------------------------------------------------------------------

    def list(
        self,
        prefix: str = "",
        *,
        scope: str = "dag",
        namespace: str | None = None,
        limit: int = 0,
        include_values: bool = False,
    ) -> ListResult:
        """List live keys of one namespace whose key starts with ``prefix`` (bytes).

        Entries come in byte-wise key order; ``limit`` (0 = all) caps the
        number of live entries. A key whose newest record cannot be read is
        left out and named in ``skipped`` instead of failing the whole list
        (with ``include_values``, the list fails). Damage to the key index
        never hides a key: a key it names without an entry makes the list
        read the keys the logs name.

        Raises:
            InvalidRefError: bad scope, namespace, prefix or limit.
            CorruptionError: ``include_values`` and a key's newest value is unreadable.
        """
        ns = resolve_namespace(scope, namespace, dag=self.dag, root_dag=self.root_dag)
        validate_prefix(prefix)
        validate_limit(limit)
        return list_live(self._backend, scope, ns, prefix, limit, include_values)

    # -- history -------------------------------------------------------------------------

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
        the cost of a page does not grow with the length of the history. A
        ``damaged`` entry marks versions damage made unreadable.

        Raises:
            InvalidRefError: bad scope, namespace, key, limit or before_version.
            CorruptionError: damage follows the newest intact version.
        """
        ref = self.ref(key, scope, namespace)
        return history.history_page(self._backend, ref, limit, before_version)

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

        def audit(to: int) -> Audit:
            return self._audit(reason, rollback_from=to)

        return history.rollback(self._backend, ref, to_version, expected_version, audit)

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
        return history.diff_versions(self._backend, ref, from_version, to_version)

    # -- maintenance ---------------------------------------------------------------------

    def check(self, *, repair: bool = False, progress: Progress | None = None) -> CheckReport:
        """Verify every stored record; with ``repair``, fix what can be fixed.

        Safe while other processes read and write: repairs happen under each
        ref's lock. Damaged originals are kept (in the file backend, under
        ``quarantine/``), never deleted silently.

        Args:
            repair: fix what can be fixed (torn tails, damaged logs, derived files).
            progress: told how many more logs have been checked.

        Returns:
            The findings; ``ok`` is True when nothing is (still) wrong.

        Raises:
            LockTimeoutError: a ref stayed locked for the lock timeout (repair only).
        """
        return self._backend.check(repair=repair, progress=progress)

    def gc(
        self,
        *,
        grace_seconds: float = GC_GRACE_SECONDS,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> GCReport:
        """Free stored values no version references, and old crash leftovers.

        Safe while other processes read and write.

        Args:
            grace_seconds: leftovers of crashed writes younger than this are kept.
            dry_run: only count what would be freed.
            progress: told how many more logs have been swept.

        Returns:
            What was found, kept and freed (or, with ``dry_run``, would be).

        Raises:
            CorruptionError: a log is damaged; run :meth:`check` with ``repair`` first.
            LockTimeoutError: gc or a ref stayed locked for the lock timeout.
        """
        return self._backend.collect_garbage(
            grace_seconds=grace_seconds, dry_run=dry_run, progress=progress
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
    ) -> CompactReport:
        """Drop old versions by a retention policy (see :class:`~castore.reports.Retention`).

        Per key the newest version is always kept; among the others, a version
        is kept when it is one of the last ``keep_last`` or younger than
        ``keep_within_seconds``. A key whose tombstone is older than
        ``keep_within_seconds`` is removed. Versions never repeat afterwards;
        :meth:`gc` frees the values nothing references any more.

        Args:
            keep_last: keep the newest N versions of each key.
            keep_within_seconds: keep versions younger than this.
            scope: only this scope (None: every scope).
            namespace: only this namespace (None: every namespace).
            prefix: only keys starting with this.
            dry_run: only count what would be dropped.
            progress: told how many more keys have been examined.

        Returns:
            What was (or, with ``dry_run``, would be) dropped.

        Raises:
            InvalidRefError: no policy given, a negative one, or bad filters.
            LockTimeoutError: a ref stayed locked for the lock timeout.
        """
        retention = Retention(
            keep_last=keep_last,
            keep_within_seconds=keep_within_seconds,
            scope=scope,
            namespace=namespace,
            prefix=prefix,
        )
        return self._backend.compact(retention, dry_run=dry_run, progress=progress)

    def stats(self) -> StoreStats:
        """Counts of keys, versions, values and bytes, per scope and in total.

        Returns:
            The statistics (the file backend reads every log to count them).
        """
        return self._backend.stats()
