"""Read-modify-write: :meth:`Store.update`, :meth:`Store.patch` and :meth:`Store.incr`.

Plain functions over the backend contract (``Store``'s methods are thin
calls of them), so every backend gets them.

- ``patch`` and ``incr`` compute the new value *inside* the write's
  decision (:func:`~castore.decisions.edit_decision`), under the key's lock:
  they never conflict with concurrent writers, except through an explicit
  ``expected_version`` / ``create_only`` or a JSON Patch ``test``. The
  edits themselves are in :mod:`castore.edits`.
- ``update`` runs arbitrary Python, so it cannot run under the lock: it
  reads, calls ``fn``, and writes with ``expected_version``, retrying on a
  conflict after a jittered, doubling back-off (:func:`retry_conflicts`).

The audit record of a patched or incremented version says what happened:
its ``reason`` is the edit (``patch``, ``merge patch``, ``incr by 1 at /runs``),
followed by ``: `` and the caller's reason when one is given. The version's
operation stays ``set`` (the stored format has no other operations).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from castore import codec
from castore.argcheck import check_integer, check_text
from castore.backend import Backend
from castore.decisions import edit_decision, set_decision, set_result
from castore.errors import ConflictError, InvalidValueError
from castore.identity import MAX_AUDIT_TEXT
from castore.keys import Ref
from castore.records import Audit
from castore.results import IncrResult, PatchResult, SetResult

if TYPE_CHECKING:
    from castore.edits import Edit

__all__ = [
    "BACKOFF_FIRST_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "UPDATE_RETRIES",
    "incr",
    "patch",
    "retry_conflicts",
    "update",
]

UPDATE_RETRIES: Final = 16  # Store.update's default: more retries after the first attempt
BACKOFF_FIRST_SECONDS: Final = 0.001  # the first retry waits up to this; each doubles it
BACKOFF_MAX_SECONDS: Final = 0.1  # no retry waits longer than this

T = TypeVar("T")
AuditFor = Callable[[str], Audit]
"""The audit record of a write made now, given its reason."""


def retry_conflicts(attempt: Callable[[], T], ref: Ref, retries: int) -> T:
    """``attempt()``, again after each ConflictError on ``ref``, at most ``retries`` more times.

    Before retry ``n`` (from 0) it sleeps a random time up to
    ``min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2**n)`` (full jitter),
    so writers that collided spread out instead of colliding again.

    Raises:
        TypeError: ``retries`` is not an int.
        InvalidValueError: ``retries`` is negative.
        ConflictError: the last attempt's conflict, once the retries are spent.
    """
    check_integer(retries, "retries")
    if retries < 0:
        raise InvalidValueError(f"retries must be 0 or more, not {retries}")
    import random  # here: loading it costs every command's start-up ~0.7 ms

    tries = 0
    while True:
        try:
            return attempt()
        except ConflictError as exc:
            if exc.ref != str(ref) or tries >= retries:
                raise
        cap = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2**tries)
        time.sleep(random.uniform(0, cap))  # noqa: S311  # jitter, not a secret
        tries += 1


def _edit_reason(note: str, reason: str) -> str:
    """An edit's audit reason: its note, then the caller's ``reason`` if any.

    The note is shortened (ending in ``…``) where both would pass the bound of
    an audit field: the caller's reason, itself within it, is kept whole.
    """
    whole = f"{note}: {reason}" if reason else note
    if len(whole) <= MAX_AUDIT_TEXT:
        return whole
    room = MAX_AUDIT_TEXT - len(reason) - len("…: ") if reason else MAX_AUDIT_TEXT - 1
    if room < 0:  # no room even for "…: ": the caller's reason alone
        return reason
    return f"{note[:room]}…: {reason}" if reason else f"{note[:room]}…"


def _write_edit(
    backend: Backend,
    ref: Ref,
    edit: Edit,
    guards: tuple[int | None, bool],
    audit: AuditFor,
    reason: str,
) -> SetResult:
    """Run ``edit`` on ``ref``'s live value under its lock and append the result.

    ``guards`` is ``(expected_version, create_only)``. The audit reason is
    the edit's note, then the caller's ``reason`` if any.
    """
    check_text(reason, "reason")
    note = functools.partial(audit, _edit_reason(edit.note, reason))
    decide = edit_decision(ref, edit, guards[0], guards[1], note)
    return set_result(ref, *backend.write(ref, decide))


def update(
    backend: Backend, ref: Ref, fn: Callable[[Any], Any], retries: int, audit: Callable[[], Audit]
) -> SetResult:
    """``Store.update``: read, ``fn``, compare-and-swap, retried on conflict (see the method)."""

    def once() -> SetResult:
        now = backend.current(ref)
        live = now.live
        value = (
            codec.decode_stored(now.value, ref, live.version)
            if live and now.value is not None
            else None
        )
        normalized = codec.normalize(fn(value))
        version = live.version if live is not None else 0
        decide = set_decision(ref, normalized, version, False, audit)
        return set_result(ref, *backend.write(ref, decide))

    return retry_conflicts(once, ref, retries)


def patch(
    backend: Backend,
    ref: Ref,
    document: Any,
    merge: bool,
    guards: tuple[int | None, bool],
    audit: AuditFor,
    reason: str,
) -> PatchResult:
    """``Store.patch``: a JSON Patch or merge patch applied under the key's lock."""
    from castore import edits  # with its decoders, only where used (CLI start-up)

    edit = edits.MergePatch(document) if merge else edits.JsonPatch(document, str(ref))
    edit.where = str(ref)
    done = _write_edit(backend, ref, edit, guards, audit, reason)
    new = codec.decode_value(edit.value)
    return PatchResult(**msgspec.structs.asdict(done), value=new, value_json=edit.value)


def incr(
    backend: Backend,
    ref: Ref,
    by: int | float,
    path: str | None,
    guards: tuple[int | None, bool],
    audit: AuditFor,
    reason: str,
) -> IncrResult:
    """``Store.incr``: add ``by`` to the number at ``path`` under the key's lock."""
    from castore import edits

    edit = edits.Increment(by, path)
    edit.where = str(ref)
    done = _write_edit(backend, ref, edit, guards, audit, reason)
    number: int | float = codec.decode_value(edit.number)  # type: ignore[assignment]
    return IncrResult(**msgspec.structs.asdict(done), number=number, number_json=edit.number)
