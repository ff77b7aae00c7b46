r"""The value edits of read-modify-write: JSON Patch, merge patch, and adding to a number.

An edit turns a key's live value (normalized JSON bytes, or None when the key
is absent) into the new normalized value. It runs inside a write's decision,
under the key's lock (:func:`castore.decisions.edit_decision`), so nothing
can change the value between the read and the write. Pure, no I/O.

The value is decoded with every number kept as its literal text
(:class:`~castore.pyvalues.NumberLiteral`; integers as ``int``), edited, and
normalized again, so the members an edit does not touch keep their bytes
(``1.50`` stays ``1.50``) and the result is exactly what ``set`` of the
resulting JSON text stores, hash included.

- :class:`JsonPatch`: RFC 6902, applied by the ``jsonpatch`` library
  (imported when a patch is first applied), except ``test``, compared here
  at any depth (:func:`~castore.literals.equal_literals`). A failed ``test`` operation is a
  :class:`~castore.errors.PatchTestError` (a ``ConflictError``); a patch that is not one, or that
  does not apply to the value (a missing member, an index out of range), is
  an :class:`~castore.errors.InvalidValueError`.
- :class:`MergePatch`: RFC 7396 (``null`` removes a member; arrays and
  scalars replace), the RFC's algorithm without recursion.
- :class:`Increment`: adds a number to the value or to the member a JSON
  Pointer names, created as 0 when absent; integers stay exact at any size,
  a float result takes Go's float64 form.

An absent key edits as ``{}`` for both patches, and as 0 (or, with a pointer,
as ``{}`` whose missing objects are created) for an increment.

>>> MergePatch(b'{"a": null, "b": {"c": 1.50}}')(b'{"a":1,"z":2.0}')
b'{"b":{"c":1.50},"z":2.0}'
>>> Increment(10**20, "/n")(b'{"n":1}')
b'{"n":100000000000000000001}'
"""

from __future__ import annotations

import math
from typing import Any, Final

from castore import codec
from castore.errors import InvalidValueError, PatchTestError
from castore.jsonrules import MAX_VALUE_BYTES
from castore.literals import decode_literal, equal_literals
from castore.pointers import ARRAY_INDEX, not_applying, pointer_parts
from castore.pyvalues import NumberLiteral

__all__ = [
    "MAX_COPIED_BYTES",
    "Edit",
    "Increment",
    "JsonPatch",
    "MergePatch",
    "decode_literal",
    "parse_number",
    "pointer_parts",
]

_OPERATIONS: Final = frozenset(("add", "remove", "replace", "move", "copy", "test"))
MAX_COPIED_BYTES: Final = 16 * MAX_VALUE_BYTES
"""What a JSON Patch's ``copy`` operations may copy in all (normalized bytes):
each deep-copies its member, and a copy and a ``remove`` of it, repeated,
never make the value larger (15,000 of them of a 600 KB member: 250 s)."""


def _exact_int(literal: str) -> int:
    try:
        return int(literal)
    except ValueError:  # past 4,300 digits: by halves (castore.jsonparse: not loaded by incr)
        from castore.jsonparse import parse_int

        return parse_int(literal)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integral(literal: str) -> bool:
    """True for a JSON number literal without fraction or exponent."""
    return not any(char in literal for char in ".eE")


def parse_number(text: str) -> int | float:
    """A JSON number given as text (``--by``): ``int`` for an integer literal, else ``float``.

    Raises:
        InvalidValueError: ``text`` is not a finite JSON number.
    """
    literal = text.strip()
    try:
        number = NumberLiteral(literal)
        if _integral(literal):
            return _exact_int(literal)
    except InvalidValueError:
        raise InvalidValueError(f"not a JSON number: {text[:40]!r}") from None
    if not math.isfinite(number):
        raise InvalidValueError(f"number out of a float64's range: {text[:40]!r}")
    return float(number)


class Edit:
    """An edit of a key's live value (None: absent) into its new normalized value.

    Called inside the write's decision; :attr:`value` is the last value it
    made (the new value once the write returns).
    """

    note: str = ""  # what the edit does, for the audit record
    value: bytes = b""
    version: int = 0  # the live version being edited (0: absent), for errors
    where: str = ""  # the key edited, for errors

    def __call__(self, current: bytes | None, version: int = 0) -> bytes:
        """The new normalized value, given the live one and its version (a decision's edit)."""
        self.version = version
        self.value = codec.normalize_python(self.edit(current))
        return self.value

    def edit(self, current: bytes | None) -> Any:
        """The new value as a tree of literals (see :func:`decode_literal`)."""
        raise NotImplementedError

    def document(self, current: bytes | None) -> Any:
        """The live value as a tree of literals; ``{}`` for an absent key.

        Raises:
            CorruptionError: the stored value is not JSON (never edited into a version).
        """
        if current is None:
            return {}
        return codec.decode_stored(current, self.where, self.version, decode=decode_literal)


_MISSING: Final = object()


