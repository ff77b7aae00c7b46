"""What a durable call that answers without writing syncs (FORMAT.md §6 step 3).

A durable ``delete`` that finds the key deleted or ``diff`` that finds the value stored
answers from the log as it is: the log is fdatasynced first, unless this process did
so since the file last changed (its own durable write included). What a power loss
then keeps is checked by ``tests/integration/test_power_loss.py``; here, which files
get an ``fdatasync``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import pytest

from castore import Store, export_lines, import_lines
from castore.file.modes import DATA_UNSYNCED, UNSYNCED
from tests.helpers import ref_log_path, served_location


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The inode numbers of the files ``os.fdatasync`` is called on, in order."""
    inodes: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        inodes.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return inodes


def _inode(store: Store, key: str) -> int:
    return os.stat(ref_log_path(store, key)).st_ino


def _import_skip(store: Store) -> bool:
    lines = list(export_lines(store))
    return bool(import_lines(store, lambda: iter(lines), on_conflict="skip").skipped_refs)


ANSWERS: dict[str, Callable[[Store], bool]] = {
    "delete": lambda s: not s.delete("k").deleted,
    "diff": lambda s: not s.diff("k", {"n": 2}).changed,
    "import-skip": _import_skip,
}


def _no_sync_write(store: Store, call: str) -> None:
    store.set("k", {"n": 2})
    if call == "delete":
        store.delete("k")


@pytest.mark.parametrize("call", sorted(ANSWERS))
def test_an_answer_from_a_no_sync_write_syncs_its_log_once(tmp_path, synced, call):
    durable = Store(str(tmp_path / "s"), dag="d")
    durable.set("k", {"n": 1})
    quick = Store(str(tmp_path / "s"), dag="d", durable=False)
    _no_sync_write(quick, call)
    del synced[:]
    assert ANSWERS[call](durable)
    assert synced == [_inode(durable, "k")]  # the log, made durable before the answer
    del synced[:]
    assert ANSWERS[call](durable)
    assert synced == []  # unchanged since: not again


@pytest.mark.parametrize("call", sorted(ANSWERS))
def test_an_answer_from_this_process_s_durable_write_syncs_nothing(tmp_path, synced, call):
    durable = Store(str(tmp_path / "s"), dag="d")
    durable.set("k", {"n": 1})
    _no_sync_write(durable, call)
    del synced[:]
    assert ANSWERS[call](durable)
    assert synced == []


@pytest.mark.parametrize("call", sorted(ANSWERS))
def test_a_no_sync_answer_syncs_nothing(tmp_path, synced, call):
    quick = Store(str(tmp_path / "s"), dag="d", durable=False)
    _no_sync_write(quick, call)
    del synced[:]
    assert ANSWERS[call](quick)
    assert synced == []


def test_a_diff_whose_value_lives_in_another_log_settles_that_log(tmp_path, synced):
    # k's newest version points at a value of at least 256 bytes that "other"'s log holds
    # (a durable=False write indexed it there: the log is marked); the answer rests on it.
    big = {"report": "x" * 600}
    quick = Store(str(tmp_path / "s"), dag="d", durable=False)
    quick.set("other", big)
    quick.set("k", big)
    assert os.path.getsize(ref_log_path(quick, "k")) < 600  # pointed into "other"'s log
    durable = Store(str(tmp_path / "s"), dag="d")
    del synced[:]
    assert not durable.diff("k", big).changed
    assert _inode(durable, "other") in synced
    assert _inode(durable, "k") in synced


@pytest.mark.parametrize("call", sorted(ANSWERS))
def test_an_answer_over_http_syncs_the_server_s_log(tmp_path, synced, call):
    # The worker decides on the newest entry it read and, deciding to write nothing,
    # sent nothing: the server's durable store answered from frames a durable=False
    # write left unsynced, and synced nothing. Now the worker asks the server to make
    # the entry it decided on durable (an append of no versions).
    local = str(tmp_path / "s")
    durable = Store(local, dag="d")
    durable.set("k", {"n": 1})
    _no_sync_write(Store(local, dag="d", durable=False), call)
    with served_location(contextlib.nullcontext(local)) as url:
        remote = Store(url, dag="d")
        del synced[:]
        assert ANSWERS[call](remote)
        assert synced == [_inode(durable, "k")]
        remote.close()


@pytest.mark.parametrize("call", sorted(ANSWERS))
def test_an_answer_clears_the_marks_it_settled(tmp_path, synced, call):
    # The durable=False writes create the key (its name and KEYS line: UNSYNCED) and index
    # a value of at least 256 bytes in its log (DATA_UNSYNCED). The answer settles both:
    # its marks go, and the next answer, from the same log, syncs nothing again.
    quick = Store(str(tmp_path / "s"), dag="d", durable=False)
    quick.set("k", {"report": "x" * 600})
    quick.set("k", {"n": 2})
    if call == "delete":
        quick.delete("k")
    log = ref_log_path(quick, "k")
    assert os.stat(log).st_mode & (UNSYNCED | DATA_UNSYNCED) == UNSYNCED | DATA_UNSYNCED
    durable = Store(str(tmp_path / "s"), dag="d")
    assert ANSWERS[call](durable)
    assert os.stat(log).st_mode & (UNSYNCED | DATA_UNSYNCED) == 0
    del synced[:]
    assert ANSWERS[call](durable)
    assert synced == []


def test_only_files_in_the_store_are_recorded_as_synced(tmp_path):
    # An import's history of several versions is written to a new file renamed over the
    # log: the descriptor the write held was left on the old, unlinked file, which was
    # recorded as synced. Its inode number, free once that descriptor closes, may be a
    # new file's, which an answer within the same clock tick, of the same size, then
    # trusted to be synced: only a file that still has its name is recorded.
    from castore.file import namesync

    root = tmp_path / "s"
    source = Store(str(tmp_path / "src"), dag="d")
    source.set("k", {"n": 1})
    source.set("k", {"n": 2})
    lines = list(export_lines(source))
    namesync._SYNCED.clear()
    durable = Store(str(root), dag="d")
    import_lines(durable, lambda: iter(lines))
    assert durable.get("k").version == 2
    named = {(st.st_dev, st.st_ino) for st in map(os.stat, root.rglob("*"))}
    assert set(namesync._SYNCED) <= named
