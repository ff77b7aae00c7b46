"""A process out of descriptors (EMFILE): a failed call leaves nothing behind.

A server whose descriptors are all taken (idle keep-alive connections, a burst
of clients) fails store calls with ``OSError(EMFILE)``, answered 500
``io_error``. The oracle is the store as it was before the failed call: a
first write of a key that fails writes nothing, and leaves nothing that
``check`` reports. (A review filled a server's descriptors under
``prlimit --nofile=64:64``: a first write of a new namespace failing while
it read its log left the empty log and no ``KEYS``, which ``check`` reported
as an error it could not repair, exit 1.)
"""

from __future__ import annotations

import errno
import os
import pathlib
from typing import Any

import pytest

from castore import Store
from tests.helpers import tree

pytestmark = pytest.mark.integration


class _Emfile:
    """``os.open`` that fails with EMFILE at its ``nth`` call."""

    def __init__(self, nth: int) -> None:
        self.nth, self.calls, self.real = nth, 0, os.open

    def __call__(self, *args: Any, **kw: Any) -> int:
        self.calls += 1
        if self.calls == self.nth:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return self.real(*args, **kw)


def test_a_first_write_failing_with_emfile_leaves_nothing_check_reports(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nth = 0
    while True:
        nth += 1
        root = tmp_path / str(nth)
        with Store(str(root)) as store:
            store.set("seed", 1, scope="dag", namespace="a")
            before = [p for p in tree(root) if p.endswith(".log")]
            emfile = _Emfile(nth)
            with monkeypatch.context() as patch:
                patch.setattr(os, "open", emfile)
                try:
                    store.set("new", {"x": 1}, scope="dag", namespace="fresh")
                except OSError as exc:
                    raised = exc.errno
                else:
                    break  # made fewer than nth opens: every one has failed once
            assert raised == errno.EMFILE
            report = store.check()
            assert report.ok, (nth, report.findings)
            assert [p for p in tree(root) if p.endswith(".log")] == before, nth
            assert not store.get("new", scope="dag", namespace="fresh").found
    assert nth > 5  # the opens of a first write: the one that left an empty log among them
