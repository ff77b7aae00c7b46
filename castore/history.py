"""History operations, as plain functions over the backend contract.

:class:`castore.Store` exposes them as ``get(version=)``, ``history``,
``rollback`` and ``diff_versions``; they need nothing but a
:class:`~castore.backend.Backend` and a ref. Every version ever written stays
readable until a maintenance tool compacts it (docs/DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from castore import codec
from castore.argcheck import check_integer
from castore.backend import Backend, LogView, NewVersion
from castore.diffbound import opaque_arrays
from castore.errors import ConflictError, InvalidRefError, InvalidValueError, NotFoundError
from castore.keys import Ref
from castore.literals import decode_literal as literal
from castore.records import OP_DELETE, OP_ROLLBACK, Audit, Entry
from castore.results import (
    GetResult,
    HistoryEntry,
    HistoryResult,
    RollbackResult,
    VersionDiff,
    rfc3339,
)

__all__ = [
    "DIFF_DEPTH",
    "diff_versions",
    "found_result",
    "get_version",
    "history_entry",
    "history_page",
    "json_patch",
    "not_found",
    "rollback",
]


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
    check_integer(version, what)
    if version < 1:
        raise InvalidRefError(f"{what} must be 1 or more, not {version}")


def _version(backend: Backend, ref: Ref, version: int) -> tuple[Entry, bytes | None]:
    """The entry of ``version`` and its value, or NotFoundError naming the version."""
    _check_version(version, "version")
    entry, value = backend.version(ref, version)
    if entry is None:
        raise NotFoundError(f"{ref} has no version {version}")
    return entry, value


def get_version(
    backend: Backend, ref: Ref, version: int, required: bool, default: Any, has_default: bool
) -> GetResult:
    """``Store.get(version=...)``: a tombstone reads as not found, with ``default`` if given."""
    entry, value = _version(backend, ref, version)
    if value is None:  # a tombstone
        if required:
            raise NotFoundError(f"{ref} version {version} is a delete")
        return not_found(ref, False, default, has_default)
    return found_result(ref, entry, value)


def found_result(ref: Ref, entry: Entry, value: bytes) -> GetResult:
    """The ``get`` answer for a live version and its (verified) value."""
    return GetResult(
        scope=ref.scope,
        namespace=ref.namespace,
        key=ref.key,
        found=True,
        version=entry.version,
        hash=entry.hash,
        value=codec.result_value(value, ref, entry.version),
        value_json=value,
    )


def not_found(ref: Ref, required: bool, default: Any, has_default: bool) -> GetResult:
    """``Store.get`` of a key without a live version: not found, with ``default`` (normalized).

    Raises:
        NotFoundError: ``required`` is True.
        InvalidValueError: ``default`` is not valid JSON data.
    """
    if required:
        raise NotFoundError(str(ref))
    value_json = codec.normalize(default) if has_default else None
    return GetResult(
        scope=ref.scope,
        namespace=ref.namespace,
        key=ref.key,
        found=False,
        value=None if value_json is None else codec.result_value(value_json, "default"),
        value_json=value_json,
    )


def history_page(
    backend: Backend, ref: Ref, limit: int, before_version: int | None
) -> HistoryResult:
    """``Store.history``: one page of versions, newest first."""
    check_integer(limit, "limit")
    if limit < 0:
        raise InvalidRefError("limit must be greater than or equal to zero")
    if before_version is not None:
        _check_version(before_version, "before_version")
    before = before_version if before_version is not None else 2**63
    entries = backend.history(ref, before, limit + 1 if limit else 0)  # one more: is there?
    more = bool(limit) and len(entries) > limit
    entries = entries[:limit] if more else entries
    return HistoryResult(
        scope=ref.scope,
        namespace=ref.namespace,
        key=ref.key,
        entries=[history_entry(e) for e in entries],
        next_before_version=entries[-1].version if more else 0,
    )


def rollback(
    backend: Backend,
    ref: Ref,
    to_version: int,
    expected_version: int | None,
    audit: Callable[[int], Audit],
) -> RollbackResult:
    """``Store.rollback``: a new version whose value is ``to_version``'s.

    ``audit(to_version)`` makes the audit record of the new version.
    """
    _check_version(to_version, "to_version")
    check_integer(expected_version, "expected_version", optional=True)

    def decide(previous: Entry | None, view: LogView) -> NewVersion | None:
        live = previous.version if previous is not None and previous.live else 0
        if expected_version is not None and expected_version != live:
            raise ConflictError(str(ref), expected_version, live)
        target = view.entry_at(to_version)
        if target is None:
            raise NotFoundError(f"{ref} has no version {to_version}")
        if not target.live:
            return NewVersion(OP_DELETE, None, "", audit(to_version)) if live else None
        value = view.value_at(target)
        if value is not None:  # never a new version of bytes that are not JSON
            codec.check_stored(value, ref, to_version)
        hint = view.absolute(target.blob) if target.blob is not None else None
        return NewVersion(OP_ROLLBACK, value, target.hash, audit(to_version), hint)

    previous, written = backend.write(ref, decide)
    if not written:  # a rollback to a delete of a key already absent: nothing to write
        return RollbackResult(
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            version=previous.version if previous is not None else 0,
            hash="",
            to_version=to_version,
            deleted=False,
            created=False,
        )
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


DIFF_DEPTH = 200
"""The deepest nesting a version diff compares: ``jsonpatch`` and the patch's rendering
recurse a few Python frames per level, so deeper values (which ``set`` accepts, up to
:data:`codec.MAX_DEPTH`) are refused with a clear error instead of a ``RecursionError``."""


def _deeper_than(value: Any, limit: int) -> bool:
    """True if ``value`` (decoded JSON) nests arrays and objects deeper than ``limit``."""
    level: list[tuple[Any, int]] = [(value, 0)]
    while level:
        node, depth = level.pop()
        if isinstance(node, (dict, list)):
            if depth == limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            level.extend((child, depth + 1) for child in children)
    return False


def _normalized_text(value: Any) -> str:
    """How a version diff tells values apart: by their normalized JSON."""
    return codec.normalize_python(value).decode("utf-8")


def diff_versions(
    backend: Backend, ref: Ref, from_version: int, to_version: int | None
) -> VersionDiff:
    """``Store.diff_versions``: an RFC 6902 JSON Patch between two stored versions."""
    _check_version(from_version, "from_version")
    if to_version is not None:
        _check_version(to_version, "to_version")
    else:
        newest = backend.current(ref).entry
        if newest is None:
            raise NotFoundError(str(ref))
        to_version = newest.version
    old_entry, old = _version(backend, ref, from_version)
    new_entry, new = _version(backend, ref, to_version)
    # Numbers as written, compared as their normalized bytes: 1.50 -> 1.5 is a change.
    before: Any = None if old is None else codec.decode_stored(old, ref, from_version, literal)
    after: Any = None if new is None else codec.decode_stored(new, ref, to_version, literal)
    for version, value in ((from_version, before), (to_version, after)):
        if _deeper_than(value, DIFF_DEPTH):
            raise InvalidValueError(
                f"{ref} version {version} nests deeper than {DIFF_DEPTH} levels, deeper than "
                "a version diff compares: compare the values get --version prints"
            )
    return VersionDiff(
        scope=ref.scope,
        namespace=ref.namespace,
        key=ref.key,
        from_version=from_version,
        to_version=to_version,
        from_hash=old_entry.hash,
        to_hash=new_entry.hash,
        patch=json_patch(before, after),
    )


def json_patch(before: Any, after: Any) -> list[dict[str, Any]]:
    """An RFC 6902 JSON Patch from ``before`` to ``after``, in bounded work.

    The arrays too costly to compare item by item are replaced whole (castore/diffbound.py).
    """
    import jsonpatch  # only version diffs use it: not loaded by get/set (CLI start-up)

    source = opaque_arrays(before, after)
    return list(jsonpatch.JsonPatch.from_diff(source, after, dumps=_normalized_text).patch)
