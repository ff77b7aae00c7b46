"""Results as the CLI's JSON lines: the field order declared once, written by :mod:`castore.lines`.

The lines of Dagu's five operations and of castore's single-key commands are
declared in :mod:`castore.results` (``GetLine`` ...); each maintenance report
is printed as itself with ``operation`` first (a tagged subclass declared in
:mod:`castore.cli.maintenance`, which renders it with :func:`render_as`, so a
state command never loads the maintenance and transfer code).
Strings of a declared line are written as Go writes them and values verbatim,
so the bytes match Dagu's; history entries, patches and reports are castore's
own and written by msgspec as they are.
"""

from __future__ import annotations

from typing import Any

from castore.lines import encode_json, encode_line, render_as
from castore.results import (
    LINE_TYPES,
    DeleteResult,
    DiffResult,
    GetResult,
    HistoryResult,
    IncrResult,
    ListResult,
    PatchResult,
    RollbackResult,
    SetResult,
    VersionDiff,
)

__all__ = ["encode_line", "render", "render_as", "render_patch_text"]


Renderable = (
    GetResult
    | SetResult
    | PatchResult
    | IncrResult
    | DiffResult
    | DeleteResult
    | ListResult
    | HistoryResult
    | RollbackResult
    | VersionDiff
)


def render(result: Renderable) -> bytes:
    """One JSON line (without newline): ``result`` as its line, ``operation`` first."""
    return render_as(result, LINE_TYPES[type(result)])


def _show(value: Any) -> str:
    return encode_json(value).decode("utf-8")


def _pointer(path: str) -> str:
    """A JSON Pointer as a text line shows it: as a JSON string if it is not all printable.

    A member name may hold a line break: written as it is, it would start a line
    that reads as another change.
    """
    return path if path.isprintable() else _show(path)


def render_patch_text(diff: VersionDiff, before: Any) -> str:
    """A readable form of a version diff: one line per change, ``-``/``+``/``~``.

    Args:
        diff: the version diff.
        before: the old value (to show what was removed or replaced).
    """
    import copy

    import jsonpatch  # only here: the state commands do not load it (CLI start-up)
    import jsonpointer

    ref = f"{diff.scope}/{diff.namespace}/{diff.key}"
    lines = [f"{ref}: version {diff.from_version} -> {diff.to_version}"]
    if not diff.patch:
        lines.append("  (no changes)")
    doc = copy.deepcopy(before)  # changed in place below, as are the values it is given
    for op in copy.deepcopy(diff.patch):
        path = _pointer(op["path"]) or "(whole value)"
        kind = op["op"]
        old = jsonpointer.resolve_pointer(doc, op.get("from", op["path"]), None)
        if kind == "add":
            lines.append(f"+ {path}: {_show(op['value'])}")
        elif kind == "remove":
            lines.append(f"- {path}: {_show(old)}")
        elif kind == "replace":
            lines.append(f"~ {path}: {_show(old)} -> {_show(op['value'])}")
        elif kind == "move":
            lines.append(f"> {_pointer(op['from'])} -> {path}")
        else:
            lines.append(f"+ {path}: copy of {_pointer(op['from'])}")
        doc = jsonpatch.apply_patch(doc, [op], in_place=True)  # a copy per op was quadratic
    return "\n".join(lines)
