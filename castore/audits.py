"""The audit record of each write a handle makes, built once per distinct input.

A write's audit record (:mod:`castore.identity`) depends on the handle's
``actor``, ``run_id``, ``step`` and ``dag``, the write's reason, the
environment (read on every write: a long-running process may change it) and
the process (a forked child is another). Building and checking it costs more
than reading those inputs, so a handle keeps the records it built, by their
inputs: a loop of writes builds one.
"""

from __future__ import annotations

import msgspec

from castore.argcheck import check_text
from castore.identity import ProcessIdentity, audit_fields, environment, refuse_invalid_text
from castore.records import Audit

__all__ = ["AuditMaker"]

_KEPT = 256  # distinct records a handle keeps (each write's own reason would churn them)


class AuditMaker:
    """Audit records by their inputs. Safe for threads: each step is one dictionary operation."""

    def __init__(self) -> None:
        self._identity = ProcessIdentity()
        self._made: dict[tuple[object, ...], Audit] = {}

    def make(
        self,
        who: tuple[str | None, str | None, str | None],
        dag: str | None,
        reason: str,
        rollback: int,
    ) -> Audit:
        """The record of a write made now by this process (:func:`~castore.identity.audit_fields`).

        Args:
            who: the handle's ``(actor, run_id, step)``; None means the environment's.
            dag: the DAG name the handle was given; None means ``$DAG_NAME``.
            reason: the write's free text.
            rollback: the version a rollback restores (0: not a rollback).

        Raises:
            TypeError: ``reason`` or a field of ``who`` is not a str.
            InvalidValueError: a field is not UTF-8 text or is too long.
        """
        check_text(reason, "reason")
        for name, given in zip(("actor", "run_id", "step"), who, strict=True):
            check_text(given, name, optional=True)
        seen = environment(), self._identity.current()  # read once: the key and the record
        inputs = (who, dag, reason, rollback, *seen)
        made = self._made.get(inputs)
        if made is None:
            fields = audit_fields(self._identity, *who, reason, rollback, dag=dag, seen=seen)
            refuse_invalid_text(fields)
            made = Audit(**fields)  # type: ignore[arg-type]  # each value is of its field's type
            self._keep(inputs, made)
        return made

    def for_caller(self, caller: Audit, reason: str, rollback: int) -> Audit:
        """``caller``'s record (``Store.for_caller``) with this write's reason and rollback.

        Raises:
            TypeError: ``reason`` is not a str.
            InvalidValueError: ``reason`` is not UTF-8 text or is too long.
        """
        check_text(reason, "reason")
        inputs = (caller, reason, rollback)
        made = self._made.get(inputs)
        if made is None:
            refuse_invalid_text({"reason": reason})
            made = msgspec.structs.replace(caller, reason=reason, rollback_from=rollback)
            self._keep(inputs, made)
        return made

    def _keep(self, inputs: tuple[object, ...], made: Audit) -> None:
        if len(self._made) >= _KEPT:
            self._made.clear()
        self._made[inputs] = made
