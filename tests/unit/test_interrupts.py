"""A ``KeyboardInterrupt`` (or a signal handler's exception) anywhere in a call: the handle goes on.

CPython runs a signal's Python handler after a call returns (or as a function
starts), so the exception can come between any two calls of castore's code.
These tests raise it at each such point in turn (``sys.setprofile``: each
``call``, ``return`` and ``c_return`` event of the modules named), keep it
alive as a REPL does (``sys.last_value``), and then use the same handle.
"""

from __future__ import annotations

import contextlib
import dis
import fcntl
import gc
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import castore
from castore import Store

_PACKAGE = os.path.dirname(castore.__file__)
_GENERATORS = 0x20 | 0x80 | 0x200  # generator, coroutine, async generator: a yield or resume
_BEFORE_WITH = dis.opmap["BEFORE_WITH"]


class _Interrupt(KeyboardInterrupt):
    pass


def _interrupted(call: Callable[[], Any], n: int, modules: tuple[str, ...]) -> _Interrupt | None:
    """:func:`_where` without where."""
    return _where(call, n, modules)[0]


def _where(
    call: Callable[[], Any], n: int, modules: tuple[str, ...]
) -> tuple[_Interrupt | None, str]:
    """Run ``call`` raising :class:`_Interrupt` at the ``n``-th event in ``modules``; or None.

    A generator's own call and return events (a resume, a yield) are not such points:
    the ``next`` that returns its item is (its ``c_return``). Nor is the return of an
    ``__enter__`` to its ``with`` (CPython checks for signals as a call instruction
    ends, and ``BEFORE_WITH`` is none): the last call inside ``__enter__`` is.
    """
    files = tuple(m if os.path.isabs(m) else os.path.join(_PACKAGE, m) for m in modules)
    count, where = 0, ""

    def profile(frame: types.FrameType, event: str, _arg: object) -> None:
        nonlocal count, where
        code = frame.f_code
        if event not in ("call", "return", "c_return") or not code.co_filename.endswith(files):
            return
        if event != "c_return" and code.co_flags & _GENERATORS:
            return
        if (event == "return" and _entered_by_with(frame)) or code.co_name == "__del__":
            return  # (an exception raised in __del__ is printed, not raised)
        count += 1
        if count == n:
            where = f"{event} {code.co_name} ({code.co_filename}:{frame.f_lineno})"
            raise _Interrupt

    sys.setprofile(profile)
    try:
        call()
    except _Interrupt as exc:
        return exc, where
    finally:
        sys.setprofile(None)
    return None, ""


def _entered_by_with(frame: types.FrameType) -> bool:
    caller = frame.f_back
    return caller is not None and caller.f_code.co_code[caller.f_lasti] == _BEFORE_WITH


