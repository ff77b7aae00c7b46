"""Render results as the CLI's JSON lines (Dagu's field names and order).

The five Dagu operations are rendered field by field, so the bytes match
Dagu's: Go string escaping without HTML escaping for the envelope, and the
stored normalized JSON spliced in verbatim for values. castore's own
commands (history, rollback, version diffs) use camelCase like Dagu's.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer
import msgspec

from castore import codec
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

__all__ = ["encode_line", "render", "render_patch_text"]

Renderable = (
    GetResult
    | SetResult
    | DiffResult
    | DeleteResult
    | ListResult
    | HistoryResult
    | RollbackResult
    | VersionDiff
)
_encoder = msgspec.json.Encoder()


def encode_line(record: msgspec.Struct) -> bytes:
    """One JSON line (without newline) for a record struct."""
    return _encoder.encode(record)


def _str(text: str) -> bytes:
    return codec.encode_string(text, html=False)


def _obj(fields: list[tuple[str, bytes]]) -> bytes:
    return b"{" + b",".join(_str(name) + b":" + value for name, value in fields) + b"}"


def _bool(flag: bool) -> bytes:
    return b"true" if flag else b"false"


def _int(number: int) -> bytes:
    return str(number).encode("ascii")


def _ref(operation: str, scope: str, namespace: str, key: str) -> list[tuple[str, bytes]]:
    return [
        ("operation", _str(operation)),
        ("scope", _str(scope)),
        ("namespace", _str(namespace)),
        ("key", _str(key)),
    ]


def render(result: Renderable) -> bytes:
    """One JSON line (without newline) in Dagu's field order for ``result``."""
    if isinstance(result, HistoryResult):
        out = _ref("history", result.scope, result.namespace, result.key)
        out.append(("entries", _encoder.encode(result.entries)))
        if result.next_before_version:
            out.append(("nextBeforeVersion", _int(result.next_before_version)))
    elif isinstance(result, RollbackResult):
        out = _ref("rollback", result.scope, result.namespace, result.key)
        out += [
            ("version", _int(result.version)),
            ("hash", _str(result.hash)),
            ("toVersion", _int(result.to_version)),
            ("deleted", _bool(result.deleted)),
            ("created", _bool(result.created)),
        ]
    elif isinstance(result, VersionDiff):
        out = _ref("diff", result.scope, result.namespace, result.key)
        out += [
            ("fromVersion", _int(result.from_version)),
            ("toVersion", _int(result.to_version)),
            ("fromHash", _str(result.from_hash)),
            ("toHash", _str(result.to_hash)),
            ("patch", _encoder.encode(result.patch)),
        ]
    elif isinstance(result, GetResult):
        out = _ref("get", result.scope, result.namespace, result.key)
        out.append(("found", _bool(result.found)))
        if result.found:
            out += [("version", _int(result.version)), ("hash", _str(result.hash))]
        if result.value_json is not None:
            out.append(("value", result.value_json))
    elif isinstance(result, SetResult):
        out = _ref("set", result.scope, result.namespace, result.key)
        out += [
            ("version", _int(result.version)),
            ("hash", _str(result.hash)),
            ("created", _bool(result.created)),
        ]
    elif isinstance(result, DiffResult):
        out = _ref("diff", result.scope, result.namespace, result.key)
        out += [("changed", _bool(result.changed)), ("foundPrevious", _bool(result.found_previous))]
        if result.previous_version:
            out.append(("previousVersion", _int(result.previous_version)))
        if result.version:
            out.append(("version", _int(result.version)))
        if result.hash:
            out.append(("hash", _str(result.hash)))
        if result.previous_json is not None:
            out.append(("previous", result.previous_json))
        out.append(("current", result.current_json))
    elif isinstance(result, DeleteResult):
        out = _ref("delete", result.scope, result.namespace, result.key)
        out.append(("deleted", _bool(result.deleted)))
    else:
        out = [
            ("operation", _str("list")),
            ("scope", _str(result.scope)),
            ("namespace", _str(result.namespace)),
        ]
        if result.prefix:
            out.append(("prefix", _str(result.prefix)))
        items = []
        for entry in result.entries:
            fields = _ref("", entry.scope, entry.namespace, entry.key)[1:]
            fields += [
                ("version", _int(entry.version)),
                ("hash", _str(entry.hash)),
                ("createdAt", _str(entry.created_at)),
                ("updatedAt", _str(entry.updated_at)),
            ]
            if entry.value_json is not None:
                fields.append(("value", entry.value_json))
            items.append(_obj(fields))
        out.append(("entries", b"[" + b",".join(items) + b"]"))
    return _obj(out)


def _show(value: Any) -> str:
    return _encoder.encode(value).decode("utf-8")


def render_patch_text(diff: VersionDiff, before: Any) -> str:
    """A readable form of a version diff: one line per change, ``-``/``+``/``~``.

    Args:
        diff: the version diff.
        before: the old value (to show what was removed or replaced).
    """
    ref = f"{diff.scope}/{diff.namespace}/{diff.key}"
    lines = [f"{ref}: version {diff.from_version} -> {diff.to_version}"]
    if not diff.patch:
        lines.append("  (no changes)")
    doc = before
    for op in diff.patch:
        path = op["path"] or "(whole value)"
        kind = op["op"]
        old = jsonpointer.resolve_pointer(doc, op.get("from", op["path"]), None)
        if kind == "add":
            lines.append(f"+ {path}: {_show(op['value'])}")
        elif kind == "remove":
            lines.append(f"- {path}: {_show(old)}")
        elif kind == "replace":
            lines.append(f"~ {path}: {_show(old)} -> {_show(op['value'])}")
        elif kind == "move":
            lines.append(f"> {op['from']} -> {path}")
        else:
            lines.append(f"+ {path}: copy of {op['from']}")
        doc = jsonpatch.apply_patch(doc, [op])
    return "\n".join(lines)
