"""A limited ``list`` over a damaged ``KEYS`` answers the first keys an undamaged one does.

Found by a review: a bit flipped in a ``KEYS`` line can turn a key's line into
a key that never was (``aa`` into ``ab`` or ``za``). An unlimited list reads the
logs' keys then (a listed key without an entry), but ``list --limit 1`` stopped
at its limit first and answered ``b``, hiding ``aa``: when the ghost came
before the cut, the inconsistency it found was dropped once the limit was
reached; when it came after, it was never looked at. Each answer is compared
with the same call on the undamaged store.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from castore import Store
from tests.helpers import keys_path

pytestmark = pytest.mark.integration

KEYS = ["b", "c", "aa", "é", "d/e"]  # created in this order: KEYS's tail holds them so


def _sorted_keys_file(data: bytes) -> bytes:
    """The same ``KEYS`` with every line in its sorted region (as a re-sort writes it)."""
    head, sorted_line, *lines = data.splitlines(keepends=True)
    body = b"".join(sorted(lines))
    end = len(head) + len(sorted_line) + len(body)
    return head + b"sorted %020d\n" % end + body


def _flips(data: bytes) -> Iterator[bytes]:
    """``data`` with one bit flipped, for every bit of its key lines (after two lines)."""
    first = data.index(b"\n", data.index(b"\n") + 1) + 1
    for offset in range(first, len(data)):
        for bit in range(8):
            yield data[:offset] + bytes([data[offset] ^ (1 << bit)]) + data[offset + 1 :]


def _answers(root: Path) -> list[list[str]]:
    store = Store(root, dag="d")
    try:
        return [
            [e.key for e in store.list(limit=limit, include_values=values).entries]
            for limit in (1, 2)
            for values in (False, True)
        ]
    finally:
        store.close()


@pytest.mark.parametrize("layout", ["tail", "sorted"])
def test_a_limited_list_over_a_flipped_keys_line_hides_no_key(tmp_path: Path, layout: str) -> None:
    truth = tmp_path / "truth"
    store = Store(truth, dag="d")
    for key in KEYS:
        store.set(key, 1)
    store.close()
    path = keys_path(truth, "dag", "d")
    with open(path, "rb") as f:
        data = f.read()
    if layout == "sorted":
        data = _sorted_keys_file(data)
        with open(path, "wb") as f:
            f.write(data)
    want = _answers(truth)
    assert want == [["aa"], ["aa"], ["aa", "b"], ["aa", "b"]]
    work = tmp_path / "work"
    wrong = []
    for damaged in _flips(data):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(truth, work)
        with open(keys_path(work, "dag", "d"), "wb") as f:
            f.write(damaged)
        if (got := _answers(work)) != want:
            wrong.append((damaged, got))
    assert wrong == []
