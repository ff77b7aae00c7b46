"""A key's log put back with its ``.vix`` from an older copy: ``STATE`` knows better.

A backup of one key's files (its log and version index) copied back over
newer ones left no evidence in either: the key's older version was served
as current, a ``set`` gave versions 6 and 7 a second time, and that write's
pending mark erased the evidence ``check`` had reported. ``list`` had
recorded version 7 in the namespace's ``STATE``, and a key's newest version
only grows, so every reader of the log's tail, every writer (the CLI's
quick paths included) and a read of an absent version now refuse a log that
ends below it. The oracle: the same calls on an undamaged twin.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from castore import CorruptionError, Store
from castore.file.peek import behind_state
from castore.file.tree import Tree
from tests.helpers import Cli, log_path, run_threads_for

pytestmark = pytest.mark.integration

BEHIND = "but the namespace's STATE records version 7"


def _restored(tmp_path: Path) -> tuple[Path, Path]:
    """``k`` at versions 1-5 copied aside with its index, then 6 and 7, listed, put back."""
    root, twin = tmp_path / "store", tmp_path / "twin"
    store = Store(root, dag="d")
    for n in range(5):
        store.set("k", n)
    assert store.get("k", version=3).value == 2  # readers index the log
    path = Path(log_path(root, "dag", "d", "k"))
    vix = path.with_suffix(".vix")
    shutil.copy(path, tmp_path / "k.log")
    shutil.copy(vix, tmp_path / "k.vix")
    store.set("k", 5)
    store.set("k", 6)
    store.set("j", 1)
    assert {e.key: e.version for e in store.list().entries} == {"j": 1, "k": 7}
    store.close()
    shutil.copytree(root, twin)
    shutil.copy(tmp_path / "k.log", path)
    shutil.copy(tmp_path / "k.vix", vix)
    return root, twin


def test_a_log_and_index_put_back_are_refused_then_repaired(tmp_path: Path) -> None:
    root, twin = _restored(tmp_path)
    clean = Store(twin, dag="d")
    store = Store(root, dag="d")
    before = Path(log_path(root, "dag", "d", "k")).read_bytes()
    for call in (
        lambda: store.get("k"),
        lambda: store.set("k", 99),
        lambda: store.delete("k"),
        lambda: store.get("k", version=7),  # absent from the copy: not "no version 7"
        lambda: store.get("k", version=9),  # any absent version, as for a cut log
    ):
        with pytest.raises(CorruptionError, match=BEHIND):
            call()
    assert Path(log_path(root, "dag", "d", "k")).read_bytes() == before  # nothing written
    for version in range(1, 6):  # what the copy holds is what the key had
        assert store.get("k", version=version) == clean.get("k", version=version)
    assert store.get("j") == clean.get("j")  # other keys are never blocked
    assert not store.check().ok
    store.check(repair=True)
    assert store.check().ok
    with pytest.raises(CorruptionError, match="lost"):
        store.get("k")  # versions 6 and 7 went with the copy: lost, never 5
    assert store.set("k", 8).version == 8  # never 6 or 7 again
    assert store.history("k").entries[0].version == 8
    store.close()
    clean.close()


def test_history_refuses_it_as_get_does(tmp_path: Path) -> None:
    """Found by the review: a history page that ends at the log's newest entry is a read of
    the key's current state (``history --limit 1``), and a page before a version the copy
    lacks silently skipped it."""
    root, twin = _restored(tmp_path)
    clean, store = Store(twin, dag="d"), Store(root, dag="d")
    assert [e.version for e in clean.history("k", limit=1).entries] == [7]
    calls: list[Callable[[], object]] = [
        lambda: store.history("k"),
        lambda: store.history("k", limit=1),
        lambda: store.history("k", before_version=7),
        lambda: store.history("k", before_version=4),  # the whole key, until repaired
    ]
    for call in calls:
        with pytest.raises(CorruptionError, match=BEHIND):
            call()
    store.close()
    clean.close()


def test_compaction_refuses_a_copy_ending_with_an_old_delete(tmp_path: Path) -> None:
    """Found by the review: compaction took the copy's old tombstone for the key's last
    state, removed the key and dropped its versions; reads then said "no version 6"."""
    root, twin = tmp_path / "store", tmp_path / "twin"
    store = Store(root, dag="d")
    for n in range(4):
        store.set("k", n)
    store.delete("k")  # version 5
    assert store.get("k", version=3).value == 2
    path = Path(log_path(root, "dag", "d", "k"))
    shutil.copy(path, tmp_path / "k.log")
    shutil.copy(path.with_suffix(".vix"), tmp_path / "k.vix")
    store.set("k", "six")
    store.list()
    store.close()
    shutil.copytree(root, twin)
    shutil.copy(tmp_path / "k.log", path)
    shutil.copy(tmp_path / "k.vix", path.with_suffix(".vix"))
    before = path.read_bytes()
    store = Store(root, dag="d")
    for dry_run in (True, False):
        with pytest.raises(CorruptionError, match="STATE records version 6"):
            store.compact(keep_within_seconds=0, dry_run=dry_run)
    assert path.read_bytes() == before
    assert [(e.key, e.version) for e in store.list().entries] == [("k", 6)]
    with pytest.raises(CorruptionError, match="STATE records version 6"):
        store.get("k", version=6)
    clean = Store(twin, dag="d")
    assert clean.compact(keep_within_seconds=0).keys_removed == 0
    assert clean.get("k", version=6).value == "six"
    store.close()
    clean.close()


def test_the_command_line_refuses_it(tmp_path: Path) -> None:
    root, _ = _restored(tmp_path)
    cli = Cli(tmp_path, root, dag="d")
    path = Path(log_path(root, "dag", "d", "k"))
    before = path.read_bytes()
    assert BEHIND in cli.fail(5, "get", "k")
    assert BEHIND in cli.fail(5, "set", "k", "5")
    assert BEHIND in cli.fail(5, "history", "k")
    assert path.read_bytes() == before


def test_readers_never_raise_while_keys_are_written_and_listed(tmp_path: Path) -> None:
    """A tail read, then a write and a list that record more in STATE: no false alarm."""
    root = tmp_path / "store"
    keys = [f"k{n}" for n in range(4)]
    first = Store(root, dag="d")
    for key in keys:
        first.set(key, 0)
    first.list()
    stop, errors = threading.Event(), []

    def write() -> None:
        writer, n = Store(root, dag="d"), 0
        while not stop.is_set():
            n += 1
            writer.set(keys[n % len(keys)], n)
            if n % 3 == 0:
                writer.list()
        writer.close()

    def read() -> None:
        reader = Store(root, dag="d")
        while not stop.is_set():
            for key in keys:
                try:
                    reader.get(key)
                    reader.get(key, version=1)
                except CorruptionError as exc:  # pragma: no cover - the failure reported
                    errors.append(exc)
        reader.close()

    threads = [threading.Thread(target=t) for t in (write, write, read, read)]
    run_threads_for(threads, stop, 3)
    assert errors == []
    assert first.check().ok
    first.close()


@pytest.mark.parametrize("key", ["k", "k" * 40, "k" * 300, "\u00e9t\u00e9"])
@pytest.mark.parametrize("version", [5, 127, 128, 255, 256, 70_000, 5_000_000_000])
def test_the_quick_paths_read_the_version_state_records(
    tmp_path: Path, key: str, version: int
) -> None:
    """The CLI's quick get and set find the version in STATE's msgpack without msgspec."""
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set(key, 1)
    store.list()
    store.close()
    path = log_path(root, "dag", "d", key)
    state = Path(path).parent / "STATE"
    data = state.read_bytes()
    fs = Tree(str(root))
    assert behind_state(fs, path, key, 1) == (len(key.encode()) >= 256)
    assert behind_state(fs, path, key, 0)  # STATE records version 1: more than 0
    # Version 1 as the row's msgpack integer, replaced by ``version``'s encoding.
    name = key.encode()
    assert data.count(name) >= 1
    width = [(127, b""), (255, b"\xcc"), (65535, b"\xcd"), (2**32 - 1, b"\xce")]
    prefix = next((p for top, p in width if version <= top), b"\xcf")
    size = {b"": 0, b"\xcc": 1, b"\xcd": 2, b"\xce": 4, b"\xcf": 8}[prefix]
    encoded = prefix + (version.to_bytes(size, "big") if size else bytes([version]))
    packed = msgspec.msgpack.encode(key)  # the key as STATE's rows hold it
    at = data.rindex(packed) + len(packed)
    assert data[at] == 1
    state.write_bytes(data[:at] + encoded + data[at + 1 :])
    assert behind_state(fs, path, key, version - 1)
    # A key of 256 bytes or more is left to the store wherever STATE names it.
    assert behind_state(fs, path, key, version) == (len(name) >= 256)
    fs.close()