def _open_below(root: Path) -> list[str]:
    """This process's descriptors of files and directories below ``root`` (not ``root`` itself)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if name.startswith(f"{root}/"):
            names.append(name)
    return names


CALLS: dict[str, Callable[[Store], Any]] = {
    "get": lambda s: s.get("k"),
    "set": lambda s: s.set("k", {"v": 2}),
    "history": lambda s: s.history("k"),
    "list": lambda s: s.list(""),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_an_interrupted_call_leaves_close_closing_the_handles_descriptors(
    tmp_path: Path, name: str
) -> None:
    # A call counted itself in (castore/inuse.py) before its ``try``: interrupted just
    # after, it stayed counted, and ``close`` waited for it forever (the descriptors it
    # caches were never closed: 4 left open after the close of one ``set``).
    n = 0
    while True:
        n += 1
        root = tmp_path / f"s{n}"
        store = Store(str(root), dag="d")
        store.set("k", {"v": 1})
        interrupt = _interrupted(lambda: CALLS[name](store), n, ("inuse.py",))  # noqa: B023
        assert _open_below(root), "the handle caches descriptors (else this test proves nothing)"
        store.close()
        assert _open_below(root) == [], f"{name}, interrupted at event {n}"
        assert store.get("k").version == Store(str(root), dag="d").get("k").version
        store.close()
        if interrupt is None:
            break
    assert n > 3


@pytest.mark.parametrize("kept_open", [True, False], ids=["log-kept-open", "log-opened"])
def test_an_interrupted_set_never_leaves_the_keys_log_locked(
    tmp_path: Path, kept_open: bool
) -> None:
    # An interrupt as contextlib's __enter__ got the generator's item (the log locked)
    # skipped the ``with``: its ``finally`` ran only once the exception's traceback was
    # gone (a REPL keeps it), so every write of the key timed out meanwhile, and the late
    # ``finally`` unlocked and closed whatever descriptor had that number by then. One
    # as the ``__exit__`` of a log kept open began left it locked until the process ended;
    # one in the pool's calls before a log opened was unlocked, until the traceback went.
    # (As any Python ``__exit__`` begins, the lock is held until the traceback is gone.)
    modules = ("file/kept.py", "file/reflog.py", "file/tree.py", "file/fileio.py", "exits.py")
    n = 0
    while True:
        n += 1
        root = str(tmp_path / f"s{n}")
        with Store(root, dag="d") as first:
            first.set("k", {"v": 1})
        store = Store(root, dag="d")
        store.set("k", {"v": 2})  # its log kept open by the handle (kept.py)
        if not kept_open:
            store.close()  # the set opens and locks it (reflog.locked), then keeps it
        kept, where = _where(lambda: store.set("k", {"v": 3}), n, modules)  # noqa: B023
        if where.startswith("call __exit__"):
            del kept  # a REPL's next exception: the ``with``'s objects are collected
        other = Store(root, dag="d", lock_timeout=0)
        seen = other.history("k").entries[0].version  # 2, or 3 if the set was written
        written = other.set("k", {"after": n}).version  # LockTimeoutError while it was locked
        assert written == seen + 1, where
        assert store.set("k", {"again": n}).version == written + 1
        assert store.get("k") == other.get("k")
        assert other.check().ok
        done = where == ""
        kept = None  # then the generator a skipped ``with`` left is collected
        other.close()
        store.close()
        if done:
            break
    assert n > 20


def test_an_interrupted_unlock_never_unlocks_a_descriptor_opened_after(tmp_path: Path) -> None:
    # fileio.locked was a generator: an interrupt as its ``with`` called ``__exit__`` left
    # it suspended, the caller closed the descriptor, and once the exception was dropped
    # the generator unlocked that number: another file's lock, opened meanwhile, was lost.
    modules = ("file/fileio.py", contextlib.__file__)
    victims = [str(tmp_path / f"victim{i}") for i in range(8)]
    n = 0
    while True:
        n += 1
        root = str(tmp_path / f"s{n}")
        with Store(root, dag="d") as first:
            first.set("k", {"v": 1})
        store = Store(root, dag="d")  # no log kept open: the set opens and locks one
        kept, where = _where(lambda: store.set("k", {"v": 2}), n, modules)  # noqa: B023
        fds = [os.open(v, os.O_RDWR | os.O_CREAT) for v in victims]  # the lowest free numbers
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX)
        del kept  # as a REPL does at the next exception
        gc.collect()
        for victim in victims:
            probe = os.open(victim, os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):  # still locked by its own descriptor
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(probe)
        for fd in fds:
            os.close(fd)
        store.close()
        if where == "":
            break
    assert n > 20


@pytest.mark.parametrize("after", ["write", "fdatasync"])
def test_a_set_interrupted_once_its_bytes_are_written_keeps_the_version_a_reader_saw(
    tmp_path: Path, after: str
) -> None:
    # A Ctrl-C during the fdatasync (most of a durable set's time) is delivered as it
    # returns: the writer cut the appended frames again, so the version another handle
    # had read meanwhile vanished: that handle failed every read of the key ("acknowledged
    # bytes were cut off"), and the next set gave the version again, another value.
    root = str(tmp_path / "s")
    writer, reader = Store(root, dag="d"), Store(root, dag="d")
    writer.set("k", {"v": 1})
    seen: list[tuple[int, Any]] = []

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        code, name = frame.f_code, getattr(arg, "__name__", "")
        ours = code.co_name == "append" and code.co_filename.endswith("fileio.py")
        if event == "c_return" and name == after and ours:
            sys.setprofile(None)
            got = reader.get("k")  # another handle (a process) reading meanwhile
            seen.append((got.version, got.value))
            raise _Interrupt

    sys.setprofile(profile)
    with pytest.raises(_Interrupt):
        writer.set("k", {"v": 2})
    sys.setprofile(None)
    assert seen == [(2, {"v": 2})]
    assert reader.get("k").version == writer.get("k").version == 2  # it stands: may have written
    assert writer.set("k", {"v": 3}).version == 3
    assert reader.get("k").value == {"v": 3}
    assert Store(root, dag="d").check().ok


def test_a_set_interrupted_before_its_fdatasync_keeps_the_version_only_once_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Frames a durable set left unsynced in its (unmarked) log could be indexed by gc's
    # rebuild and pointed at by another key's durable set: a power loss broke that one.
    # So they stand only once fdatasynced; if that sync fails, they are cut as before.
    root = str(tmp_path / "s")
    writer = Store(root, dag="d")
    writer.set("k", {"v": 1})
    syncs: list[int] = []

    def profile(frame: types.FrameType, event: str, arg: object) -> None:
        code, name = frame.f_code, getattr(arg, "__name__", "")
        ours = code.co_name == "append" and code.co_filename.endswith("fileio.py")
        if event == "c_return" and name == "write" and ours:
            sys.setprofile(None)
            raise _Interrupt

    def failing_sync(fd: int) -> None:
        syncs.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_sync)
    sys.setprofile(profile)
    with pytest.raises(_Interrupt):
        writer.set("k", {"v": 2})
    sys.setprofile(None)
    monkeypatch.undo()
    assert len(syncs) == 1  # tried
    assert Store(root, dag="d").get("k").version == 1  # not synced: cut
    assert writer.set("k", {"v": 3}).version == 2
    assert Store(root, dag="d").check().ok
