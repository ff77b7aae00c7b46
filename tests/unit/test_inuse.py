"""The calls counted on a handle (castore/inuse.py): the counting changes no method's arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from castore import Store
from castore.backend import LogView
from castore.file.backend import FileBackend
from castore.inuse import InUse, guard
from castore.records import Entry


def test_the_file_backends_counted_methods_take_their_arguments_by_name(tmp_path: Path) -> None:
    # The counted wrapper of a one- or two-argument method (every get) took them as
    # (a, b): current(ref=...) raised TypeError while its signature and mypy accepted it.
    store = Store(str(tmp_path / "s"), dag="d")
    store.set("k", {"v": 1})
    backend = store.backend
    assert isinstance(backend, FileBackend)
    ref = store.ref("k")

    def nothing(_previous: Entry | None, _view: LogView) -> None:
        return None

    assert backend.current(ref=ref) == backend.current(ref)
    assert backend.version(ref, version=1) == backend.version(ref=ref, version=1)
    assert backend.version(ref=ref, version=1) == backend.version(ref, 1)
    assert backend.exists(ref=ref) is True
    assert backend.namespaces(scope="dag") == backend.namespaces("dag") == ["d"]
    assert backend.removed(scope="dag") == []
    assert backend.write(ref=ref, decide=nothing) == backend.write(ref, nothing)


class _Named:
    def __init__(self) -> None:
        self.in_use = InUse(lambda: None)

    def one(self, use: int) -> int:  # named as one of the wrapper's own locals
        return use

    def two(self, calls: int, b: int) -> int:
        return calls - b


guard(_Named, "one two")


def test_a_counted_method_whose_arguments_share_the_wrappers_names_takes_them_by_name() -> None:
    named = _Named()
    assert named.one(use=3) == named.one(3) == 3
    assert named.two(b=1, calls=5) == named.two(5, 1) == 4
    assert named.in_use.calls == set()


class _FailingClose:
    def __init__(self) -> None:
        self.in_use = InUse(self._close_now)
        self.closes = 0

    def _close_now(self) -> None:
        self.closes += 1
        raise OSError(5, "Input/output error")  # as os.close may, on a network file system

    def write(self, value: int) -> int:  # a call that closes its own handle (deferred)
        self.in_use.close()
        return value


guard(_FailingClose, "write")


def test_a_close_that_fails_when_a_call_ends_does_not_fail_that_call() -> None:
    # The close deferred to the end of a call ran in that call's finally: its OSError
    # replaced the call's result, so an applied write looked failed (and was made again).
    handle = _FailingClose()
    assert handle.write(7) == 7
    assert handle.closes == 1  # it ran, as the call ended
    with pytest.raises(OSError, match="Input/output"):  # asked with no call running: raised
        handle.in_use.close()
