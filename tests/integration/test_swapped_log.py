"""A log copied over another key's log is never read or written as that key's.

Found by a review: with ``b``'s log copied over ``a``'s, ``get a`` answered
``b``'s newest value at ``b``'s version (another key's value, and an older
version than ``a``'s), on the library's path and the CLI's quick one alike,
although ``check`` named the wrong header. Every read and write of ``a`` now
refuses (``CorruptionError``, CLI exit 5); ``b`` reads as an undamaged copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from castore import CorruptionError, Store
from castore.file import backend as file_backend
from castore.file import writer as file_writer
from tests.helpers import Cli, log_path

pytestmark = pytest.mark.integration


@pytest.fixture
def swapped(tmp_path: Path) -> tuple[Store, Cli, Store]:
    root, twin_root = tmp_path / "store", tmp_path / "twin"
    for where in (root, twin_root):
        s = Store(where, dag="d")
        for version in range(1, 4):
            s.set("a", {"a": version})
        s.set("b", {"b": 1})
        s.history("a")  # builds a's version index
    a_log = Path(log_path(root, "dag", "d", "a"))
    shutil.copyfile(log_path(root, "dag", "d", "b"), a_log)
    os.unlink(a_log.with_suffix(".vix"))
    return Store(root, dag="d"), Cli(tmp_path, root, dag="d"), Store(twin_root, dag="d")


CALLS = {
    "get": lambda s: s.get("a"),
    "get version 1": lambda s: s.get("a", version=1),
    "history": lambda s: s.history("a"),
    "set": lambda s: s.set("a", {"a": 4}),
    "delete": lambda s: s.delete("a"),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_the_wrong_key_s_log_is_refused(swapped, call):
    store, _, twin = swapped
    with pytest.raises(CorruptionError, match=r"is the log of dag/d/b \(its header says so\)"):
        CALLS[call](store)
    assert store.get("b") == twin.get("b")
    shown = [[(e.version, e.hash) for e in s.history("b").entries] for s in (store, twin)]
    assert shown[0] == shown[1]


def test_the_cli_quick_get_refuses_it_too(swapped):
    _, cli, _ = swapped
    proc = cli.run("get", "a")
    assert proc.returncode == 5, proc
    assert b"is the log of dag/d/b" in proc.stderr
    assert proc.stdout == b""
    assert cli.run("set", "a", "4").returncode == 5


def test_check_names_the_header(swapped):
    store, _, _ = swapped
    problems = [f.problem for f in store.check().findings]
    assert any("dag/d/b" in p for p in problems), problems


def test_a_long_lived_writer_refuses_a_log_copied_over_in_place(tmp_path: Path) -> None:
    """``cp`` keeps the inode: a handle's kept descriptor still names the file. Was: the next
    set was acknowledged at b's next version, in a log whose header names b."""
    root = tmp_path / "store"
    s = Store(root, dag="d")
    for version in range(1, 4):
        s.set("a", {"a": version})
    s.set("b", {"b": 1})
    shutil.copyfile(log_path(root, "dag", "d", "b"), log_path(root, "dag", "d", "a"))
    with pytest.raises(CorruptionError, match=r"is the log of dag/d/b"):
        s.set("a", {"a": 4})
    assert s.get("b").value == {"b": 1}


@pytest.mark.parametrize("kept", [True, False], ids=["wrote-it", "read-it"])
def test_a_handle_that_knows_the_log_refuses_it_once_copied_over(
    tmp_path: Path, kept: bool
) -> None:
    """A writer skips the header only for the very file its handle last wrote or read.

    ``wrote-it``: the handle keeps a's descriptor from its own write; ``read-it``: it
    only read a (a cache entry, no kept descriptor). Either way b's log copied over a's
    in place (same inode, other size and times) is a file the handle does not know.
    """
    root = tmp_path / "store"
    writer = Store(root, dag="d")
    writer.set("b", {"b": 1})
    for version in range(1, 4):
        writer.set("a", {"a": version})
    s = writer if kept else Store(root, dag="d")
    assert s.get("a").version == 3  # cached with the file's signature
    shutil.copyfile(log_path(root, "dag", "d", "b"), log_path(root, "dag", "d", "a"))
    with pytest.raises(CorruptionError, match=r"is the log of dag/d/b"):
        s.set("a", {"a": 4})
    with pytest.raises(CorruptionError, match=r"is the log of dag/d/b"):
        s.delete("a")
    assert s.get("b").value == {"b": 1}


def test_a_same_size_copy_within_one_clock_tick_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: a writer skipped the header when the file's stat signature was
    the one its handle knew, but where file times come from the coarse clock (Linux
    before 6.13: 1-4 ms ticks) a same-size copy in place within one tick keeps it, and
    a's next version was acknowledged in b's log. Simulated by a signature without times
    (the copy always lands "within the tick")."""

    def coarse(st: os.stat_result) -> tuple[int, int, int, int]:
        return (st.st_ino, st.st_size, 0, 0)

    monkeypatch.setattr(file_writer, "stat_sig", coarse)
    monkeypatch.setattr(file_backend, "stat_sig", coarse)
    root = tmp_path / "store"
    s = Store(root, dag="d")
    s.set("b", {"v": 1})
    s.set("a", {"v": 1})
    a_log, b_log = log_path(root, "dag", "d", "a"), log_path(root, "dag", "d", "b")
    data = Path(b_log).read_bytes()
    assert os.path.getsize(a_log) == len(data)  # same-length keys and values
    fd = os.open(a_log, os.O_WRONLY | os.O_TRUNC)  # b's log copied over a's in place
    os.write(fd, data)
    os.close(fd)
    with pytest.raises(CorruptionError, match=r"is the log of dag/d/b"):
        s.set("a", {"v": 2})
    assert Store(root, dag="d").get("b").version == 1
