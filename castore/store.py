"""The Store: Dagu's five state operations over content-addressed, versioned refs.

``Store`` behaves like a ``Mapping[Ref, list[Entry]]`` whose last entry is
current: every write appends a version to the ref's log, a delete appends a
tombstone, and versions never repeat. See docs/DESIGN.md for the contract and
docs/FORMAT.md for the bytes.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any, Final, final

import msgspec

from castore import codec, history, modify, results
from castore.argcheck import check_callable, check_flag, check_number, check_text
from castore.audits import AuditMaker
from castore.backend import LOCK_TIMEOUT_SECONDS
from castore.backends import backend_kind, default_root, open_backend, redacted
from castore.decisions import DiffDecision, delete_decision, delete_result, set_decision, set_result
from castore.defaults import lock_timeout_of
from castore.identity import check_caller
from castore.keys import (
    Ref,
    RefCache,
    dag_names,
    resolve_namespace,
    validate_limit,
    validate_prefix,
)
from castore.listing import list_live
from castore.maintenance import Maintenance
from castore.records import Audit
from castore.urls import is_url, store_location

__all__ = ["Store", "check_store", "default_root"]

_UNSET: Final = object()


@final
class Store(Maintenance):
    """A castore store: a directory, a PostgreSQL database, or a coordinator's URL.

    Safe for many processes on one machine (file locks) and for many threads
    sharing one handle (each call opens its own descriptors; the caches are
    guarded). Nothing outside the store root is ever touched, whatever links
    the directory holds (docs/RELIABILITY.md, "Security").

    Args:
        path: store directory (made by the first write), ``postgresql://…`` URL, or
            ``http://host:port`` of ``castore serve`` (several, comma-separated:
            a cluster; the token is ``$CASTORE_TOKEN``); None means :func:`default_root`.
        dag: the current DAG name (namespace of scope ``dag``); None means
            ``$DAG_NAME``.
        root_dag: the root DAG name (namespace of scope ``root_dag``); None
            means ``$CASTORE_ROOT_DAG``, falling back to ``dag`` (as does Dagu's
            ``${run.root_name}`` left unresolved: a root run; docs/CLI.md).
        durable: when True (default) a returned set/delete survives a power
            loss; when False the store stays consistent after a process crash
            but an OS crash may lose recent writes (docs/DESIGN.md).
        lock_timeout: seconds to wait for a ref's lock before
            :class:`~castore.errors.LockTimeoutError` (0: try once; at most a day).
        actor: who writes, recorded in the audit; None means ``$CASTORE_ACTOR``.
        run_id: run id for the audit; None means ``$DAG_RUN_ID``.
        step: step name for the audit; None means ``$DAG_RUN_STEP_NAME``.
        mode: ``private`` or ``group`` (FORMAT.md §1); None means ``$CASTORE_MODE``.

    Attributes:
        root: the location as errors, logs and ``repr`` show it, never a credential:
            a directory's absolute path; a URL without user, password or query
            (but ``schema``), so not always one that opens the store again.

    Raises:
        TypeError: an argument of another type (``durable=1``, ``mode=1``), naming it.
        ValueError: ``mode`` (or ``$CASTORE_MODE``) is not private or group,
            ``lock_timeout`` is not a number of seconds from 0 to a day, or
            ``path`` is empty (an unset variable would open the default store).
        FormatVersionError: another format, or not a directory or a castore store.
        BackendUnavailableError: ``path`` is a ``postgresql://`` location and the
            PostgreSQL driver is not installed (:mod:`castore.backends`).
        InvalidValueError: ``path`` is an ``http://`` location that is not a list
            of coordinator URLs.
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
        mode: str | None = None,
    ) -> None:
        lock_timeout = lock_timeout_of(lock_timeout)
        check_flag(durable, "durable")
        location = store_location(path)
        self._backend = open_backend(
            location, durable=durable, lock_timeout=lock_timeout, mode=mode
        )
        self._location = location if is_url(location) else os.path.abspath(location)
        self.root = redacted(self._location)  # public: shown, logged; never a credential
        self.dag, self.root_dag = dag_names(dag, root_dag)
        self._dag_given = dag  # recorded in the audit (None: $DAG_NAME at the write)
        self.durable = durable
        self.lock_timeout = lock_timeout
        self.actor = actor
        self.run_id = run_id
        self.step = step
        self._audits = AuditMaker()  # shared by for_caller's copies: keyed by every input
        self._refs = RefCache()
        self._caller: Audit | None = None  # set by for_caller: who writes, as given

    def for_caller(self, caller: Audit, *, dag: str, root_dag: str = "") -> Store:
        """A handle on the same storage that writes as ``caller`` (a server serving workers).

        Writes record ``caller``'s audit fields as given (the environment and
        this process's user, host and pid are not read); ``dag`` and ``root_dag``
        resolve the ``dag`` and ``root_dag`` scopes. The handle shares this
        one's backend and caches: closing either closes both.

        Raises:
            TypeError: ``caller`` is not an ``Audit`` of texts and ints, or a name not a str.
            InvalidValueError: a pid out of range, or text that is not UTF-8.
        """
        if not isinstance(caller, Audit):
            raise TypeError(f"caller must be an Audit, not {type(caller).__name__}")
        check_caller(msgspec.structs.asdict(caller))
        check_text(dag, "dag")
        check_text(root_dag, "root_dag")
        other = copy.copy(self)
        other._caller = caller
        other.dag, other.root_dag = dag, root_dag or dag
        other._dag_given = dag
        return other

    def __repr__(self) -> str:  # never a credential: the location is redacted
        kind = backend_kind(self._backend)
        return f"Store({redacted(self.root)!r}, backend={kind!r}, dag={self.dag!r})"

    def ref(self, key: str, scope: str = "dag", namespace: str | None = None) -> Ref:
        """Validate and resolve ``(scope, namespace, key)`` into a :class:`Ref`.

        Raises:
            InvalidRefError: bad scope, namespace or key.
        """
        return self._refs.resolve(key, scope, namespace, self.dag, self.root_dag)

    def get(
        self,
        key: str,
        *,
        scope: str = "dag",
        namespace: str | None = None,
        default: Any = _UNSET,
        required: bool = False,
        version: int | None = None,
    ) -> results.GetResult:
        """Read the latest version of a key, or the given ``version``.

        Lock-free; never sees a partly written version. When the key is absent
        (never set, or deleted) ``found`` is False and ``value`` is ``default``
        (normalized) if one was given. A ``version`` that is a tombstone reads
        as not found (with ``default``, as a deleted key); one that does not
        exist raises NotFoundError.

        Raises:
            InvalidRefError: bad scope, namespace or key, or a ``version`` below 1.
            InvalidValueError: ``default`` is not valid JSON data (checked when it is used).
            NotFoundError: the key is absent and ``required`` is True, or
                ``version`` does not exist (never written, or compacted).
            CorruptionError: the stored value fails verification.
        """
        if required is not False:  # one identity test on the hot path: a TypeError first
            check_flag(required, "required")
        ref = self._refs.resolve(key, scope, namespace, self.dag, self.root_dag)
        if version is not None:
            has_default = default is not _UNSET
            return history.get_version(self._backend, ref, version, required, default, has_default)
        current = self._backend.current(ref)
        entry = current.live
        if entry is not None and current.value is not None:  # the hot path, inline
            return history.found_result(ref, entry, current.value)
        return history.not_found(ref, required, default, default is not _UNSET)

    def _audit_now(self, reason: str) -> Callable[[], Audit]:
        """A write's audit record, made (its fields checked) before it reads or writes."""
        made = self._audit(reason)
        return lambda: made

    def _audit(self, reason: str = "", rollback: int = 0) -> Audit:
        if self._caller is not None:
            return self._audits.for_caller(self._caller, reason, rollback)
        return self._audits.make(
            (self.actor, self.run_id, self.step), self._dag_given, reason, rollback
        )

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
    ) -> results.SetResult:
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
        audit = self._audit_now(reason)
        decide = set_decision(ref, codec.normalize(value), expected_version, create_only, audit)
        return set_result(ref, *self._backend.write(ref, decide))

    def delete(
        self, key: str, *, scope: str = "dag", namespace: str | None = None, reason: str = ""
    ) -> results.DeleteResult:
        """Delete a key by appending a tombstone version.

        ``deleted`` is False (and nothing is written) when the key is absent.

        Raises:
            InvalidRefError: bad scope, namespace or key.
            LockTimeoutError: the key stayed locked for ``lock_timeout`` seconds.
        """
        ref = self.ref(key, scope, namespace)
        decide = delete_decision(self._audit_now(reason))  # a bad reason fails found or not
        if not self._backend.exists(ref):
            return delete_result(ref, False)
        _, written = self._backend.write(ref, decide)
        return delete_result(ref, bool(written))

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
    ) -> results.DiffResult:
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
        audit = self._audit_now(reason)  # a bad reason fails changed or not
        plan = DiffDecision(ref, codec.normalize(value), expected_version, update, audit)
        if update:
            return plan.result(*self._backend.write(ref, plan.decide))
        now = self._backend.current(ref)
        plan.compare(now.entry, lambda: now.value)
        return plan.result(now.entry, [])

    def list(
        self,
        prefix: str = "",
        *,
        scope: str = "dag",
        namespace: str | None = None,
        limit: int = 0,
        include_values: bool = False,
    ) -> results.ListResult:
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
        check_flag(include_values, "include_values")
        return list_live(self._backend, scope, ns, prefix, limit, include_values)

    def history(
        self,
        key: str,
        *,
        scope: str = "dag",
        namespace: str | None = None,
        limit: int = 0,
        before_version: int | None = None,
    ) -> results.HistoryResult:
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
    ) -> results.RollbackResult:
        """Append a new version whose value is version ``to_version``'s.

        The new entry points at the same blob (same hash, nothing copied) and
        its audit records ``rollback_from``. Rolling back to a tombstone
        deletes the key; when the key is already absent, nothing is written
        (``deleted`` False, as :meth:`delete` of an absent key).
        ``expected_version`` works as in :meth:`set`.

        Raises:
            InvalidRefError: bad scope, namespace, key or version.
            NotFoundError: ``to_version`` does not exist (never written, or compacted).
            ConflictError: ``expected_version`` did not match.
            CorruptionError: the old value fails verification.
            LockTimeoutError: the key stayed locked for the lock timeout.
        """
        ref = self.ref(key, scope, namespace)
        self._audit(reason)  # a bad reason fails whether the rollback writes or not
        audit = lambda to: self._audit(reason, rollback=to)  # noqa: E731
        return history.rollback(self._backend, ref, to_version, expected_version, audit)

    def diff_versions(
        self,
        key: str,
        *,
        from_version: int,
        to_version: int | None = None,
        scope: str = "dag",
        namespace: str | None = None,
    ) -> results.VersionDiff:
        """A structural diff between two stored versions, as an RFC 6902 JSON Patch.

        ``to_version`` defaults to the newest version. Tombstones compare as
        ``null``. Numbers keep their literal text (a non-integer is a
        :class:`~castore.pyvalues.NumberLiteral`, a float), and a number
        written otherwise (``1.50`` to ``1.5``, ``-0`` to ``0``) is a change:
        applying ``patch`` to the old value gives the new one, byte for byte.
        Arrays that changed too much to compare item by item in bounded work
        are replaced whole (:data:`castore.diffbound.DIFF_ARRAY_WORK`).

        Raises:
            InvalidRefError: bad scope, namespace, key or version.
            NotFoundError: a version does not exist.
            InvalidValueError: a value nests deeper than 200 levels (compare their ``get``).
            CorruptionError: a value fails verification.
        """
        ref = self.ref(key, scope, namespace)
        return history.diff_versions(self._backend, ref, from_version, to_version)

    def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        scope: str = "dag",
        namespace: str | None = None,
        retries: int = modify.UPDATE_RETRIES,
        reason: str = "",
    ) -> results.SetResult:
        """Write ``fn(value)`` over the live value by compare-and-swap, retrying on conflict.

        ``fn`` gets the value as :meth:`get` gives it (None when absent); its
        result is set with ``expected_version`` the version read. After a
        conflict ``fn`` runs again on the new value, after a jittered back-off,
        at most ``retries`` more times, so it must have no side effects.

        Raises:
            ConflictError: still conflicting after ``retries`` retries.
            InvalidRefError, InvalidValueError, ValueTooLargeError, CorruptionError,
            LockTimeoutError: as :meth:`set`.
        """
        check_callable(fn, "fn")
        ref = self.ref(key, scope, namespace)
        return modify.update(self._backend, ref, fn, retries, self._audit_now(reason))

    def patch(
        self,
        key: str,
        patch: Any,
        *,
        merge: bool = False,
        scope: str = "dag",
        namespace: str | None = None,
        expected_version: int | None = None,
        create_only: bool = False,
        reason: str = "",
    ) -> results.PatchResult:
        """Apply a JSON Patch (RFC 6902), or with ``merge`` a merge patch (RFC 7396), atomically.

        Applied to the live value under the key's lock (an absent key patches
        as ``{}``), so it never conflicts with other writers. ``patch`` is JSON
        text as ``bytes``, or Python data. Untouched members keep their bytes;
        the result is stored as :meth:`set` of its JSON text would store it.

        Raises:
            PatchTestError: a ``test`` operation failed (a ConflictError); nothing written.
            ConflictError: ``expected_version`` or ``create_only`` did not hold.
            InvalidValueError: not a patch, or it does not apply to the value.
            InvalidRefError, ValueTooLargeError, CorruptionError, LockTimeoutError: as :meth:`set`.
        """
        ref = self.ref(key, scope, namespace)
        guards = (expected_version, create_only)
        check_flag(merge, "merge")
        self._audit(reason)  # the caller's reason and fields, checked before the edit's note
        return modify.patch(self._backend, ref, patch, merge, guards, self._audit, reason)

    def incr(
        self,
        key: str,
        by: int | float = 1,
        path: str | None = None,
        *,
        scope: str = "dag",
        namespace: str | None = None,
        expected_version: int | None = None,
        reason: str = "",
    ) -> results.IncrResult:
        """Add ``by`` atomically to the number that is the value, or the member at ``path``.

        ``path`` is a JSON Pointer (RFC 6901). Runs under the key's lock, so
        increments never conflict or get lost. An absent key or member counts
        as 0; integers stay exact at any size; floats take Go's float64 form.

        Raises:
            TypeError: ``by`` is not an int or a float.
            InvalidValueError: the target is not a number, ``by`` is not finite, or
                ``path`` is bad.
            ConflictError: ``expected_version`` did not hold.
            InvalidRefError, CorruptionError, LockTimeoutError: as :meth:`set`.
        """
        check_number(by, "by")  # a number's text is parsed by the caller (the CLI's --by)
        ref = self.ref(key, scope, namespace)
        guards = (expected_version, False)
        check_text(path, "path", optional=True)
        self._audit(reason)  # the caller's reason and fields, checked before the edit's note
        return modify.incr(self._backend, ref, by, path, guards, self._audit, reason)


def check_store(value: object) -> None:
    """``value`` is a :class:`Store` (what the whole-store functions take), else TypeError."""
    if not isinstance(value, Store):
        raise TypeError(f"store must be a Store, not {type(value).__name__}")
