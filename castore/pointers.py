"""JSON Pointers (RFC 6901): their parts, and why one cannot be followed in a value.

Pure; the JSON Patch and ``incr --path`` of :mod:`castore.edits` use them.
"""

from __future__ import annotations

import re
from typing import Any, Final

from castore.errors import InvalidValueError

__all__ = ["ARRAY_INDEX", "not_applying", "pointer_parts"]

ARRAY_INDEX: Final = re.compile(r"0|[1-9][0-9]*")
"""An RFC 6901 array index (ASCII digits, no leading zero): ``isdigit`` also takes ``²``."""


def pointer_parts(pointer: str) -> list[str]:
    """The reference tokens of an RFC 6901 JSON Pointer (``""`` is the whole value).

    Raises:
        InvalidValueError: ``pointer`` is neither empty nor starts with ``/``, or
            has a ``~`` not followed by ``0`` or ``1``.
    """
    if pointer and not pointer.startswith("/"):
        raise InvalidValueError(f"JSON pointer must be empty or start with '/': {pointer!r}")
    if re.search("~(?![01])", pointer):
        raise InvalidValueError(f"JSON pointer has a '~' not followed by 0 or 1: {pointer!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]


_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", None: "null"}


def _missing(document: Any, pointer: str, whole: bool) -> str | None:
    """Why ``pointer`` (``whole``) or its parent cannot be followed in ``document``, or None."""
    parts = pointer_parts(pointer)
    current, at = document, ""
    # The parent of an added member must be a container too: walk to the last part then.
    for n, part in enumerate(parts):
        if not whole and n == len(parts) - 1 and isinstance(current, (dict, list)):
            break
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and ARRAY_INDEX.fullmatch(part) and int(part) < len(current):
            current = current[int(part)]
        elif isinstance(current, (dict, list)):
            what = "item" if isinstance(current, list) else "member"
            return f"{at or 'the value'} has no {what} {part!r}"
        else:
            kind = _KINDS.get(current if current is None else type(current), "a number")
            return f"{at or 'the value'} is {kind}: it has no member {part!r}"
        at += "/" + part.replace("~", "~0").replace("/", "~1")
    return None


def not_applying(document: Any, op: dict[str, Any]) -> str | None:
    """Why a JSON Patch operation does not apply, in castore's words (None: jsonpatch's)."""
    reason = _missing(document, op["from"], whole=True) if op["op"] in ("move", "copy") else None
    if reason is not None:
        return f"from: {reason}"
    return _missing(document, op["path"], whole=op["op"] in ("remove", "replace", "test"))
