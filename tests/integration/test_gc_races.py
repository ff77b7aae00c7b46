"""gc and compaction racing writers and readers in other processes.

A maintenance child is paused at a failpoint (``CASTORE_FAILPOINTS="name:stop"``:
the child SIGSTOPs itself there; we wait for state ``T`` in ``/proc/<pid>/stat``)
while this process and other children write and read; then it is continued
with SIGCONT. Writes go through :class:`tests.crash_worker.Workload`, which
logs each acknowledged version, and :func:`tests.crash_worker.verify` checks
the store afterwards (every acknowledged version reads back, ``check`` ok).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Final

import pytest

from castore import NotFoundError, Store, codec
from castore.file import blobindex
from castore.file.records import KIND_BLOB, KIND_COMPACTED, KIND_ENTRY, decode_entry
from castore.records import Entry
from castore.transfer import export_lines, import_lines
from tests.crash_worker import (
    DAG,
    AckLog,
    Children,
    Workload,
    proc_state,
    read_records,
    verify,
    wait_stopped,
)
from tests.helpers import file_backend, frames_of, log_path

pytestmark = pytest.mark.integration

Child = subprocess.Popen[bytes]
BLOCKED_SECONDS: Final = 0.3  # how long a writer is watched while it waits for a lock


@pytest.fixture
def children(tmp_path):
    with Children(str(tmp_path)) as kids:
        yield kids


class Setup:
    """A store, its ack file, and a writer in this process that logs what it wrote."""

    def __init__(self, tmp_path: pathlib.Path, children: Children) -> None:
        self.root = str(tmp_path / "store")
        self.ack = str(tmp_path / "ack.jsonl")
        self.children = children
        self.store = Store(self.root, dag=DAG, durable=True)
        self.log = AckLog(self.ack, sync=True)
        self.work = Workload(self.store, self.log, random.Random(5), tag="p")

    def set(self, key: str, value: Any) -> None:
        self.work.set_value(key, value)

    def spawn(self, role: str, *extra: str, failpoints: str = "") -> Child:
        args = [role, "--root", self.root, "--ack", self.ack, "--durable", *extra]
        return self.children.spawn(args, failpoints=failpoints, ready=True)

    def paused(self, role: str, point: str, *extra: str) -> Child:
        """Start a maintenance child and wait until it has stopped itself at ``point``."""
        proc = self.spawn(role, *extra, failpoints=f"{point}:stop")
        assert wait_stopped(proc), f"{role} did not stop at {point}: exit {proc.poll()}"
        return proc

    def resume(self, proc: Child) -> None:
        os.kill(proc.pid, signal.SIGCONT)
        assert self.children.wait(proc) == 0, self.children.error_text(proc)

    def set_in_child(self, key: str, value: Any) -> Child:
        proc = self.spawn("set", "--key", key, "--value", json.dumps(value))
        assert self.children.wait_ready(proc)
        return proc

    def verify(self, *, repair: bool = True) -> list[str]:
        self.log.close()
        return verify(self.root, read_records(self.ack), repair=repair).violations


BIG: Final = 300  # pad: values of 256 bytes or more are deduplicated across logs


def value(name: str, pad: int = BIG) -> dict[str, Any]:
    return {"name": name, "pad": "z" * pad}


def newest_entry(root: str, key: str) -> Entry:
    frames, _size = frames_of(log_path(root, "dag", DAG, key))
    return [decode_entry(f.payload) for f in frames if f.kind == KIND_ENTRY][-1]


def read_all(store: Store, key: str) -> dict[int, Any]:
    """Every version the history lists, read back (None for a tombstone)."""
    out = {}
    for entry in store.history(key).entries:
        got = store.get(key, version=entry.version)
        out[entry.version] = got.value if got.found else None
    return out


def test_writers_racing_a_gc_paused_after_mark_keep_every_blob(tmp_path, children):
    s = Setup(tmp_path, children)
    dropped, dropped_too = value("dropped"), value("dropped-too", 2 * BIG)
    s.set("a", dropped)
    s.set("a", dropped_too)
    s.set("a", value("a-current"))
    s.set("b", value("b-current"))
    s.set("c", value("c-old"))
    s.set("c", value("c-current"))
    s.work.compact(1, None)  # dropped, dropped-too and c-old: blobs nobody references

    gc = s.paused("gc", "gc-after-mark")
    # New values, in this process and in another one.
    s.set("a", value("a-new"))
    s.set("new-key", value("brand-new"))
    # Reuse a live blob of another log (gc holds gc.lock: a fresh copy must be written).
    s.set("b", s.store.get("a").value)
    # Re-set values whose blobs were unreferenced when gc marked: in their own log ...
    s.set("a", dropped)
    # ... and in other logs.
    s.set("c", dropped_too)
    others = [
        s.set_in_child("d", dropped),
        s.set_in_child("e", value("c-old")),
        s.set_in_child("f", value("b-current")),
    ]
    for proc in others:  # writers never wait for gc
        assert children.wait(proc, timeout=10) == 0, children.error_text(proc)
    assert proc_state(gc.pid) in ("T", "t"), "gc went on while it should be stopped"
    # While gc held gc.lock, reused values of other logs were stored as fresh copies.
    for key in ("b", "c", "d", "e", "f"):
        entry = newest_entry(s.root, key)
        assert entry.blob is not None
        assert entry.blob.log == "", (key, entry.blob)
    s.resume(gc)

    store = Store(s.root, dag=DAG)
    for key in ("a", "b", "c", "d", "e", "f", "new-key"):
        read_all(store, key)  # no CorruptionError: no live blob is missing
    assert store.get("a").value == dropped
    assert store.get("b").value == value("a-new")
    assert store.get("c").value == dropped_too
    assert store.get("d").value == dropped
    assert store.get("e").value == value("c-old")
    assert store.get("f").value == value("b-current")
    report = store.check()
    assert report.ok, report.findings
    assert s.verify(repair=False) == []


def test_gc_paused_after_mark_then_killed_leaves_writers_intact(tmp_path, children):
    s = Setup(tmp_path, children)
    s.set("a", value("old"))
    s.set("a", value("kept"))
    s.work.compact(1, None)
    gc = s.paused("gc", "gc-after-mark")
    s.set("b", value("old"))  # its blob was unreferenced at mark
    s.set("a", value("old"))
    children.kill(gc)
    s.set("c", s.store.get("b").value)  # gc.lock is free again: dedup across logs
    entry = newest_entry(s.root, "c")
    assert entry.blob is not None
    assert entry.blob.log != "", entry.blob
    assert s.verify() == []


def _prepare_key(s: Setup, compacted_before: bool) -> dict[int, Any]:
    """Key "k" with versions, key "j" pointing at a blob in k's log; k's values by version."""
    for i in range(4):
        s.set("k", value(f"k{i}", BIG + 40 * i))
    s.set("j", s.store.get("k", version=3).value)
    blob = newest_entry(s.root, "j").blob
    assert blob is not None
    assert blob.log != "", "j should point into k's log (a deduplicated value)"
    if compacted_before:  # moves k's blob frames: j's location hint goes stale
        s.work.compact(2, None)
        for i in range(4, 12):  # the paused compaction's record names more versions (longer)
            s.set("k", value(f"k{i}", BIG + 10 * i))
    return read_all(s.store, "k")


@pytest.mark.parametrize("point", ["rewrite-before-rename", "rewrite-after-rename"])
@pytest.mark.parametrize("history", ["fresh-log", "compacted-before"])
def test_readers_during_a_paused_compaction_read_consistent_values(
    tmp_path, children, point, history
):
    s = Setup(tmp_path, children)
    expected = _prepare_key(s, history == "compacted-before")
    expected_j = s.store.get("j").value
    newest = max(expected)
    compactor = s.paused("compact", point, "--keep-last", "1")

    cached = Store(s.root, dag=DAG)
    problems = []
    for reader in (cached, Store(s.root, dag=DAG), cached):
        for version, want in expected.items():
            try:
                got = reader.get("k", version=version)
            except NotFoundError as exc:
                # Only after the rename may old versions be gone, and then as "compacted".
                renamed = point == "rewrite-after-rename" and version != newest
                if not (renamed and re.search("compacted", str(exc))):
                    problems.append(f"k v{version}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - every failure is a finding here
                problems.append(f"k v{version}: {type(exc).__name__}: {exc}")
                continue
            if (got.version, got.value) != (version, want):
                problems.append(f"k v{version} read {got.version}/{got.value}")
        for key, want in (("k", expected[newest]), ("j", expected_j)):
            try:
                got = reader.get(key)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{key} current: {type(exc).__name__}: {exc}")
                continue
            if got.value != want:
                problems.append(f"{key} current read {got.value}")
    s.resume(compactor)
    assert problems == [], "readers during the paused compaction:\n" + "\n".join(problems)
    assert s.verify() == []


def test_writer_blocked_by_a_paused_compaction_lands_in_the_new_log(tmp_path, children):
    s = Setup(tmp_path, children)
    expected = _prepare_key(s, compacted_before=False)
    path = log_path(s.root, "dag", DAG, "k")
    before = os.stat(path).st_ino
    compactor = s.paused("compact", "rewrite-before-rename", "--keep-last", "1")

    late = value("written-during-compaction", 33)  # small: never deduplicated
    writer = s.set_in_child("k", late)
    time.sleep(BLOCKED_SECONDS)
    assert writer.poll() is None, "the writer should wait for the key's lock"
    assert proc_state(writer.pid) not in ("T", "t", "Z")
    assert Store(s.root, dag=DAG).get("k").value == expected[max(expected)]
    s.resume(compactor)
    assert children.wait(writer) == 0, children.error_text(writer)

    assert os.stat(path).st_ino != before, "compaction should have replaced the log"
    frames, _size = frames_of(path)
    kinds = [f.kind for f in frames]
    assert KIND_COMPACTED in kinds
    entries = [decode_entry(f.payload) for f in frames if f.kind == KIND_ENTRY]
    newest = max(expected)
    assert [e.version for e in entries] == [newest, newest + 1]  # kept one, then the writer's
    store = Store(s.root, dag=DAG)
    got = store.get("k")
    assert (got.version, got.value) == (newest + 1, late)
    assert store.get("k", version=newest + 1).value == late
    for version in range(1, newest):
        with pytest.raises(NotFoundError, match="compacted"):
            store.get("k", version=version)
    assert s.verify() == []


def test_gc_index_rebuild_racing_a_compaction_keeps_blobs_findable(tmp_path, children):
    """gc rewrites the blob index from the logs while a compaction would move blob frames.

    gc is paused after its mark, holding gc.lock; a new key "b" gets versions; a
    compaction of "b" started then waits for gc.lock (a rewrite that moves blobs holds
    it shared: FORMAT.md §8) instead of moving b's frames under gc's index rebuild. gc
    finishes, then the compaction runs. Every blob must still be findable. (Before the
    seventeenth session the compaction went on to just before its rename, its new
    locations in the index, and gc's rebuild then read b's old log.)
    """
    s = Setup(tmp_path, children)
    s.set("a", value("a"))
    gc = s.paused("gc", "gc-after-mark", "--grace", "3600")  # leave the compaction's .tmp
    for i in range(4):
        s.set("b", value(f"b{i}", 150 * i))  # small and big values
    compactor = s.spawn("compact", "--keep-last", "1")
    assert children.wait_ready(compactor)
    time.sleep(0.5)
    assert compactor.poll() is None, children.error_text(compactor)  # waits for gc
    s.resume(gc)
    assert children.wait(compactor) == 0, children.error_text(compactor)
    problems = s.verify(repair=False)
    got = None
    try:
        got = Store(s.root, dag=DAG).get("b").value
    except Exception as exc:  # noqa: BLE001 - reported below
        problems.append(f"b current: {type(exc).__name__}: {exc}")
    assert got == value("b3", 450), problems
    assert problems == []
    assert [e.version for e in Store(s.root, dag=DAG).history("b").entries] == [4]


def _reads(reader: Store, values: list[Any]) -> list[str]:
    problems = []
    for version, want in enumerate(values, 1):
        try:
            got = reader.get("k", version=version).value
        except Exception as exc:  # noqa: BLE001 - every failure is a finding here
            got = f"{type(exc).__name__}: {exc}"
        if got != want:
            problems.append(f"get(version={version}): {got}")
    try:
        got = reader.get("k").value
    except Exception as exc:  # noqa: BLE001
        got = f"{type(exc).__name__}: {exc}"
    if got != values[-1]:
        problems.append(f"get(): {got}")
    return problems


def test_a_stale_location_hint_that_names_another_blob_frame_falls_back(tmp_path):
    """A hint is only a hint: a valid ``B`` frame of another digest there is not the value.

    gc and compaction move blob frames, so an entry's ``blob`` location can come
    to name the start of another blob's frame: the kill cycles found logs where
    (after compaction and gc) ``k1`` version 14's hint named the frame of version
    15's value. Here the log is laid out that way directly: the blob frames of
    versions 2 and 3 (same length) trade places, every frame stays intact and
    the blob index is rebuilt. FORMAT.md §3: the reader verifies the frame at
    the hint and, when it is stale, looks the digest up in the blob index.
    Reads (also of a log with a torn tail), export and check must find the values.
    """
    root = str(tmp_path / "store")
    store = Store(root, dag=DAG, durable=False)
    values = [value(name * 3) for name in ("a", "b", "c")]
    for v in values:
        store.set("k", v)
    path = log_path(root, "dag", DAG, "k")
    with open(path, "rb") as fh:
        data = fh.read()
    frames, _size = frames_of(path)
    header, blob_a, entry_1, blob_b, entry_2, blob_c, entry_3 = frames
    assert [f.kind for f in (blob_a, blob_b, blob_c)] == [KIND_BLOB] * 3
    assert blob_b.end - blob_b.start == blob_c.end - blob_c.start
    swapped = (header, blob_a, entry_1, blob_c, entry_2, blob_b, entry_3)
    with open(path, "wb") as fh:
        fh.write(b"".join(data[f.start : f.end] for f in swapped))
    file_backend(store).rebuild_blob_index()  # the index knows where each blob is now

    reader = Store(root, dag=DAG)
    problems = _reads(reader, values)
    try:
        exported = [v for _e, v in reader.backend.iter_versions(reader.ref("k"))]
        if exported != [codec.normalize(v) for v in values]:
            problems.append(f"iter_versions (export): {exported}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"iter_versions (export): {type(exc).__name__}: {exc}")
    report = reader.check()
    problems += [f"check: {f.problem}" for f in report.findings]
    with open(path, "ab") as fh:
        fh.write(b"\x07torn")  # a killed write's torn tail: readers scan the log
    problems += [f"torn tail: {p}" for p in _reads(Store(root, dag=DAG), values)]
    assert problems == []


def test_a_key_recreated_while_compaction_removes_it_stays_listed(tmp_path, children):
    """Compaction takes a removed key out of ``KEYS`` before its new log is in place.

    Once the new log is renamed into place, the old one's lock no longer keeps
    writers out: a writer re-creating the key at that moment must find it
    unlisted and list it again, or ``list`` would miss a live key for good
    (found by review: ``KEYS`` was changed after the rewrite).
    """
    s = Setup(tmp_path, children)
    s.set("k", value("first", 10))
    s.store.delete("k")
    compactor = s.paused(
        "compact", "rewrite-after-rename", "--keep-last", "1", "--keep-within", "0"
    )
    writer = s.set_in_child("k", value("again", 10))  # the new log is not locked: no wait
    assert children.wait(writer) == 0, children.error_text(writer)
    s.resume(compactor)
    store = Store(s.root, dag=DAG)
    got = store.get("k")
    assert got.found
    assert [(e.key, e.version) for e in store.list().entries] == [("k", got.version)]


def test_a_key_made_live_again_is_listed_again(tmp_path):
    """A key missing from ``KEYS`` (compaction stopped after unlisting it) is listed by a set."""
    store = Store(tmp_path / "store", dag=DAG)
    store.set("k", 1)
    store.delete("k")
    file_backend(store).names.key_index("dag", DAG).remove({"k"}, durable=True)
    assert store.list().entries == []
    store.set("k", 2)
    fresh = Store(tmp_path / "store", dag=DAG)
    assert [(e.key, e.version) for e in fresh.list().entries] == [("k", 3)]


def _replace_shards_until(index_dir: str, stop_at: float) -> None:
    """Replace every blob index shard as gc's rebuild does, and remove it, in turns."""
    shards = {name: pathlib.Path(index_dir, name).read_bytes() for name in os.listdir(index_dir)}
    turn = 0
    while time.monotonic() < stop_at:
        turn += 1
        for name, data in shards.items():
            path = os.path.join(index_dir, name)
            if turn % 3 == 2:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            tmp = path + ".tmp"
            pathlib.Path(tmp).write_bytes(data if turn % 3 == 0 else data[: len(data) // 3])
            os.rename(tmp, path)


def test_writes_never_fail_while_gc_replaces_the_blob_index(tmp_path):
    """A shard replaced between a writer's stat and its read (smaller: a negative
    read length, EINVAL; removed: FileNotFoundError) failed the write: 2 of about
    300,000 writes beside a compact/gc loop, at once with a shard replaced in a loop."""
    root = str(tmp_path / "store")
    values = [{"n": n, "pad": "x" * 2000} for n in range(8)]
    with Store(root, dag="d", durable=False) as store:
        for n, value in enumerate(values):
            store.set(f"k{n}", value)
    index_dir = os.path.join(root, "index")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            _replace_shards_until(index_dir, time.monotonic() + 3)
        finally:
            os._exit(0)
    written = 0
    try:
        with Store(root, dag="d", durable=False) as store:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                store.set("copy", values[written % len(values)])  # found by the index
                written += 1
    finally:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert written > 100
    with Store(root, dag="d") as store:
        history = store.history("copy", limit=written + 1).entries
        assert [e.version for e in history] == list(range(written, 0, -1))
        assert store.get("copy").value == values[(written - 1) % len(values)]
        assert store.check().ok


_BIG = {"pad": "x" * 300}  # deduplicated through the blob index (>= DEDUP_MIN_BYTES)


@pytest.mark.parametrize("rebuilder", ["gc", "check --repair"])
@pytest.mark.parametrize("rewrite", ["compact", "import overwrite"])
def test_a_rewrite_beside_an_index_rebuild_keeps_moved_values_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrite: str, rebuilder: str
) -> None:
    """Found by a review (it predates the review's session): gc's index rebuild read a's log,
    then a compaction of a (another process) moved its blob frames and recorded their new
    places in the index, then the rebuild replaced the index without them. b, whose entry
    points at a's copy of the value (its hint stale since the move), read as damaged until
    a repair. Rewrites now hold gc.lock shared: this one waits for gc, then records.
    ``check --repair``'s rebuild of a damaged index did the same (a known limit until the
    eighteenth session): it now holds gc.lock exclusively while it rebuilds."""
    root = tmp_path / "store"
    s = Store(root, dag="d")
    s.set("a", "first")
    s.set("a", _BIG)  # after a frame a rewrite leaves out (version 1's entry): it moves
    s.set("a", "small again")
    s.set("b", _BIG)  # b's entry points at a's copy
    lines = list(export_lines(s, scope="dag", namespace="d"))
    kept = [line for line in lines[1:-1] if b'"key":"a"' in line]  # a's alone
    history = [lines[0], *kept, b'{"end":"castore-export","versions":%d}\n' % len(kept)]
    if rebuilder == "check --repair":
        for shard in (root / "index").iterdir():
            with shard.open("ab") as f:
                f.write(b"junk")  # damaged: check --repair rebuilds the index
    a_log = log_path(root, "dag", "d", "a")
    real = blobindex.BlobIndex._durable_bytes
    meanwhile: list[threading.Thread] = []

    def run_rewrite() -> None:
        other = Store(root, dag="d")
        if rewrite == "compact":
            other.compact(prefix="a", keep_last=1)
        else:  # the same history again: a's log is rewritten, its blob frames moved
            import_lines(other, lambda: history, on_conflict="overwrite")

    def read_then_rewrite(self: blobindex.BlobIndex, path: str) -> bytes:
        data = real(self, path)
        if path == a_log and not meanwhile:
            meanwhile.append(threading.Thread(target=run_rewrite))
            meanwhile[0].start()
            meanwhile[0].join(0.5)  # as far as it gets while the rebuild holds gc.lock
        return data

    monkeypatch.setattr(blobindex.BlobIndex, "_durable_bytes", read_then_rewrite)
    if rebuilder == "gc":
        Store(root, dag="d").gc(grace_seconds=0)
    else:
        report = Store(root, dag="d").check(repair=True)
        assert report.ok, report.findings
        assert any("blob index" in f.problem and f.repaired for f in report.findings)
    monkeypatch.undo()
    assert meanwhile
    meanwhile[0].join(30)
    assert not meanwhile[0].is_alive()
    assert Store(root, dag="d").get("b").value == _BIG
    assert Store(root, dag="d").get("a").value == "small again"
    assert Store(root, dag="d").check().ok
