"""The decisions of Store's writes: Dagu's guards, and what set, delete and diff append.

A decision (:data:`~castore.backend.Decide`) runs inside the backend's atomic
section for one ref, given the newest entry and a view of the ref
(docs/DESIGN.md, "The backend contract"); so a guard is checked and the
version appended with no write in between. Building one is pure: the audit
record is made by the ``audit`` callable when the decision runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from castore import codec
from castore.argcheck import check_flag, check_integer
from castore.backend import Decide, LogView, NewVersion
from castore.errors import ConflictError
from castore.keys import Ref
from castore.records import OP_DELETE, OP_SET, Audit, Entry
from castore.results import DeleteResult, DiffResult, SetResult

__all__ = [
    "DiffDecision",
    "EditFn",
    "delete_decision",
    "delete_result",
    "diff_result",
    "edit_decision",
    "set_decision",
    "set_result",
]

AuditOf = Callable[[], Audit]
"""Makes the audit record of a write, when its decision appends a version."""

EditFn = Callable[[bytes | None, int], bytes]
"""A read-modify-write's edit: (live value or None, live version or 0) -> new normalized value."""


def _live_version(previous: Entry | None) -> int:
    return previous.version if previous is not None and previous.live else 0


def _check_guards(
    ref: Ref, previous: Entry | None, expected_version: int | None, create_only: bool
) -> int:
    """The live version (0: absent), once ``create_only`` and ``expected_version`` hold.

    Raises:
        ConflictError: a guard failed.
    """
    check_integer(expected_version, "expected_version", optional=True)
    check_flag(create_only, "create_only")
    live = _live_version(previous)
    if create_only and live:
        raise ConflictError(str(ref), None, live, "key exists")
    if expected_version is not None and expected_version != live:
        raise ConflictError(str(ref), expected_version, live)
    return live


def set_decision(
    ref: Ref,
    normalized: bytes,
    expected_version: int | None,
    create_only: bool,
    audit: AuditOf,
) -> Decide:
    """A set's decision: check ``create_only`` and ``expected_version``, then append the value.

    The new version reuses the previous version's blob when the value is the same.
    The decision raises ConflictError when a guard fails.
    """
    digest_hex = codec.hexdigest(normalized)

    def decide(previous: Entry | None, view: LogView) -> NewVersion:
        _check_guards(ref, previous, expected_version, create_only)
        return _set_version(normalized, digest_hex, previous, view, audit)

    return decide


def _set_version(
    normalized: bytes, digest_hex: str, previous: Entry | None, view: LogView, audit: AuditOf
) -> NewVersion:
    """The version a set appends: its blob is the previous version's when the value is the same."""
    hint = None
    if previous is not None and previous.hash == digest_hex and previous.blob is not None:
        hint = view.absolute(previous.blob)
    return NewVersion(OP_SET, normalized, digest_hex, audit(), hint)


def edit_decision(
    ref: Ref, edit: EditFn, expected_version: int | None, create_only: bool, audit: AuditOf
) -> Decide:
    """A read-modify-write's decision: set's guards, then ``edit`` of the live value, appended.

    The edit reads the value inside the backend's atomic section, so no other
    write can come between the read and the write (``patch``, ``incr``).
    """

    def decide(previous: Entry | None, view: LogView) -> NewVersion:
        live = _check_guards(ref, previous, expected_version, create_only)
        normalized = edit(view.value() if live else None, live)
        return _set_version(normalized, codec.hexdigest(normalized), previous, view, audit)

    return decide


def set_result(ref: Ref, previous: Entry | None, written: list[Entry]) -> SetResult:
    """A set's result: the version it appended; ``created`` if the key was not live before."""
    entry = written[-1]
    return SetResult(
        scope=ref.scope,
        namespace=ref.namespace,
        key=ref.key,
        version=entry.version,
        hash=entry.hash,
        created=previous is None or not previous.live,
    )


def delete_decision(audit: AuditOf) -> Decide:
    """A delete's decision: a tombstone when the key is live, else nothing."""

    def decide(previous: Entry | None, _view: LogView) -> NewVersion | None:
        if previous is None or not previous.live:
            return None
        return NewVersion(OP_DELETE, None, "", audit())

    return decide


def as_it_is(_previous: Entry | None, _view: LogView) -> None:
    """A decision that writes nothing: a durable store makes the key durable as it is.

    For a call that reports a key as it stands (an import's skip, a worker's answer
    sent to its server): FORMAT.md §6 step 3.
    """


def delete_result(ref: Ref, deleted: bool) -> DeleteResult:
    """A delete's result: whether it appended a tombstone."""
    return DeleteResult(scope=ref.scope, namespace=ref.namespace, key=ref.key, deleted=deleted)


class DiffDecision:
    """A diff of ``current`` against a ref's live value; with ``update``, the write if changed.

    Dagu's order: the ``expected_version`` guard comes first (a conflict even
    when unchanged), then the comparison of hashes. :meth:`decide` is the
    decision of a diff with ``update``; :meth:`compare` alone serves one
    without, on the newest entry read outside any lock.
    """

    def __init__(
        self,
        ref: Ref,
        current: bytes,
        expected_version: int | None,
        update: bool,
        audit: AuditOf,
    ) -> None:
        check_integer(expected_version, "expected_version", optional=True)
        check_flag(update, "update")
        self.ref = ref
        self.current = current
        self.digest_hex = codec.hexdigest(current)
        self.expected_version = expected_version
        self.update = update
        self._audit = audit
        self._seen: list[bytes | None] = []
        self._previous: Any = None  # the live value _seen holds, decoded

    def compare(self, previous: Entry | None, load: Callable[[], bytes | None]) -> bool:
        """True if ``current`` differs from the live value (or there is none).

        Raises:
            ConflictError: ``expected_version`` is not the live version.
            CorruptionError: the live value is not JSON (:func:`codec.decode_stored`).
        """
        live = previous if previous is not None and previous.live else None
        actual = live.version if live is not None else 0
        if self.expected_version is not None and self.expected_version != actual:
            raise ConflictError(str(self.ref), self.expected_version, actual)
        # A backend may decide again (a remote store's retry): only the last comparison counts.
        self._seen = [load()] if live is not None else []
        seen = self._seen[0] if self._seen else None
        # Decoded here, before any write: a stored value that is not JSON writes nothing.
        self._previous = None if seen is None else codec.result_value(seen, self.ref, actual)
        return live is None or live.hash != self.digest_hex

    def decide(self, previous: Entry | None, view: LogView) -> NewVersion | None:
        """The decision (a :data:`~castore.backend.Decide`): the new value if it changed."""
        if self.compare(previous, view.value) and self.update:
            return NewVersion(OP_SET, self.current, self.digest_hex, self._audit())
        return None

    def result(self, previous: Entry | None, written: list[Entry]) -> DiffResult:
        """The diff's result, given the newest entry it compared with and what was written."""
        prev_json = self._seen[0] if self._seen else None
        return diff_result(self.ref, previous, written, prev_json, self._previous, self.current)


def diff_result(
    ref: Ref,
    previous: Entry | None,
    written: list[Entry],
    prev_json: bytes | None,
    prev_value: Any,
    current: bytes,
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
        previous=prev_value,
        previous_json=prev_json,
        current=codec.decode_value(current),
        current_json=current,
    )
