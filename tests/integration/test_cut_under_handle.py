"""A log cut under a long-lived handle that had read or written the versions cut off.

A server, or a worker's long-lived ``Store``, remembers each log's newest
entry while its read cache holds it (docs/FORMAT.md §7, "A cut a handle
saw"). When the log later ends below that version (its newest entries cut
off at a frame boundary, or the file removed), the handle's memory is the
evidence: it refuses the key instead of serving the older version or giving
the cut versions again, and records the evidence in the log's version index
so that every other reader, writer and ``check`` sees it too.

The oracle is an undamaged copy of the store: every answer on the damaged
store equals the copy's or is a refusal (``CorruptionError``), and after
``check --repair`` the next write numbers as the copy's does.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

from castore import CorruptionError, NotFoundError, Store
from castore.file.records import KIND_ENTRY, decode_entry
from castore.transfer import export_lines, import_lines
from tests.helpers import frames_of, key_answers, log_path

pytestmark = pytest.mark.integration

DAG: Final = "cut"
_REFUSED: Final = dict.fromkeys(["get", "get v1", "history", "export"], "CorruptionError")


def _cut_answers(root: Path, pristine: Path) -> None:
    """The key's newest version, history and export refused; version 1 as on the copy."""
    answers = key_answers(root, "k", DAG)
    assert answers == {**_REFUSED, "get v1": key_answers(pristine, "k", DAG)["get v1"]}


def _three(root: Path, writer: Store) -> tuple[Path, list[int]]:
    """Set ``k`` to versions 1..3 through ``writer`` (and ``other`` to 1); the log and its sizes."""
    sizes = []
    log = Path(log_path(root, "dag", DAG, "k"))
    for n in range(3):
        writer.set("k", {"n": n})
        sizes.append(log.stat().st_size)
    writer.set("other", 1)
    return log, sizes


