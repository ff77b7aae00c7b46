"""The namespace state index ``STATE`` (docs/FORMAT.md §5): list answers from it, never wrongly.

The oracle of every test is the same list on the same store without ``STATE``
(every key read from its log), or the versions the test wrote.
"""

import fcntl
import os
import shutil
import subprocess
import sys
import threading
from typing import Any, cast

import msgspec
import pytest

from castore import Store
from castore.file import stateappend, statefile, staterecords
from castore.file import tree as tree_module
from castore.file.backend import FileBackend
from castore.file.frames import encode_frame, scan_frames
from castore.file.tree import UNCONFINED
from tests.helpers import corrupt, log_path, ns_dir

NS = "daily-agent"


def state_path(root: str | os.PathLike[str]) -> str:
    return os.path.join(ns_dir(root, "dag", NS), "STATE")


def records(root: str | os.PathLike[str]) -> list[tuple[str, Any]]:
    """(kind, payload decoded) of every frame of STATE."""
    with open(state_path(root), "rb") as fh:
        data = fh.read()
    out: list[tuple[str, Any]] = []
    for frame in scan_frames(data):
        kind = chr(frame.kind)
        if kind == "P":
            out.append((kind, frame.payload.decode()))
        else:
            out.append((kind, msgspec.msgpack.decode(frame.payload)))
    return out


def listed(root: str | os.PathLike[str]) -> list[tuple[str, int, str, str, str]]:
    with Store(root, dag=NS, durable=False) as s:
        res = s.list()
    assert res.skipped == []
    return [(e.key, e.version, e.hash, e.created_at, e.updated_at) for e in res.entries]


def from_logs(root: str | os.PathLike[str], tmp_path: Any) -> list[tuple[str, int, str, str, str]]:
    """The list of a copy of the store without STATE: every key read from its log."""
    copy = tmp_path / "oracle"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    os.unlink(state_path(copy))
    with Store(copy, dag=NS, durable=False) as s:
        return [(e.key, e.version, e.hash, e.created_at, e.updated_at) for e in s.list().entries]


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "store"
    with Store(r, dag=NS, durable=False) as s:
        s.set("a", 1)
        s.set("b", 2)
        s.set("c", 3)
        s.delete("b")
    return r


def test_the_first_list_creates_and_fills_state_and_writers_mark_their_keys(root, tmp_path):
    assert not os.path.exists(state_path(root))  # no list yet: writers do not create it
    first = listed(root)
    assert [k for k, *_ in first] == ["a", "c"]
    assert records(root)[0][0] == "T"
    assert sorted(p[0] for k, p in records(root) if k == "S") == ["a", "b", "c"]
    with Store(root, dag=NS, durable=False) as s:
        s.set("a", 10)
        s.delete("c")
        s.set("d", 4)
    assert records(root)[-3:] == [("P", "a"), ("P", "c"), ("P", "d")]
    assert listed(root) == from_logs(root, tmp_path)
    tail = records(root)[-3:]  # the list read those three logs, and recorded them
    assert [(k, p[:2]) for k, p in tail] == [("S", ["a", 2]), ("S", ["c", 2]), ("S", ["d", 1])]
    assert tail[1][1] == ["c", 2, "", 0, 0]  # a delete: no hash
    assert [k for k, *_ in listed(root)] == ["a", "d"]
    assert listed(root) == from_logs(root, tmp_path)


@pytest.mark.parametrize(
    ("failpoint", "newest"),
    [("after-append", 2), ("before-append", 1)],  # killed after / before its commit point
)
def test_a_writer_killed_mid_write_leaves_its_key_pending(root, tmp_path, failpoint, newest):
    listed(root)
    code = (
        "import sys; from castore import Store; "
        "Store(sys.argv[1], dag=sys.argv[2], durable=False).set('a', 99)"
    )
    env = dict(os.environ, CASTORE_FAILPOINTS=failpoint)
    proc = subprocess.run([sys.executable, "-c", code, str(root), NS], env=env, check=False)
    assert proc.returncode == -9
    assert records(root)[-1] == ("P", "a")  # appended before the commit point
    answer = listed(root)
    assert answer[0][:2] == ("a", newest)  # what the log holds, read from it
    assert answer == from_logs(root, tmp_path)
    assert records(root)[-1][0] == "S"  # the reader recorded it, under the log's lock


