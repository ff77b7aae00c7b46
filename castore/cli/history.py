"""The history commands: ``history`` and ``rollback`` of one key, ``audit`` across keys.

``history`` and ``rollback`` print one JSON line; ``audit`` streams one line
per write or delete, newest first (docs/CLI.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from castore.audit import audit
from castore.cli.errors import UsageError
from castore.cli.invocation import Command, Invocation, progress
from castore.cli.render import encode_line, render
from castore.dagurecord import parse_go_time

__all__ = ["COMMANDS"]

_NS_PER_DAY: Final = 86_400_000_000_000


def _time(text: str | None, option: str, *, end_of_day: bool = False) -> int | None:
    """Unix ns of an RFC 3339 time or a date (its start, or with ``end_of_day`` its last ns).

    Raises:
        UsageError: ``text`` is neither, naming ``option``.
    """
    if text is None:
        return None
    date_only = re.fullmatch(r"\d{4}-\d\d-\d\d", text) is not None
    try:
        # RFC 3339 allows a lower-case t and z (Go's parser, for Dagu's records, does not)
        moment = parse_go_time(text + "T00:00:00Z" if date_only else text.upper())
    except ValueError:
        raise UsageError(f"{option}: bad time {text!r}: use RFC 3339 or YYYY-MM-DD") from None
    if date_only and end_of_day:
        moment += _NS_PER_DAY - 1
    return moment


def _history(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    yield render(
        cmd.store.history(
            cmd.key(),
            scope=cmd.scope,
            namespace=cmd.namespace,
            limit=a.limit,
            before_version=a.before_version,
        )
    )


def _rollback(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    yield render(
        cmd.store.rollback(
            cmd.key(),
            to_version=a.to_version,
            scope=cmd.scope,
            namespace=cmd.namespace,
            expected_version=a.expected_version,
            reason=a.reason,
        )
    )


def _audit(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    since, until = _time(a.since, "--since"), _time(a.until, "--until", end_of_day=True)
    with progress("records") as bar:
        for record in audit(
            cmd.store,
            scope=cmd.filter_scope(),
            namespace=cmd.filter_namespace(),
            run_id=a.run_id,
            actor=a.actor,
            step=a.step,
            since_ns=since,
            until_ns=until,
        ):
            bar.update()
            yield encode_line(record)


COMMANDS: Final[dict[str, Command]] = {
    "history": _history,
    "rollback": _rollback,
    "audit": _audit,
}
