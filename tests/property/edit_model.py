"""The model's read-modify-write edits, written from docs/CLI.md (patch, incr), not the code.

JSON Patch is RFC 6902 applied one operation at a time (the first operation that
fails decides the outcome), a merge patch RFC 7396, and ``incr`` adds to the number
a JSON Pointer (RFC 6901) names, creating the objects on its way. Each raises
:class:`EditError` with ``test`` True where the store must raise ``PatchTestError``
(a ``test`` operation failed) and False where it must raise ``InvalidValueError``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Final, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")
ABSENT: Final = object()  # what a pointer names when it names nothing


class EditError(Exception):
    def __init__(self, test: bool) -> None:
        super().__init__("test failed" if test else "invalid")
        self.test = test


def attempt(edit: Callable[..., T], *args: Any) -> tuple[T | None, EditError | None]:
    """(what ``edit`` gives, None) or (None, how it failed)."""
    try:
        return edit(*args), None
    except EditError as exc:
        return None, exc


def _parts(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise EditError(test=False)
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(part: str, size: int, *, end: bool = False) -> int:
    """An array index that exists (``end``: or one past the last, ``-`` included)."""
    if end and part == "-":
        return size
    if not part.isascii() or not part.isdigit() or (part != "0" and part[0] == "0"):
        raise EditError(test=False)
    index = int(part)
    if index > size or (index == size and not end):
        raise EditError(test=False)
    return index


def _walk(doc: Any, parts: list[str]) -> Any:
    """What ``parts`` name in ``doc``, or :data:`ABSENT`."""
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and part == str(int(part)):
            if int(part) >= len(doc):
                return ABSENT
            doc = doc[int(part)]
        else:
            return ABSENT
    return doc


def _get(doc: Any, parts: list[str]) -> Any:
    found = _walk(doc, parts)
    if found is ABSENT:
        raise EditError(test=False)
    return found


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _get(doc, parts[:-1])
    if isinstance(parent, dict):
        parent[parts[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parts[-1], len(parent), end=True), value)
    else:
        raise EditError(test=False)
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise EditError(test=False)
    parent = _get(doc, parts[:-1])
    if isinstance(parent, dict) and parts[-1] in parent:
        del parent[parts[-1]]
    elif isinstance(parent, list):
        del parent[_index(parts[-1], len(parent))]
    else:
        raise EditError(test=False)
    return doc


def json_equal(a: Any, b: Any) -> bool:
    """RFC 6902's equality: numbers by value, never a boolean for a number, any member order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def apply_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 on a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in operations:
        path = _parts(op["path"])
        kind = op["op"]
        if kind == "test":
            found = _walk(doc, path) if op["path"] == "" or path[-1] != "-" else ABSENT
            if found is ABSENT or not json_equal(found, op["value"]):
                raise EditError(test=True)
        elif kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc = (
                _add(_remove(doc, path), path, copy.deepcopy(op["value"])) if path else op["value"]
            )
        else:  # move, copy
            source = _parts(op["from"])
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                if path[: len(source)] == source and len(path) > len(source):
                    raise EditError(test=False)  # into its own child
                if path == source:
                    continue
                doc = _remove(doc, source)
            doc = _add(doc, path, value)
    return doc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sum(old: Any, by: int | float) -> int | float:
    if not _is_number(old):
        raise EditError(test=False)
    if isinstance(old, int) and isinstance(by, int):
        return old + by
    total = float(old) + float(by)
    if math.isinf(total):
        raise EditError(test=False)
    return total


def incr(live: bool, value: Any, by: int | float, path: str | None) -> tuple[Any, int | float]:
    """The new whole value and the new number; an absent key or member counts as 0."""
    parts = _parts(path or "")
    if not parts:
        number = _sum(value if live else 0, by)
        return number, number
    doc = copy.deepcopy(value) if live else {}
    node = doc
    for part in parts[:-1]:  # the objects on the way are made
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        elif isinstance(node, list):
            node = node[_index(part, len(node))]
        else:
            raise EditError(test=False)
    last = parts[-1]
    if isinstance(node, dict):
        number = _sum(node.get(last, 0), by)
        node[last] = number
    elif isinstance(node, list):
        index = _index(last, len(node))
        number = _sum(node[index], by)
        node[index] = number
    else:
        raise EditError(test=False)
    return doc, number


def by_text(by: int | float) -> str:
    """``by`` as the audit reason writes it (a JSON number)."""
    return str(by)


POINTERS: Final = ["", "/a", "/a/b", "/b", "/0", "/-", "/a/0", "/x~1y", "/~0", "/0/a"]
small_values = st.sampled_from([0, 1, -2, "s", None, True, [], {}, [1, 2], {"b": 3}, 2**70])
operations = st.one_of(
    st.fixed_dictionaries(
        {"op": st.sampled_from(["add", "replace", "test"]), "path": st.sampled_from(POINTERS)},
    ).flatmap(lambda op: small_values.map(lambda v: {**op, "value": v})),
    st.fixed_dictionaries(
        {"op": st.just("remove"), "path": st.sampled_from([p for p in POINTERS if p])}
    ),
    st.fixed_dictionaries(
        {
            "op": st.sampled_from(["move", "copy"]),
            "from": st.sampled_from(POINTERS),
            "path": st.sampled_from(POINTERS),
        }
    ),
)
merge_patches = st.one_of(
    st.dictionaries(
        st.sampled_from(["a", "b", "x"]),
        small_values | st.dictionaries(st.sampled_from(["b", "c"]), small_values, max_size=2),
        max_size=3,
    ),
    small_values,
)
INCR_PATHS: Final = [None, None, "/n", "/a/b", "/0", "/a", "/x~1y", "/-"]
INCR_BY: Final = [1, 1, 2, -3, 0, 2**70, 0.5, -0.25]


def walk(doc: Any, pointer: str) -> Any:
    """What ``pointer`` names in ``doc``, or :data:`ABSENT`."""
    try:
        return _walk(doc, _parts(pointer))
    except EditError:
        return ABSENT