def test_a_list_cached_by_one_handle_sees_another_handles_writes(root):
    with Store(root, dag=NS, durable=False) as reader, Store(root, dag=NS, durable=False) as w:
        assert [e.key for e in reader.list().entries] == ["a", "c"]
        w.set("b", 5)
        w.delete("a")
        assert [(e.key, e.version) for e in reader.list().entries] == [("b", 3), ("c", 1)]


def test_a_state_from_another_boot_is_not_trusted(root, tmp_path):
    listed(root)
    with Store(root, dag=NS, durable=False) as s:
        s.set("a", 7)
    # The S of a's version 2 "lost" in a crash: STATE says version 1, from a boot long gone.
    stale = encode_frame(staterecords.KIND_EPOCH, msgspec.msgpack.encode(["another-boot", "0"]))
    stale += encode_frame(
        staterecords.KIND_SETTLED, msgspec.msgpack.encode(["a", 1, "0" * 64, 1, 2])
    )
    with open(state_path(root), "wb") as fh:
        fh.write(stateappend.LENGTH.pack(8 + len(stale)) + stale)
    answer = listed(root)
    assert answer[0][:2] == ("a", 2)
    assert answer == from_logs(root, tmp_path)
    assert records(root)[0][1][0] == staterecords.boot_id()  # replaced by this boot's


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_damaged_state_is_replaced_and_lists_from_the_logs(root, tmp_path, where):
    listed(root)
    with Store(root, dag=NS, durable=False) as s:
        s.set("a", 8)  # P a at the end
    size = os.path.getsize(state_path(root))
    offset = {"first": 3, "middle": size // 2, "last": size - 30}[where]
    corrupt(state_path(root), offset)
    assert listed(root) == from_logs(root, tmp_path)
    assert next(k for k, _ in records(root)) == "T"
    assert listed(root) == from_logs(root, tmp_path)  # and again, from the rebuilt file


def test_a_damaged_pending_record_never_leaves_an_older_version_listed(root, tmp_path):
    listed(root)
    with Store(root, dag=NS, durable=False) as s:
        s.set("a", 8)
    with open(state_path(root), "rb") as fh:
        data = fh.read()
    frames = list(scan_frames(data))
    pending = [f for f in frames if f.kind == staterecords.KIND_PENDING][-1]
    # cut the file after the P frame and flip a byte in it: the S is gone too
    with open(state_path(root), "r+b") as fh:
        fh.truncate(pending.end)
    corrupt(state_path(root), pending.start + 6)
    answer = listed(root)
    assert answer[0][:2] == ("a", 2)
    assert answer == from_logs(root, tmp_path)


@pytest.mark.parametrize("cut", ["pending", "all appended"])
def test_a_state_cut_at_a_frame_boundary_is_not_trusted(root, tmp_path, cut):
    """A cut that removes a P leaves intact frames only: the recorded length tells."""
    listed(root)
    listed(root)  # fills, then a snapshot-free file of T and S frames
    with Store(root, dag=NS, durable=False) as s:
        s.set("a", 8)  # P a at the end
    with open(state_path(root), "rb") as fh:
        frames = list(scan_frames(fh.read()))
    end = frames[-2].end if cut == "pending" else frames[0].end
    with open(state_path(root), "r+b") as fh:
        fh.truncate(end)
    answer = listed(root)
    assert answer[0][:2] == ("a", 2)  # not the version the cut-off P hid
    assert answer == from_logs(root, tmp_path)


def test_many_writes_are_rewritten_as_one_snapshot(root, tmp_path, monkeypatch):
    monkeypatch.setattr(statefile, "SNAPSHOT_AFTER", 8)
    listed(root)
    with Store(root, dag=NS, durable=False) as s:
        for i in range(20):
            s.set(f"k{i % 5}", i)
        s.delete("k3")
    before = os.path.getsize(state_path(root))
    answer = listed(root)  # notices the crowd and rewrites
    assert os.path.getsize(state_path(root)) < before
    kinds = [k for k, _ in records(root)]
    assert kinds[:2] == ["T", "L"]
    assert set(kinds[2:]) == {"S"}  # the keys pending at the snapshot, read and recorded
    snapshot = [row[0] for row in records(root)[1][1]]
    assert snapshot == ["a", "b", "c"]  # sorted; k0-k4 were pending: dropped, not guessed
    assert sorted(p[0] for k, p in records(root)[2:]) == ["k0", "k1", "k2", "k3", "k4"]
    assert answer == listed(root) == from_logs(root, tmp_path)


def test_compaction_and_gc_mark_their_keys_pending(root, tmp_path):
    listed(root)
    with Store(root, dag=NS, durable=False) as s:
        s.set("a", 2)
        s.set("a", 3)
        s.compact(keep_last=1)
        assert ("P", "a") in records(root)[-3:]
        assert listed(root) == from_logs(root, tmp_path)
        s.compact(keep_within_seconds=0)  # b's delete goes away: b leaves KEYS
        s.gc(grace_seconds=0)
    assert [k for k, *_ in listed(root)] == ["a", "c"]
    assert listed(root) == from_logs(root, tmp_path)


def test_a_rewrite_of_a_log_without_a_readable_header_marks_the_key_state_names(root):
    """The key is the one STATE records under the log's file name: only it becomes pending."""
    listed(root)
    path = log_path(root, "dag", NS, "c")
    corrupt(path, 8)  # the H frame: the log no longer names its key
    with Store(root, dag=NS, durable=False) as s:
        s.check(repair=True)
    known = statefile.StateIndex(state_path(root), UNCONFINED, "dag", NS).known()
    assert known is not None
    assert "c" not in known  # pending: read from its log
    assert "a" in known  # the others' records (and evidence) are kept
    with Store(root, dag=NS, durable=False) as s:
        assert [e.key for e in s.list().entries] == ["a", "c"]


def test_a_rewrite_of_a_log_without_a_header_in_an_untrusted_state_removes_it(root):
    """An untrusted STATE may hold a record it cannot show: it goes away whole."""
    listed(root)
    path = log_path(root, "dag", NS, "c")
    corrupt(path, 8)
    with open(state_path(root), "r+b") as f:
        f.seek(0)
        f.write((1 << 40).to_bytes(8, "little"))  # a recorded length past the end: untrusted
    with Store(root, dag=NS, durable=False) as s:
        s.check(repair=True)
    assert not os.path.exists(state_path(root))
    with Store(root, dag=NS, durable=False) as s:
        assert [e.key for e in s.list().entries] == ["a", "c"]


def test_removing_state_waits_for_a_rewrite_in_flight(root):
    """``discard`` takes STATE's lock: a rewrite (read to rename) finishes first (rule 3)."""
    listed(root)
    path = state_path(root)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a snapshot rewrite in flight holds it
    state = statefile.StateIndex(path, UNCONFINED, "dag", NS)
    remover = threading.Thread(target=state.discard)
    remover.start()
    remover.join(0.3)
    assert remover.is_alive(), "STATE was removed under a rewrite's lock"
    assert os.path.exists(path)
    os.close(fd)  # the rewrite is done
    remover.join(10)
    assert not remover.is_alive()
    assert not os.path.exists(path)


def test_list_with_values_reads_every_value_from_its_log(root):
    listed(root)
    with Store(root, dag=NS, durable=False) as s:
        res = s.list(include_values=True)
    assert [(e.key, e.value) for e in res.entries] == [("a", 1), ("c", 3)]


def test_list_of_a_namespace_that_does_not_exist_creates_nothing(tmp_path):
    root = tmp_path / "store"
    with Store(root, dag=NS, durable=False) as s:
        s.set("a", 1)
        assert s.list(namespace="other").entries == []
    assert not os.path.exists(ns_dir(root, "dag", "other"))


def test_a_rewritten_state_with_the_parsed_files_inode_number_is_read_again(root):
    """A rename may hand the new file the old one's inode number: the T frame tells."""
    with Store(root, dag=NS, durable=False) as reader:
        assert [e.key for e in reader.list().entries] == ["a", "c"]  # fills STATE
        assert [e.key for e in reader.list().entries] == ["a", "c"]  # parses the fill
        parsed = os.path.getsize(state_path(root))  # where the reader will go on from
        with Store(root, dag=NS, durable=False) as w:
            w.delete("a")
            hash_b = w.set("b", 9).hash
        # Same inode, bytes replaced in place: a new T and a snapshot (a deleted) that
        # end exactly where the reader stopped, then an S for b. Read from there on
        # only, it would keep a as live.
        epoch = encode_frame(
            staterecords.KIND_EPOCH, msgspec.msgpack.encode([staterecords.boot_id(), "new"])
        )
        for pad in range(parsed):
            rows = [["a", 2], ["p" * pad, 0]]
            snap = encode_frame(staterecords.KIND_SNAPSHOT, msgspec.msgpack.encode(rows))
            if 8 + len(epoch) + len(snap) == parsed:
                break
        else:
            pytest.fail("no padding fits")
        settled = encode_frame(
            staterecords.KIND_SETTLED, msgspec.msgpack.encode(["b", 3, hash_b, 1, 2])
        )
        body = epoch + snap + settled
        with open(state_path(root), "r+b") as fh:
            fh.truncate(0)
            fh.write(stateappend.LENGTH.pack(8 + len(body)) + body)
        assert [(e.key, e.version) for e in reader.list().entries] == [("b", 3), ("c", 1)]


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How often any handle parses STATE (one element per ``_read``)."""
    calls: list[int] = []
    real = statefile.StateIndex._read

    def counted(self: statefile.StateIndex, fd: int, me: str, *, patient: bool = True) -> None:
        calls.append(fd)
        real(self, fd, me, patient=patient)

    monkeypatch.setattr(statefile.StateIndex, "_read", counted)
    return calls


def test_an_unchanged_state_is_not_read_again_and_a_change_is(root, tmp_path, monkeypatch):
    reads = _count_reads(monkeypatch)
    with Store(root, dag=NS, durable=False) as reader, Store(root, dag=NS, durable=False) as w:
        reader.list()  # creates and fills STATE
        reader.list()  # parses the fill
        before = len(reads)
        assert [e.key for e in reader.list().entries] == ["a", "c"]
        assert len(reads) == before  # one lstat: the same file, size and times
        w.set("b", 5)  # appends P
        assert [(e.key, e.version) for e in reader.list().entries] == [("a", 1), ("b", 3), ("c", 1)]
        assert len(reads) > before
    assert listed(root) == from_logs(root, tmp_path)


def test_a_state_renamed_over_the_one_a_handle_keeps_open_is_read(root, tmp_path, monkeypatch):
    monkeypatch.setattr(statefile, "SNAPSHOT_AFTER", 8)
    with Store(root, dag=NS, durable=False) as reader:
        reader.list()
        assert [e.key for e in reader.list().entries] == ["a", "c"]  # keeps STATE open
        kept = os.stat(state_path(root)).st_ino
        with Store(root, dag=NS, durable=False) as w:
            for i in range(20):
                w.set(f"k{i % 5}", i)
            w.delete("a")
            w.list()  # notices the crowd: a new file renamed over the kept one
        assert os.stat(state_path(root)).st_ino != kept  # the kept one pins its number
        answer = [(e.key, e.version, e.hash) for e in reader.list().entries]
    oracle = from_logs(root, tmp_path)
    assert answer == [row[:3] for row in oracle]
    assert [k for k, _ in records(root)][:2] == ["T", "L"]


def _snapshot_elsewhere(root: Any) -> None:
    """Another handle rewrites STATE (a new file renamed over it), then lets go of it."""
    with Store(root, dag=NS, durable=False) as other:
        cast(FileBackend, other.backend).names.state("dag", NS).snapshot()


def test_a_state_renamed_in_between_the_lstat_and_the_open_is_never_taken_for_the_path(
    root, tmp_path, monkeypatch
):
    """Found by a review: the handle held the new file under the old one's signature.

    Once the old file's inode number came back (ext4 hands a freed one out at
    once), the handle took the path for the file it held, read on in that
    unlinked file, and listed versions older than acknowledged writes.
    """
    listed(root)
    listed(root)  # filled with S rows
    _snapshot_elsewhere(root)
    real_open = tree_module.Tree.open
    armed = [True]

    def racing_open(self: Any, path: str, flags: int, **kw: Any) -> int:
        if armed[0] and path.endswith("/STATE") and flags == os.O_RDONLY:
            armed[0] = False
            _snapshot_elsewhere(root)  # between the reader's lstat and its open
        return real_open(self, path, flags, **kw)

    with Store(root, dag=NS, durable=False) as reader:
        monkeypatch.setattr(tree_module.Tree, "open", racing_open)
        assert [e.key for e in reader.list().entries] == ["a", "c"]
        monkeypatch.setattr(tree_module.Tree, "open", real_open)
        kept = cast(FileBackend, reader.backend).names.state("dag", NS)._reader
        held = os.fstat(kept.fd)
        assert kept.parsed is not None
        assert kept.parsed[:2] == (held.st_ino, held.st_dev)  # names the file it holds
        _snapshot_elsewhere(root)  # may reuse the number of the file renamed over
        with Store(root, dag=NS, durable=False) as w:
            w.set("a", 2)
        assert [(e.key, e.version) for e in reader.list().entries] == [("a", 2), ("c", 1)]
        reader.set("c", 5)
        assert [(e.key, e.version) for e in reader.list().entries] == [("a", 2), ("c", 2)]
    assert listed(root) == from_logs(root, tmp_path)