def _pristine(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pristine"
    shutil.copytree(root, copy)
    return copy


@pytest.mark.parametrize("who", ["wrote", "read"])
def test_a_cut_at_a_frame_boundary_is_refused_by_the_handle_that_saw_the_newest(
    tmp_path: Path, who: str
) -> None:
    """The handle read (or wrote) version 3; the log is cut back to version 2's end."""
    root = tmp_path / "s"
    handle = Store(root, dag=DAG)
    if who == "wrote":
        log, sizes = _three(root, handle)
    else:
        log, sizes = _three(root, Store(root, dag=DAG))
        assert handle.get("k").version == 3
    pristine = _pristine(root, tmp_path)
    os.truncate(log, sizes[1])
    with pytest.raises(CorruptionError, match="version 3"):
        handle.get("k")
    # The evidence is in the version index now: every reader refuses, not only this handle.
    _cut_answers(root, pristine)
    with pytest.raises(CorruptionError):
        handle.set("k", {"n": 9})
    with pytest.raises(CorruptionError):
        Store(root, dag=DAG).set("k", {"n": 9})
    assert log.stat().st_size == sizes[1]  # nothing written
    # Other keys answer as on the undamaged copy.
    assert key_answers(root, "other", DAG)["get"] == key_answers(pristine, "other", DAG)["get"]
    report = Store(root, dag=DAG).check()
    assert not report.ok
    assert Store(root, dag=DAG).check(repair=True).ok
    assert handle.set("k", {"n": 9}).version == Store(pristine, dag=DAG).set("k", {"n": 9}).version
    handle.close()


# The handle's first call after the cut, and what it must not answer.
FIRST_CALLS: Final[dict[str, Callable[[Store], object]]] = {
    "get at version 3": lambda s: s.get("k", version=3),  # never "no version 3"
    "history": lambda s: s.history("k"),  # never a history ending at version 2
    "history page": lambda s: s.history("k", before_version=4, limit=1),
    "export": lambda s: list(export_lines(s, namespace=DAG)),  # never a short export
    "diff": lambda s: s.diff("k", {"n": 9}),
    "set": lambda s: s.set("k", {"n": 9}),  # neither appended nor version 3 again
}


@pytest.mark.parametrize("call", FIRST_CALLS)
def test_every_call_of_a_handle_refuses_a_cut_it_saw(tmp_path: Path, call: str) -> None:
    root = tmp_path / "s"
    handle = Store(root, dag=DAG)
    log, sizes = _three(root, handle)
    pristine = _pristine(root, tmp_path)
    os.truncate(log, sizes[1])
    with pytest.raises(CorruptionError, match="version 3"):
        FIRST_CALLS[call](handle)
    listed = handle.list()
    assert (listed.skipped, [e.key for e in listed.entries]) == (["k"], ["other"])
    assert log.stat().st_size == sizes[1]
    _cut_answers(root, pristine)
    assert Store(root, dag=DAG).check(repair=True).ok
    assert handle.set("k", {"n": 9}).version == 4
    handle.close()


def test_a_version_simply_absent_is_still_not_found(tmp_path: Path) -> None:
    """A version an import never gave, below the newest the handle read: "no version", no alarm."""
    root = tmp_path / "s"
    source = Store(tmp_path / "src", dag=DAG)
    source.set("k", 1)
    source.set("k", 2)
    source.set("k", 3)
    source.compact(keep_last=1)
    lines = list(export_lines(source, namespace=DAG))
    handle = Store(root, dag=DAG)
    import_lines(handle, lambda: lines)
    assert handle.get("k").version == 3
    with pytest.raises(NotFoundError):
        handle.get("k", version=2)
    assert [e.version for e in handle.history("k").entries] == [3]
    handle.close()


def test_a_log_removed_under_the_handle_is_lost_not_new(tmp_path: Path) -> None:
    """No ``STATE`` record, no index: the handle's memory alone tells a lost log from a new key."""
    root = tmp_path / "s"
    handle = Store(root, dag=DAG)
    log, _ = _three(root, handle)
    assert not log.with_suffix(".vix").exists()
    assert not (log.parent / "STATE").exists()  # never listed: no other evidence
    log.unlink()
    with pytest.raises(
        CorruptionError, match="is missing, but this handle read or wrote version 3"
    ):
        handle.delete("k")  # not "deleted: false"
    with pytest.raises(CorruptionError, match="its version index records versions up to 3"):
        handle.get("k")  # the evidence it recorded
    assert key_answers(root, "k", DAG) == _REFUSED
    with pytest.raises(CorruptionError):
        Store(root, dag=DAG).set("k", 1)
    assert not Store(root, dag=DAG).check().ok
    assert Store(root, dag=DAG).check(repair=True).ok
    assert handle.set("k", 1).version == 4
    handle.close()


def test_a_log_emptied_under_the_writer_of_the_handle_is_lost(tmp_path: Path) -> None:
    root = tmp_path / "s"
    handle = Store(root, dag=DAG)
    log, _ = _three(root, handle)
    log.write_bytes(b"")
    with pytest.raises(CorruptionError, match="version 3"):
        handle.set("k", 1)
    assert key_answers(root, "k", DAG) == _REFUSED
    handle.close()


def test_rewrites_and_a_new_life_are_no_false_alarm(tmp_path: Path) -> None:
    """Compaction, gc and a key removed and made again keep or raise the newest version."""
    root = tmp_path / "s"
    handle = Store(root, dag=DAG)
    _three(root, handle)
    other = Store(root, dag=DAG)
    other.compact(keep_last=1)
    assert handle.get("k").version == 3
    handle.delete("k")
    assert handle.get("k").found is False
    other.compact(keep_last=1, keep_within_seconds=0)
    assert handle.get("k").found is False  # the log holds no entry now, only the C frame
    other.gc(grace_seconds=0)
    assert not Path(log_path(root, "dag", DAG, "k")).exists()
    assert handle.get("k").found is False
    assert other.set("k", "again").version == 5
    assert handle.get("k").version == 5
    assert handle.set("k", "fifth").version == 6
    other.gc(grace_seconds=0)
    assert handle.get("k").version == 6
    assert handle.history("k").entries[0].version == 6
    handle.close()
    other.close()


def test_a_log_renamed_in_between_the_stat_and_the_open_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that stat'ed the old log and opened a longer one (an import's overwrite).

    In the new file an entry of a lower version ends exactly where the old
    file ended: read at the old size, it looked like a cut (and, before the
    cache was evidence, was served as the newest version).
    """
    import random

    from castore.file.reflog import RefLog

    root = tmp_path / "s"
    handle = Store(root, dag=DAG)
    log, sizes = _three(root, handle)
    assert handle.get("k").version == 3
    letters = random.Random(7)
    for pad in range(4000):  # a history whose version 2 ends where the old log ends
        other = tmp_path / f"o{pad}"
        store = Store(other, dag=DAG)
        store.set("k", {"n": 0})
        filler = "".join(letters.choice("abcdefghij") for _ in range(pad))
        store.set("k", {"pad": filler})
        if (Path(log_path(other, "dag", DAG, "k"))).stat().st_size == sizes[2]:
            break
        shutil.rmtree(other)
    else:
        raise AssertionError("no padding gave the old log's size")
    store.set("k", "three")
    store.set("k", "four")
    store.close()
    new = Path(log_path(other, "dag", DAG, "k"))
    opened = RefLog.open

    def renamed_first(self: RefLog) -> int:
        if self.path == str(log) and new.exists():
            os.rename(new, log)  # what a rewrite does, between the reader's stat and open
        return opened(self)

    monkeypatch.setattr(RefLog, "open", renamed_first)
    os.utime(log, ns=(1, 1))  # the handle's next get misses its cache
    assert handle.get("k").version == 4
    monkeypatch.undo()
    assert Store(root, dag=DAG).check().ok
    handle.close()


MAINTENANCE: Final[dict[str, Callable[[Store], object]]] = {
    "gc": lambda s: s.gc(grace_seconds=0),
    "compact, nothing to drop": lambda s: s.compact(keep_last=10),
    "compact, a version dropped": lambda s: s.compact(keep_last=2),
    "check --repair": lambda s: s.check(repair=True),
}


@pytest.mark.parametrize("run", MAINTENANCE)
def test_maintenance_through_the_handle_keeps_what_it_saw(tmp_path: Path, run: str) -> None:
    """A server runs compact and gc on its own handle: its rewrites forgot every log it had read."""
    root = tmp_path / "s"
    handle = Store(root, dag=DAG)
    log, _ = _three(root, handle)
    MAINTENANCE[run](handle)
    frames, _ = frames_of(log)
    entries = [f for f in frames if f.kind == KIND_ENTRY]
    assert decode_entry(entries[-1].payload).version == 3
    os.truncate(log, entries[-2].end)  # version 3 cut off at its frame boundary
    with pytest.raises(CorruptionError, match=r"(read or wrote version|versions up to) 3"):
        handle.get("k")
    handle.close()


def _removed_after_read(root: Path) -> Store:
    """A handle that read ``k``'s tombstone (version 4), then compaction removed ``k``."""
    handle = Store(root, dag=DAG)
    _three(root, handle)
    handle.delete("k")
    assert handle.get("k").found is False  # version 4, a tombstone, cached
    Store(root, dag=DAG).compact(keep_last=1, keep_within_seconds=0)  # leaves a C frame
    return handle