def _show(value: Any) -> str:
    """A value in an error message: its JSON, cut short (never a ``repr``: values nest deep)."""
    if value is _MISSING:
        return "absent"
    try:  # iterative, and bounded by the value size limit
        text = codec.normalize_python(value)[:61].decode(errors="replace")
    except InvalidValueError:  # past the size limit (a patch's copies): say what it is
        return f"{_kind(value)} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _resolve(document: Any, path: str, what: str) -> Any:
    """The member ``path`` names in ``document`` (:data:`_MISSING`: none), for a ``test``.

    Raises:
        PatchTestError: never; see :meth:`JsonPatch.edit` (a ``-`` is reported there).
        InvalidValueError: ``path`` is not a JSON Pointer.
    """
    try:
        parts = pointer_parts(path)
    except InvalidValueError as exc:
        raise InvalidValueError(f"invalid JSON Patch: {what}: {exc.detail}") from None
    node = document
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and ARRAY_INDEX.fullmatch(part) and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, list) and part == "-":
            return _END
        else:
            return _MISSING
    return node


_END: Final = object()  # "-": past an array's last item, which names no member


def _copy_size(document: Any, source: str, what: str) -> int:
    """The normalized size of the member a ``copy`` copies (0: none, the copy fails).

    Raises:
        ValueTooLargeError: the member alone is past the size limit (so the value would be).
    """
    found = _resolve(document, source, what)
    return 0 if found is _MISSING or found is _END else len(codec.normalize_python(found))


def _patch_bytes(patch: Any) -> bytes:
    """A patch given as JSON text (bytes) or Python data, normalized (validated) once."""
    return codec.normalize(patch)


class MergePatch(Edit):
    """An RFC 7396 JSON Merge Patch: objects merge member by member, ``null`` removes one.

    Raises (when built):
        InvalidValueError: ``patch`` is not one JSON value.
    """

    note = "merge patch"

    def __init__(self, patch: Any) -> None:
        self.patch = _patch_bytes(patch)

    def edit(self, current: bytes | None) -> Any:
        """The live value merged with the patch (RFC 7396, section 2)."""
        patch = decode_literal(self.patch)
        if not isinstance(patch, dict):
            return patch
        target = self.document(current)
        root = target if isinstance(target, dict) else {}
        todo: list[tuple[dict[str, Any], dict[str, Any]]] = [(root, patch)]
        while todo:  # RFC 7396 section 2, one object at a time instead of recursing
            node, changes = todo.pop()
            for name, value in changes.items():
                if value is None:
                    node.pop(name, None)
                elif isinstance(value, dict):
                    child = node.get(name)
                    if not isinstance(child, dict):
                        child = node[name] = {}
                    todo.append((child, value))
                else:
                    node[name] = value
        return root


class JsonPatch(Edit):
    """An RFC 6902 JSON Patch, applied by ``jsonpatch``; a failed ``test`` is a conflict.

    Raises (when built):
        InvalidValueError: ``patch`` is not a JSON array of operation objects
            with one of the six operations of RFC 6902.
    """

    note = "patch"

    def __init__(self, patch: Any, ref: str = "") -> None:
        self.patch = _patch_bytes(patch)
        self.ref = ref
        operations = decode_literal(self.patch)
        if not isinstance(operations, list):
            raise InvalidValueError("a JSON Patch is an array of operations")
        for index, op in enumerate(operations, 1):
            name = op.get("op") if isinstance(op, dict) else None
            if not isinstance(name, str) or name not in _OPERATIONS:  # [1] is not hashable
                shown = _show(name if isinstance(op, dict) else op)
                raise InvalidValueError(f"JSON Patch operation {index} is not one: {shown}")
            for member in ("path", "from") if op["op"] in ("move", "copy") else ("path",):
                if not isinstance(op.get(member), str):
                    what = f"operation {index} ({op['op']})"
                    raise InvalidValueError(f"JSON Patch {what} needs a string {member!r}")

    def edit(self, current: bytes | None) -> Any:
        """The live value with each operation applied in turn.

        Raises:
            PatchTestError: a ``test`` operation failed.
            InvalidValueError: an operation is invalid or does not apply.
        """
        import jsonpatch  # only here: the other commands do not load it (CLI start-up)

        document = self.document(current)
        copied = 0  # bytes the copies since the value was last measured added (at most)
        copied_in_all = 0
        for index, op in enumerate(decode_literal(self.patch), 1):
            what = f"operation {index} ({op['op']} {op['path']})"
            if op["op"] == "test":  # ours: jsonpatch's == and its message recurse
                self._test(document, op, what)
                continue
            if op["op"] == "copy":  # each may double the value: 30 would take 2**30 x its size
                size = _copy_size(document, op["from"], what)
                copied_in_all += size
                if copied_in_all > MAX_COPIED_BYTES:
                    limit = f"{MAX_COPIED_BYTES >> 20} MiB"
                    raise InvalidValueError(f"JSON Patch {what}: its copies add up past {limit}")
                if copied + size > MAX_VALUE_BYTES:
                    codec.normalize_python(document)  # ValueTooLargeError if it passed 1 MiB
                    copied = 0
                copied += size
            undo = op["op"] == "move"  # a move that fails once its source is removed: undone
            try:  # one operation at a time, so that an error can name it
                document = jsonpatch.apply_patch(document, [op], in_place=True, atomic=undo)
            except RecursionError:  # jsonpatch deep-copies a value it adds, recursively
                deep = "its value nests too deeply for the JSON Patch library: use set"
                raise InvalidValueError(f"JSON Patch does not apply: {what}: {deep}") from None
            except jsonpatch.InvalidJsonPatch as exc:
                raise InvalidValueError(f"invalid JSON Patch: {what}: {exc}") from None
            except (
                jsonpatch.JsonPatchException,
                jsonpatch.JsonPointerException,
                KeyError,
                IndexError,
                TypeError,
                ValueError,
            ) as exc:
                reason = not_applying(document, op) or str(exc) or repr(exc)
                raise InvalidValueError(f"JSON Patch does not apply: {what}: {reason}") from None
        return document

    def _test(self, document: Any, op: dict[str, Any], what: str) -> None:
        """A ``test`` operation: the member at its path equals its value (RFC 6902, 4.6).

        Raises:
            PatchTestError: it does not, or the path names no member.
            InvalidValueError: the operation has no ``value``, or its path is no pointer.
        """
        if "value" not in op:
            raise InvalidValueError(f"invalid JSON Patch: {what}: a test needs a 'value' member")
        found = _resolve(document, op["path"], what)
        if found is _END:
            detail = f"{what}: '-' names no member (it stands past an array's last item)"
        elif equal_literals(found, op["value"]):
            return
        else:
            detail = f"{what}: the value is {_show(found)}, not {_show(op['value'])}"
        raise PatchTestError(self.ref, None, self.version, detail)


