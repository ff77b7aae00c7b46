"""What a durable write depends on is durable when it returns, even what another writer left.

A model of what survives a power loss (docs/FORMAT.md §6, "Names"): ``os`` calls are
wrapped in this process, and the model keeps the names (a directory's inode and an entry
in it) made or renamed since that directory's last ``fsync``, and the files (inodes)
written since their last ``fdatasync``. After every durable call returns, each key it
acknowledged must depend only on durable things: every name on the path from the store
root's parent to its log, the log's data, ``KEYS`` (name and data) while the key is live,
and the log holding its value when that is another key's. Two handles share one store,
one durable and one not (a ``--no-sync`` writer, or one killed before it fsynced, leaves
the same unsynced names and data), with values that repeat across keys (deduplication),
deletes, compactions and gc. The sequences are seeded: each failure is reproducible.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from castore import Store, codec
from castore.file import namesync
from castore.file.quickset import quick_set
from castore.identity import ProcessIdentity, audit_fields
from tests.helpers import Cli, file_backend, ref_log_path

KILL_AFTER_APPEND = {"CASTORE_FAILPOINTS": "after-append:kill"}

# values of at least 256 bytes are deduplicated across logs
BIG: list[dict[str, object]] = [{"report": letter * 600} for letter in "abc"]
SMALL: list[dict[str, object]] = [{"n": n} for n in range(3)]
KEYS = [f"k{i}" for i in range(5)]


class Model:
    """What a power loss would keep, from the calls this process makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: set[tuple[int, str]] = set()  # (directory inode, name) not yet durable
        self.data: dict[int, int] = {}  # inode -> the lowest offset written since its fdatasync
        self.written: set[int] = set()  # inodes written during the current call
        self.real = {n: getattr(os, n) for n in ("open", "mkdir", "replace", "link")}
        self.real |= {n: getattr(os, n) for n in ("write", "pwrite", "ftruncate")}
        self.real |= {n: getattr(os, n) for n in ("fsync", "fdatasync")}
        for name in self.real:
            monkeypatch.setattr(os, name, getattr(self, "_" + name))

    @staticmethod
    def _dir(path: Any, dir_fd: int | None) -> tuple[int, str]:
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            return os.fstat(dir_fd).st_ino, path
        return os.stat(os.path.dirname(os.path.abspath(path))).st_ino, os.path.basename(path)

    def _open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        made = False
        if flags & os.O_CREAT:
            try:
                os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                made = True
        fd: int = self.real["open"](path, flags, mode, dir_fd=dir_fd)
        if made:
            self.names.add(self._dir(path, dir_fd))
        return fd

    def _mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        self.real["mkdir"](path, mode, dir_fd=dir_fd)
        self.names.add(self._dir(path, dir_fd))

    def _replace(
        self, src: Any, dst: Any, *, src_dir_fd: Any = None, dst_dir_fd: Any = None
    ) -> None:
        self.real["replace"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        self.names.add(self._dir(dst, dst_dir_fd))

    def _link(self, src: Any, dst: Any, **kw: Any) -> None:
        self.real["link"](src, dst, **kw)
        self.names.add(self._dir(dst, kw.get("dst_dir_fd")))

    def _dirty(self, fd: int, offset: int | None = None) -> None:
        st = os.fstat(fd)
        at = st.st_size if offset is None else offset  # castore's write(2)s are appends
        self.data[st.st_ino] = min(at, self.data.get(st.st_ino, at))
        self.written.add(st.st_ino)

    def _write(self, fd: int, data: Any) -> int:
        self._dirty(fd)
        return int(self.real["write"](fd, data))

    def _pwrite(self, fd: int, data: Any, offset: int) -> int:
        self._dirty(fd, offset)
        return int(self.real["pwrite"](fd, data, offset))

    def _ftruncate(self, fd: int, length: int) -> None:
        self._dirty(fd, length)
        self.real["ftruncate"](fd, length)

    def _fdatasync(self, fd: int) -> None:
        self.real["fdatasync"](fd)
        self.data.pop(os.fstat(fd).st_ino, None)

    def _fsync(self, fd: int) -> None:
        self.real["fsync"](fd)
        st = os.fstat(fd)
        self.data.pop(st.st_ino, None)
        if stat.S_ISDIR(st.st_mode):
            self.names = {n for n in self.names if n[0] != st.st_ino}

    def undurable(self, path: str, root: str, end: int | None = None) -> list[str]:
        """What a power loss could take from ``path``: names from the root's parent down, and
        its data (its first ``end`` bytes when given)."""
        out, here = [], os.path.abspath(path)
        top = os.path.dirname(os.path.abspath(root))
        while here != top:
            parent = os.path.dirname(here)
            if (os.stat(parent).st_ino, os.path.basename(here)) in self.names:
                out.append(f"name {here}")
            here = parent
        dirty = self.data.get(os.stat(path).st_ino) if os.path.isfile(path) else None
        if dirty is not None and (end is None or dirty < end):
            out.append(f"data {path} from byte {dirty}")
        return out


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Model:
    return Model(monkeypatch)


def _depends_on(store: Store, key: str, listed: bool) -> Iterator[tuple[str, int | None]]:
    """The files (and bytes) a key's newest version needs after a power loss; ``KEYS`` too
    when ``listed`` (a write that made the key live)."""
    log = ref_log_path(store, key)
    yield log, None
    current = file_backend(store).current(store.ref(key))
    if current.live is not None:
        if listed:  # up to the end of its line (a line appended later is another key's)
            keys = os.path.join(os.path.dirname(log), "KEYS")
            with open(keys, "rb") as f:
                data = f.read()
            line = b"\n" + key.encode().hex().encode() + b"\n"
            yield keys, data.index(line) + len(line)
        blob = current.entry.blob if current.entry is not None else None
        if blob is not None and blob.log:
            yield os.path.join(store.root, "refs", blob.log), blob.offset + blob.length


def _check(model: Model, store: Store, keys: list[str], what: str, *, listed: bool) -> None:
    for key in keys:
        if os.path.exists(ref_log_path(store, key)):
            for path, end in _depends_on(store, key, listed):
                lost = model.undurable(path, str(store.root), end)
                assert not lost, f"after {what}: {key} depends on {lost}"


def _shards_durable(model: Model, store: Store, what: str) -> None:
    """Index shards a durable rewrite wrote: a moved value may be found only through them."""
    index = os.path.join(str(store.root), "index")
    for name in os.listdir(index) if os.path.isdir(index) else []:
        path = os.path.join(index, name)
        if os.stat(path).st_ino in model.written:
            lost = model.undurable(path, str(store.root))
            assert not lost, f"after {what}: {lost}"


def _rewritten(model: Model, store: Store, key: str) -> bool:
    path = ref_log_path(store, key)
    return os.path.exists(path) and os.stat(path).st_ino in model.written


Op = Callable[[Store], object]


def _random_op(rnd: random.Random) -> tuple[str, Op, list[str]]:
    key = rnd.choice(KEYS)
    roll = rnd.random()
    if roll < 0.6:
        value = rnd.choice(BIG + SMALL)
        return f"set {key}", lambda s: s.set(key, value), [key]
    if roll < 0.75:
        return f"delete {key}", lambda s: s.delete(key), [key]
    if roll < 0.85:
        return "rollback", lambda s: _rollback(s, key), [key]
    if roll < 0.95:
        return "compact", lambda s: s.compact(keep_last=1), KEYS
    return "gc", lambda s: s.gc(grace_seconds=0), KEYS


def _rollback(store: Store, key: str) -> None:
    versions = [e.version for e in store.history(key).entries]
    if len(versions) > 1:
        store.rollback(key, to_version=versions[-1])


def _newest(store: Store, key: str) -> int:
    entries = store.history(key, limit=1).entries
    return entries[0].version if entries else 0


@pytest.mark.parametrize("seed", range(6))
def test_a_durable_call_depends_only_on_durable_names_and_data(tmp_path, model, seed):
    rnd = random.Random(seed)
    root = tmp_path / "parent" / "store"
    with Store(root, dag="d") as durable, Store(root, dag="d", durable=False) as quick:
        _run_sequence(rnd, model, durable, quick)


def _run_sequence(rnd: random.Random, model: Model, durable: Store, quick: Store) -> None:
    for step in range(80):
        what, op, keys = _random_op(rnd)
        handle = durable if rnd.random() < 0.5 else quick
        before = [_newest(durable, k) for k in KEYS]
        model.written.clear()
        op(handle)
        wrote = before != [_newest(durable, k) for k in KEYS]  # else it acknowledged no write
        if handle is quick and what in ("compact", "gc"):  # it replaced durable versions
            for key in [k for k in keys if _rewritten(model, durable, k)]:
                lost = model.data.get(os.stat(ref_log_path(durable, key)).st_ino)
                assert lost is None, f"step {step}: {what} renamed {key}'s log before its data"
        if handle is durable and (wrote or what in ("compact", "gc")):
            maintenance = what in ("compact", "gc")
            if maintenance:  # the logs it rewrote (the others are as no-sync writes left them)
                _shards_durable(model, durable, f"step {step}: {what}")
                keys = [k for k in keys if _rewritten(model, durable, k)]
            _check(model, durable, keys, f"step {step}: {what}", listed=not maintenance)


def test_a_new_logs_name_is_durable_before_its_first_version_is_appended(tmp_path, model):
    """A writer killed after its append but before its directory's fsync left a log with a
    version and a name that a power loss could still take (the next writer only appended)."""
    store = Store(tmp_path / "s", dag="d")
    store.set("a", 1)
    calls: list[str] = []
    real_fsync, real_fdatasync = model._fsync, model._fdatasync
    folder = os.path.dirname(ref_log_path(store, "a"))
    log = os.path.join(folder, os.path.basename(ref_log_path(store, "b")))

    def fsync(fd: int) -> None:
        calls.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        calls.append(f"fdatasync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fdatasync(fd)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", fsync)
        patch.setattr(os, "fdatasync", fdatasync)
        store.set("b", 2)
    assert calls.index(f"fsync {folder}") < calls.index(f"fdatasync {log}"), calls
    assert len(calls) == 3, calls  # KEYS, the directory, the log: as before


def test_marks_come_and_go_with_durability(tmp_path):
    """The marks (FORMAT.md §6, "Names"): a no-sync write leaves them, a durable one clears them."""
    root = tmp_path / "s"
    Store(root, dag="d", durable=False).set("k", BIG[0])
    log = ref_log_path(Store(root, dag="d"), "k")
    keys = os.path.join(os.path.dirname(log), "KEYS")
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600 | stat.S_IXUSR | stat.S_IXGRP
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600 | stat.S_IXUSR
    Store(root, dag="d").set("k", SMALL[0])
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600


def test_a_no_sync_writer_killed_after_its_append_leaves_its_data_marked(tmp_path):
    """The data mark comes before the commit: a kill after the append leaves it, so an
    index rebuild syncs the log before a durable write may point at the value."""
    root = tmp_path / "s"
    Store(root, dag="d").set("k", 1)
    cli = Cli(tmp_path, root)
    killed = cli.run("--no-sync", "set", "k", json.dumps(BIG[0]), env=KILL_AFTER_APPEND)
    assert killed.returncode == -9, killed
    log = ref_log_path(Store(root, dag="d"), "k")
    assert os.stat(log).st_mode & stat.S_IXGRP
    assert Store(root, dag="d").get("k").value == BIG[0]  # appended before the kill


def test_graves_are_durable_whatever_the_handle(tmp_path, model):
    """A removed key's GRAVES record: a later durable write may make the log's removal
    durable (its directory's fsync), and without the record the key would start again."""
    quick = Store(tmp_path / "s", dag="d", durable=False)
    for i in range(3):
        quick.set("k", i)
    quick.delete("k")
    quick.compact(keep_last=1, keep_within_seconds=0)
    graves = os.path.join(os.path.dirname(ref_log_path(quick, "k")), "GRAVES")
    assert os.path.exists(graves)
    lost = [what for what in model.undurable(graves, str(quick.root)) if graves in what]
    assert lost == []  # its name in the namespace, its data (the directories: no-sync's)


def test_a_durable_quick_set_leaves_a_marked_log_to_the_store(tmp_path):
    """The CLI's quick set declines a log whose name or data is marked (the store settles)."""
    root = tmp_path / "s"
    Store(root, dag="d").set("k", 1)
    Store(root, dag="d", durable=False).set("k", BIG[0])  # indexes it: marks the log's data
    log = ref_log_path(Store(root, dag="d"), "k")
    assert os.stat(log).st_mode & stat.S_IXGRP
    ref = Store(root, dag="d").ref("k")
    normalized = b'{"n":3}'
    digest = codec.hexdigest(normalized)
    audit = audit_fields(ProcessIdentity(), None, None, None)
    assert quick_set(str(root), ref, normalized, digest, audit, durable=True) is None
    assert Cli(tmp_path, root).run("set", "k", '{"n":3}').returncode == 0
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600  # the store settled and cleared it


def test_a_log_that_cannot_be_marked_is_synced_instead(tmp_path, model, monkeypatch):
    """Another user's log (fchmod refused): a durable=False write that lists its key syncs
    KEYS, and one that indexes a value syncs the log, rather than leave them unmarked."""
    root = tmp_path / "s"
    durable, quick = Store(root, dag="d"), Store(root, dag="d", durable=False)
    durable.set("k", 1)
    durable.delete("k")
    durable.compact(keep_last=1, keep_within_seconds=0)  # k leaves KEYS; its log stays
    real = os.fchmod

    def refuse(fd: int, mode: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".log"):
            raise PermissionError(1, "Operation not permitted")
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", refuse)
    quick.set("k", BIG[1])  # lists k again and indexes the value
    log = ref_log_path(durable, "k")
    keys = os.path.join(os.path.dirname(log), "KEYS")
    assert model.undurable(keys, str(root)) == []
    assert model.undurable(log, str(root)) == []


def test_settling_another_log_never_clears_a_mark_its_writer_is_setting(tmp_path):
    """settle() runs without the file's lock: it clears the name's mark only under it, from
    the mode read then, so a data mark a writer set meanwhile is kept."""
    root = tmp_path / "s"
    Store(root, dag="d", durable=False).set("k", BIG[0])
    store = Store(root, dag="d")
    log = ref_log_path(store, "k")
    fs = file_backend(store).layout.fs
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600 | stat.S_IXUSR | stat.S_IXGRP
    held = os.open(log, os.O_RDONLY)
    fd = os.open(log, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer holds it
        namesync.settle(fs, fd, log)
        assert os.stat(log).st_mode & stat.S_IXUSR  # left for another time
        fcntl.flock(held, fcntl.LOCK_UN)
        namesync.settle(fs, fd, log)
        assert stat.S_IMODE(os.stat(log).st_mode) == 0o600 | stat.S_IXGRP  # the data mark kept
    finally:
        os.close(fd)
        os.close(held)


def test_a_parent_directory_the_store_user_cannot_read_fails_no_call(tmp_path, monkeypatch):
    # Found by a review (thirty-second session): a store whose parent is 0711 to its user
    # (made by an admin, then given to the user): this session's durable index rebuild made
    # gc fail ("Permission denied" on the parent, after its work was done), and a first
    # durable write to a new namespace failed the same way after its version was stored,
    # so a retry made a second one. A directory above the store that its user cannot read
    # cannot be fsynced by it, and was made durable by whoever made the store. (Run as
    # root here, so the parent's refusal is simulated.)
    parent = tmp_path / "parent"
    root = parent / "store"
    Store(str(root), dag="a").set("k", {"report": "x" * 600})
    real_open = os.open

    def refusing(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == str(parent) and flags & os.O_DIRECTORY:
            raise PermissionError(13, "Permission denied", str(parent))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    store = Store(str(root), dag="b")
    assert store.set("k", {"report": "x" * 600}).version == 1  # a new namespace, durable
    assert store.gc(grace_seconds=0).blobs_freed == 0
    assert store.check(repair=True).ok
    assert store.compact(keep_last=1).refs_examined == 2
    assert [Store(str(root), dag=ns).get("k").version for ns in "ab"] == [1, 1]
