"""Atomic read-modify-write commands: ``patch`` and ``incr``.

Each applies its edit under the key's lock (:mod:`castore.modify`), so a
shell step needs no compare-and-swap retry loop, and prints one JSON line:
a set's fields with ``operation`` ``patch`` or ``incr``, plus the new value
(``patch --include-value``) or the new number (``incr``); docs/CLI.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import msgspec

from castore.cli.invocation import Command, Invocation, argv_bytes
from castore.cli.render import render
from castore.edits import parse_number

__all__ = ["COMMANDS"]


def _patch(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    result = cmd.store.patch(
        cmd.key(),
        argv_bytes(a.patch),
        merge=a.merge,
        scope=cmd.scope,
        namespace=cmd.namespace,
        expected_version=a.expected_version,
        create_only=a.create_only,
        reason=a.reason,
    )
    if not a.include_value:
        result = msgspec.structs.replace(result, value_json=None)
    yield render(result)


def _incr(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    yield render(
        cmd.store.incr(
            cmd.key(),
            parse_number(a.by),
            a.path,
            scope=cmd.scope,
            namespace=cmd.namespace,
            expected_version=a.expected_version,
            reason=a.reason,
        )
    )


COMMANDS: Final[dict[str, Command]] = {"patch": _patch, "incr": _incr}