class Increment(Edit):
    """Adds ``by`` to the number at ``pointer`` (``""``: the whole value); 0 when absent.

    ``number`` is the new number's normalized JSON once applied.

    Raises (when built):
        InvalidValueError: ``by`` is not a finite number, or ``pointer`` is not a JSON Pointer.
    """

    def __init__(self, by: int | float = 1, pointer: str | None = None) -> None:
        if not _is_number(by) or by != by or by in (float("inf"), float("-inf")):
            raise InvalidValueError(f"incr needs a finite number to add, not {by!r}")
        self.by = by
        self.pointer = pointer or ""
        self.parts = pointer_parts(self.pointer)
        self.number = b""
        at = f" at {self.pointer}" if self.pointer else ""
        self.note = f"incr by {codec.normalize_python(by).decode()}{at}"

    def edit(self, current: bytes | None) -> Any:
        """The live value with the number at the pointer increased (0 when absent)."""
        if not self.parts:
            new = self._add(0 if current is None else self.document(current))
            self.number = codec.normalize_python(new)
            return new
        root = self.document(current)
        node, slot = self._parent(root)
        node[slot] = new = self._add(node[slot])
        self.number = codec.normalize_python(new)
        return root

    def _parent(self, root: Any) -> tuple[Any, str | int]:
        """The container holding the pointer's target, and its slot there.

        Members missing from objects are created on the way: objects, and 0
        for the target. An array index must exist.
        """
        node: Any = root
        for depth, part in enumerate(self.parts):
            slot: str | int = part
            if isinstance(node, dict):
                if part not in node:
                    node[part] = {} if depth < len(self.parts) - 1 else 0
            elif isinstance(node, list) and ARRAY_INDEX.fullmatch(part) and int(part) < len(node):
                slot = int(part)
            else:
                where = "/" + "/".join(self.parts[:depth]) if depth else "the value"
                if isinstance(node, list):
                    has = f"an array of length {len(node)}: it has no index {part!r}"
                else:
                    has = f"{_kind(node)}: it has no member {part!r}"
                raise InvalidValueError(f"incr: {self.pointer}: {where} is {has}")
            if depth == len(self.parts) - 1:
                return node, slot
            node = node[slot]
        raise AssertionError("unreachable: parts is not empty")

    def _add(self, old: Any) -> int | float:
        if not _is_number(old):
            kind = _kind(old)
            raise InvalidValueError(f"incr: {self.pointer or 'the value'} is {kind}, not a number")
        if isinstance(old, NumberLiteral) and _integral(old.text):
            old = _exact_int(old.text)  # an integer literal kept as text (-0, or very long)
        if isinstance(old, int) and isinstance(self.by, int):
            return old + self.by  # exact, any size
        try:
            new = float(old) + float(self.by)
        except OverflowError:
            raise InvalidValueError("incr: the sum is out of a float64's range") from None
        if new in (float("inf"), float("-inf")):
            raise InvalidValueError("incr: the sum is out of a float64's range")
        return new


def _kind(node: Any) -> str:
    """What a decoded JSON node is, for a message: ``a number``, ``an object``..."""
    if _is_number(node):
        return "a number"
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return kinds.get(type(node), "null")
