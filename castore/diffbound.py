"""How far a version diff compares arrays item by item: a bound on ``jsonpatch``'s work.

``jsonpatch`` keeps, for each array it compares, lists as long as the array,
and each item it adds, removes or moves there shifts them: turning an array
of ``n`` items into one that differs in ``m`` of them takes time in proportion
to ``n * m``. A 1 MiB array of 150,000 numbers and its reversal took 12 s, and
500,000 zeros turned into ones 105 s and 900 MB. :func:`opaque_arrays`
estimates that work for each pair of arrays the diff compares and, where the
estimate would take the value's total past :data:`DIFF_ARRAY_WORK`, puts in
place of the old array a string that nothing in the new value equals:
``jsonpatch`` then ``replace``-s that array whole. The patch stays valid (no
operation reads, moves or enters what the string stands for), only coarser.
"""

from __future__ import annotations

import secrets
from typing import Any

__all__ = ["DIFF_ARRAY_WORK", "DIFF_NODES", "LONG_ARRAY", "opaque_arrays"]

DIFF_ARRAY_WORK = 1 << 30
"""The work a version diff spends on arrays: for each pair of arrays compared,
the items between their common start and end times the items of both
(about 0.1 s). Arrays of up to 16,384 items each always fit, on their own."""

DIFF_NODES = 1 << 21
"""How many values (of any kind) in the arrays compared ``jsonpatch`` may write
out as JSON to pair their items up, summed over the arrays: an array nested in
others is written out once for each (about 1 s)."""

LONG_ARRAY = 4096
"""Arrays longer than this are not left for ``jsonpatch`` to pair up as it
likes (in the changed part of an array whose pairs the estimate cannot tell)."""


def opaque_arrays(before: Any, after: Any) -> Any:
    """``before``, with the arrays too costly to compare with ``after``'s replaced by a token.

    ``before`` itself is not changed: what changes is copied. Only old arrays
    are replaced, and old values never appear in a patch (``jsonpatch`` makes
    no ``test`` operations), so the patch holds no token.
    """
    return _Walk("\x00castore: compared whole " + secrets.token_hex(16)).pair(before, after)


class _Walk:
    """One diff's walk: the token, the work left, and the sizes of the values met."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.left = DIFF_ARRAY_WORK
        self.nodes_left = DIFF_NODES
        self.sizes: dict[int, tuple[Any, int, int, int]] = {}  # id: (value, sizes), kept alive

    def _sizes(self, value: Any) -> tuple[int, int, int]:
        """The values in ``value``; the items of its arrays; the values in its arrays."""
        if not isinstance(value, (list, dict)):
            return 1, 0, 0
        known = self.sizes.get(id(value))
        if known is not None:
            return known[1], known[2], known[3]
        children = value if isinstance(value, list) else value.values()
        nodes, items, in_arrays = 1, 0, 0
        for child in children:
            child_nodes, child_items, child_in_arrays = self._sizes(child)
            nodes += child_nodes
            items += child_items
            in_arrays += child_in_arrays
        if isinstance(value, list):
            items, in_arrays = items + len(value), in_arrays + nodes
        self.sizes[id(value)] = (value, nodes, items, in_arrays)
        return nodes, items, in_arrays

    def pair(self, old: Any, new: Any) -> Any:
        """``old``, or a copy with what is too costly to compare with ``new`` replaced."""
        if isinstance(old, dict) and isinstance(new, dict):
            out: dict[str, Any] | None = None
            for key, value in old.items():  # jsonpatch compares the members both have
                if key in new and (kept := self.pair(value, new[key])) is not value:
                    out = dict(old) if out is None else out
                    out[key] = kept
            return old if out is None else out
        if isinstance(old, list) and isinstance(new, list):
            return self._arrays(old, new)
        return old

    def _arrays(self, old: list[Any], new: list[Any]) -> Any:
        shorter, start, end = min(len(old), len(new)), 0, 0
        while start < shorter and old[start] == new[start]:
            start += 1
        while end < shorter - start and old[-1 - end] == new[-1 - end]:
            end += 1
        middle_old, middle_new = old[start : len(old) - end], new[start : len(new) - end]
        work = (len(middle_old) + len(middle_new)) * (len(old) + len(new))
        nodes = self._sizes(old)[0] + self._sizes(new)[0]  # jsonpatch writes out every item
        if work > self.left or nodes > self.nodes_left:
            return self.token
        self.left, self.nodes_left = self.left - work, self.nodes_left - nodes
        # Whichever arrays of the changed items jsonpatch pairs up, their work is at most:
        inside = [self._sizes(item) for item in (*middle_old, *middle_new)]
        nested = sum(items for _, items, _ in inside) ** 2
        written = sum(in_arrays for _, _, in_arrays in inside)
        if nested <= self.left and written <= self.nodes_left:
            self.left, self.nodes_left = self.left - nested, self.nodes_left - written
            return old
        out: list[Any] | None = None
        for offset, (item, other) in enumerate(
            zip(middle_old, middle_new, strict=False)
        ):  # usual pairs
            if (kept := self.pair(item, other)) is not item:
                out = list(old) if out is None else out
                out[start + offset] = kept
        if len(middle_old) > 1 or len(middle_new) > 1:  # pairs it may make otherwise
            out = list(old) if out is None else out
            for index in range(start, len(old) - end):
                out[index] = self._without_long_arrays(out[index])
        return old if out is None else out

    def _without_long_arrays(self, value: Any) -> Any:
        """``value`` with the arrays longer than :data:`LONG_ARRAY` in it replaced."""
        if isinstance(value, list):
            if len(value) > LONG_ARRAY:
                return self.token
            items = [self._without_long_arrays(item) for item in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, dict):
            members = {key: self._without_long_arrays(item) for key, item in value.items()}
            return value if all(members[key] is item for key, item in value.items()) else members
        return value