def test_a_key_compaction_removed_is_a_hit_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removed state replaces the tombstone in the cache: no read of the log on each get."""
    from castore.file.reflog import RefLog

    handle = _removed_after_read(tmp_path / "s")
    assert handle.get("k").found is False
    opened: list[str] = []
    real_open = RefLog.open

    def counted(self: RefLog) -> int:
        opened.append(self.path)
        return real_open(self)

    monkeypatch.setattr(RefLog, "open", counted)
    assert handle.get("k").found is False
    assert opened == []  # a hit
    handle.close()


def test_a_removed_key_whose_graves_are_lost_is_no_cut(tmp_path: Path) -> None:
    """The log's C frame still says versions 1-4 were compacted (as every other reader reads it)."""
    root = tmp_path / "s"
    handle = _removed_after_read(root)
    for graves in root.rglob("GRAVES"):
        graves.unlink()
    vix = Path(log_path(root, "dag", DAG, "k")).with_suffix(".vix")
    index = vix.read_bytes() if vix.exists() else None
    assert handle.get("k").found is False
    assert (vix.read_bytes() if vix.exists() else None) == index  # no marker overwritten
    assert handle.set("k", 9).version == 5
    assert Store(root, dag=DAG).check().ok
    handle.close()


def test_a_write_whose_sync_failed_is_no_cut_for_a_reader_of_the_same_handle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer cuts its bytes after a failed fdatasync; a thread of the handle had read them."""
    import errno
    import threading

    from castore.file import fileio

    root = tmp_path / "s"
    handle = Store(root, dag=DAG)
    handle.set("k", 1)
    handle.set("k", 2)
    real_append = fileio.append
    seen: list[int] = []

    def failing_append(fd: int, data: bytes, *, durable: bool) -> None:
        real_append(fd, data, durable=False)  # in the file, visible to readers
        reader = threading.Thread(target=lambda: seen.append(handle.get("k").version))
        reader.start()
        reader.join()
        raise OSError(errno.EIO, "fdatasync failed (simulated)")

    monkeypatch.setattr(fileio, "append", failing_append)
    with pytest.raises(OSError, match="simulated"):
        handle.set("k", 3)
    monkeypatch.undo()
    assert seen == [3]  # the reader saw the bytes the writer then cut
    assert handle.get("k").version == 2
    assert handle.set("k", 3).version == 3
    assert Store(root, dag=DAG).check().ok
    handle.close()
