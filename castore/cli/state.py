"""Dagu's five state commands: ``get``, ``set``, ``diff``, ``delete``, ``list``.

Each prints one JSON line with Dagu's field names and order (docs/CLI.md);
``diff --from-version`` compares two stored versions instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

from castore import codec
from castore.cli.errors import OptionError, UsageError, worded
from castore.cli.invocation import Command, Invocation, value_bytes
from castore.cli.render import render, render_patch_text
from castore.cli.streams import say
from castore.errors import InvalidValueError
from castore.keys import go_trim_space

__all__ = ["COMMANDS"]


def _default(text: str | None) -> dict[str, bytes]:
    """``--default`` normalized, checked before the read (not only on a miss).

    Raises:
        OptionError: it is not one JSON value of at most 1 MiB (exit 2, named).
    """
    if text is None:
        return {}
    try:
        return {"default": codec.normalize_json(os.fsencode(text))}
    except InvalidValueError as exc:
        raise OptionError(f"--default: {worded(exc)}") from None


def _get(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    extra = _default(a.default)
    yield render(
        cmd.store.get(
            cmd.key(),
            scope=cmd.scope,
            namespace=cmd.namespace,
            required=a.required,
            version=a.version,
            **extra,
        )
    )


def _set(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    yield render(
        cmd.store.set(
            cmd.key(),
            value_bytes(a),
            scope=cmd.scope,
            namespace=cmd.namespace,
            expected_version=a.expected_version,
            create_only=a.create_only,
            reason=a.reason,
        )
    )


def _diff(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    if a.from_version is not None:
        yield from _diff_versions(cmd)
        return
    for given, option in ((a.to_version is not None, "--to-version"), (a.format, "--format")):
        if given:
            raise UsageError(f"{option} needs --from-version (a version diff)")
    yield render(
        cmd.store.diff(
            cmd.key(),
            value_bytes(a),
            scope=cmd.scope,
            namespace=cmd.namespace,
            update=not a.no_update,
            expected_version=a.expected_version,
            reason=a.reason,
        )
    )


def _diff_versions(cmd: Invocation) -> Iterator[bytes]:
    a, s = cmd.args, cmd.store
    if a.value != "-":
        raise UsageError("a version diff takes no VALUE")
    misplaced = (
        (a.no_update, "--no-update"),
        (a.expected_version is not None, "--expected-version"),
        (a.reason, "--reason"),
    )
    for given, option in misplaced:
        if given:
            raise UsageError(f"a version diff writes nothing: {option} does not apply")
    diff = s.diff_versions(
        cmd.key(),
        from_version=a.from_version,
        to_version=a.to_version,
        scope=cmd.scope,
        namespace=cmd.namespace,
    )
    if a.format in (None, "json"):
        yield render(diff)
        return
    before = s.get(cmd.key(), scope=cmd.scope, namespace=cmd.namespace, version=a.from_version)
    from castore.literals import decode_literal  # numbers as the versions wrote them

    old = None if before.value_json is None else decode_literal(before.value_json)
    yield render_patch_text(diff, old).encode("utf-8")


def _delete(cmd: Invocation) -> Iterator[bytes]:
    yield render(
        cmd.store.delete(
            cmd.key(), scope=cmd.scope, namespace=cmd.namespace, reason=cmd.args.reason
        )
    )


def _list(cmd: Invocation) -> Iterator[bytes]:
    a = cmd.args
    result = cmd.store.list(
        go_trim_space(a.prefix),
        scope=cmd.scope,
        namespace=cmd.namespace,
        limit=a.limit,
        include_values=a.include_values,
    )
    for key in result.skipped:
        say(f"castore: warning: skipped unreadable key {key!r}\n")  # stderr may be closed
    yield render(result)


COMMANDS: Final[dict[str, Command]] = {
    "get": _get,
    "set": _set,
    "diff": _diff,
    "delete": _delete,
    "list": _list,
}
