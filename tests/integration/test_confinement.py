"""Confinement (issue 8): no castore operation reaches outside the store root.

Whatever the root contains, castore never reads, writes, creates, truncates or
renames anything outside it. Each scenario builds a fresh store in
``tmp_path/store`` next to ``tmp_path/outside``, which holds ``victim.txt``
(known bytes) and is otherwise watched: everything in ``tmp_path`` but the
store is snapshotted (names, kinds, sizes, mtimes, contents, link targets)
before the operation and must be identical after it.

* A store file or directory planted as a symbolic link (a key's ``.log``, a
  namespace directory, ``KEYS``, an index shard, a ``.vix``, a dangling
  ``gc.lock``, ``quarantine/``): the operation succeeds without touching the
  link's target, or fails with a castore error; a writer that fails refuses
  with a :class:`~castore.CorruptionError` naming the link and saying it is a
  symbolic link. ``check`` reports every planted link as an error finding
  whose path is the link.
* A location read from the store's own data (a blob index record, an entry's
  blob location) that names a file outside the root: the file is never opened,
  and a write stores its own copy of the value.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

import pytest

from castore import CastoreError, CorruptionError, Store, codec
from castore.cli import EXIT_DAMAGED, EXIT_FAILURE
from castore.errors import FormatVersionError
from castore.file.blobindex import BlobIndex
from castore.file.frames import encode_frame
from castore.file.records import KIND_BLOB, KIND_ENTRY, decode_entry, encode_blob, encode_record
from castore.records import OP_SET, BlobLoc, Entry
from tests.helpers import Cli, frames_of, keys_path, log_path, ns_dir, one_line_error, snapshot

pytestmark = pytest.mark.integration

DAG: Final = "d"
# Shorter than a frame header: followed as a log, it reads as a torn tail and gets cut.
VICTIM_BYTES: Final = b"victim: do not touch\n"
OLD_NS: Final = 1_000_000_000 * 10**9  # 2001: any write, create or read moves a time off it
TORN: Final = b"\x10\x00\x00"  # the start of a frame header: a crash cut an append short
BIG: Final = {"big": "x" * 300}  # >= 256 bytes: deduplicated through the blob index
BIG2: Final = {"big": "y" * 300}
SYMLINK_WORDS: Final = re.compile(r"symbolic link|symlink", re.IGNORECASE)

Snapshot = dict[str, tuple[str, int, int, int, bytes]]


def _read_quietly(path: str) -> bytes:
    """A file's bytes, read without updating its atime (the test reads are not castore's)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _digest_hex(value: Any) -> str:
    return codec.hexdigest(codec.normalize(value))


class Scene:
    """A fresh store at ``tmp/store`` (namespace ``d`` exists) and a watched ``tmp/outside``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path.resolve()
        self.root = self.tmp / "store"
        self.outside = self.tmp / "outside"
        self.outside.mkdir()
        self.victim = self.outside / "victim.txt"
        self.victim.write_bytes(VICTIM_BYTES)
        self.cli = Cli(self.tmp, self.root, dag=DAG)  # makes tmp/home, its HOME
        self.store = self.reopen()
        self.store.set("other", 1)
        self.ns = Path(ns_dir(self.root, "dag", DAG))

    def reopen(self) -> Store:
        """A new handle: nothing cached from before the link was planted."""
        return Store(self.root, dag=DAG)

    def log(self, key: str) -> Path:
        return Path(log_path(self.root, "dag", DAG, key))

    def vix(self, key: str) -> Path:
        return self.log(key).with_suffix(".vix")

    def shard(self, value: Any) -> Path:
        return self.root / "index" / f"{_digest_hex(value)[:2]}.idx"

    def link(self, link: Path, target: Path) -> Path:
        """Replace ``link`` (a file, if any) by a symbolic link to ``target``."""
        link.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(link):
            link.unlink()
        os.symlink(target, link)
        return link

    def move_out(self, path: Path) -> Path:
        """Move a store file over ``victim.txt`` and leave a link to it in its place."""
        os.replace(path, self.victim)
        return self.link(path, self.victim)

    def move_namespace_out(self, *, torn: bool = False) -> Path:
        """Move namespace ``d`` (key ``k`` at versions 1, 2) outside; link it back."""
        self.store.set("k", 1)
        self.store.set("k", 2)
        moved = self.outside / "ns"
        shutil.move(self.ns, moved)
        if torn:
            with open(moved / self.log("k").name, "ab") as fh:
                fh.write(TORN)
        return self.link(self.ns, moved)

    def freeze(self) -> Snapshot:
        """Set every time outside the store far in the past, then snapshot it."""
        for base, dirs, files in os.walk(self.tmp, topdown=False):
            for name in dirs + files:
                path = os.path.join(base, name)
                if not self._in_store(path):
                    os.utime(path, ns=(OLD_NS, OLD_NS), follow_symlinks=False)
        return self.outside_state()

    def outside_state(self) -> Snapshot:
        """Everything in ``tmp`` but the store: kind, size, mtime, mode, content or link target."""
        out: Snapshot = {}
        for base, dirs, files in os.walk(self.tmp):
            dirs[:] = [d for d in dirs if not self._in_store(os.path.join(base, d))]
            for name in dirs + files:
                path = os.path.join(base, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    kind, data = "link", os.readlink(path).encode()
                elif stat.S_ISREG(st.st_mode):
                    kind, data = "file", _read_quietly(path)
                else:
                    kind, data = "dir" if stat.S_ISDIR(st.st_mode) else "other", b""
                size = st.st_size if kind != "dir" else 0
                mode = stat.S_IMODE(st.st_mode)
                out[os.path.relpath(path, self.tmp)] = (kind, size, st.st_mtime_ns, mode, data)
        return out

    def _in_store(self, path: str) -> bool:
        return Path(path) == self.root or self.root in Path(path).parents

    def assert_untouched(self, before: Snapshot) -> None:
        after = self.outside_state()
        changed = [
            f"{name}: {_show(before.get(name))} -> {_show(after.get(name))}"
            for name in sorted(set(before) | set(after))
            if before.get(name) != after.get(name)
        ]
        if changed:
            pytest.fail("castore reached outside the store root:\n" + "\n".join(changed))


def _show(item: tuple[str, int, int, int, bytes] | None) -> str:
    if item is None:
        return "absent"
    kind, size, mtime_ns, mode, data = item
    head = data[:32] + (b"..." if len(data) > 32 else b"")
    return f"{kind} size={size} mtime_ns={mtime_ns} mode={mode:o} {head!r}"


def attempt(action: Callable[[], object]) -> CastoreError | None:
    """Run ``action``; return the castore error it raised (anything else propagates)."""
    try:
        action()
    except CastoreError as exc:
        return exc
    return None


def assert_names_symlink(message: str, scene: Scene, link: Path) -> None:
    """The message names the link and says that it is a symbolic link."""
    assert link.name in message, message
    # Not in the test's own directory name (pytest derives it from the test name).
    assert SYMLINK_WORDS.search(message.replace(str(scene.tmp), "")), message


def assert_refusal(exc: BaseException | None, scene: Scene, link: Path) -> None:
    """A writer's refusal: a one-line CorruptionError that names the link as a symlink."""
    assert exc is not None, f"the operation went on through the planted link {link}"
    assert isinstance(exc, CorruptionError), repr(exc)
    assert "\n" not in str(exc)
    assert_names_symlink(str(exc), scene, link)


def names(finding_path: str, root: Path, link: Path) -> bool:
    """True if a finding's path (relative to the root, or absolute) is ``link``."""
    path = Path(finding_path) if os.path.isabs(finding_path) else root / finding_path
    return os.path.normpath(path) == os.path.normpath(link)


# -- planted symbolic links, then the operation that used to follow them ---------------------


def plant_log(scene: Scene) -> Path:
    # Finding 1: key ``k`` was never written; its log is a link to the victim.
    return scene.link(scene.log("k"), scene.victim)


def plant_keys(scene: Scene) -> Path:
    return scene.link(Path(keys_path(scene.root, "dag", DAG)), scene.victim)


def plant_shard(scene: Scene) -> Path:
    return scene.link(scene.shard(BIG), scene.victim)


def plant_shard_of_rewritten_log(scene: Scene) -> Path:
    scene.store.set("k", BIG)
    scene.store.set("k", BIG2)
    return scene.link(scene.shard(BIG), scene.victim)


def plant_log_of_existing_key(scene: Scene) -> Path:
    scene.store.set("k", 1)
    return scene.move_out(scene.log("k"))  # a valid log outside: a write would append to it


def plant_vix(scene: Scene) -> Path:
    for version in (1, 2, 3):  # the victim holds fewer records: a reader would extend it
        scene.store.set("k", version)  # no reader yet: the version index is built by the next
    return scene.link(scene.vix("k"), scene.victim)


def plant_gc_lock(scene: Scene) -> Path:
    return scene.link(scene.root / "gc.lock", scene.outside / "gc.lock")  # dangling


def plant_gc_lock_after_big(scene: Scene) -> Path:
    scene.store.set("k", BIG)  # a later set of BIG to another key may reuse this copy
    return plant_gc_lock(scene)


def plant_quarantine_torn(scene: Scene) -> Path:
    scene.store.set("k", 1)
    with open(scene.log("k"), "ab") as fh:
        fh.write(TORN)  # cut by the next write or a repair, after a copy to quarantine
    empty = scene.outside / "q"
    empty.mkdir()
    return scene.link(scene.root / "quarantine", empty)


def plant_namespace(scene: Scene) -> Path:
    return scene.move_namespace_out()


def plant_namespace_torn(scene: Scene) -> Path:
    return scene.move_namespace_out(torn=True)  # something for check --repair to rewrite


class Case(NamedTuple):
    plant: Callable[[Scene], Path]
    run: Callable[[Store], object]
    refuses: bool  # the operation cannot go on without the linked path: it must fail
    writer: bool = True  # a failing writer must refuse with a CorruptionError naming the link


CASES: Final[dict[str, Case]] = {
    "log-set": Case(plant_log, lambda s: s.set("k", 1), refuses=True),
    "log-set-existing-key": Case(plant_log_of_existing_key, lambda s: s.set("k", 2), refuses=True),
    "log-delete": Case(plant_log, lambda s: s.delete("k"), refuses=False),
    "keys-set-new-key": Case(plant_keys, lambda s: s.set("new", 1), refuses=True),
    "shard-set": Case(plant_shard, lambda s: s.set("k", BIG), refuses=False),
    "shard-compact": Case(
        plant_shard_of_rewritten_log, lambda s: s.compact(keep_last=1), refuses=False
    ),
    "vix-history": Case(plant_vix, lambda s: s.history("k"), refuses=False, writer=False),
    "vix-get-version": Case(
        plant_vix, lambda s: s.get("k", version=3), refuses=False, writer=False
    ),
    "gc.lock-gc": Case(plant_gc_lock, lambda s: s.gc(grace_seconds=0), refuses=True),
    "gc.lock-set-reusing-blob": Case(
        plant_gc_lock_after_big, lambda s: s.set("k2", BIG), refuses=False
    ),
    "quarantine-set-over-torn-tail": Case(
        plant_quarantine_torn, lambda s: s.set("k", 2), refuses=False
    ),
    "quarantine-check-repair": Case(
        plant_quarantine_torn, lambda s: s.check(repair=True), refuses=False
    ),
    "namespace-set": Case(plant_namespace, lambda s: s.set("k", 3), refuses=True),
    "namespace-set-new-key": Case(plant_namespace, lambda s: s.set("new", 1), refuses=True),
    "namespace-compact": Case(plant_namespace, lambda s: s.compact(keep_last=1), refuses=False),
    "namespace-check-repair": Case(
        plant_namespace_torn, lambda s: s.check(repair=True), refuses=False
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_planted_symlink_is_not_followed(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    scene = Scene(tmp_path)
    link = case.plant(scene)
    before = scene.freeze()
    exc = attempt(lambda: case.run(scene.reopen()))
    scene.assert_untouched(before)
    if case.refuses or (exc is not None and case.writer):
        assert_refusal(exc, scene, link)


# -- check names every planted link ----------------------------------------------------------


def moved_keys(scene: Scene) -> Path:
    return scene.move_out(Path(keys_path(scene.root, "dag", DAG)))


def moved_vix(scene: Scene) -> Path:
    scene.store.set("k", 1)
    scene.store.set("k", 2)
    scene.store.history("k")  # builds the version index
    return scene.move_out(scene.vix("k"))


def moved_shard(scene: Scene) -> Path:
    scene.store.set("k", BIG)
    return scene.move_out(scene.shard(BIG))


def linked_quarantine(scene: Scene) -> Path:
    empty = scene.outside / "q"
    empty.mkdir()
    return scene.link(scene.root / "quarantine", empty)


def linked_torn(scene: Scene) -> Path:
    """``quarantine/torn``, where a writer copies a torn tail: a link made writes fail."""
    empty = scene.outside / "torn"
    empty.mkdir()
    (scene.root / "quarantine").mkdir(exist_ok=True)
    return scene.link(scene.root / "quarantine" / "torn", empty)


# The link's target is the store's own, valid file moved outside (an empty directory for
# quarantine/, nothing for gc.lock): only the link itself is wrong with the store.
CHECKED: Final[dict[str, Callable[[Scene], Path]]] = {
    "log": plant_log_of_existing_key,
    "namespace": plant_namespace,
    "keys": moved_keys,
    "vix": moved_vix,
    "shard": moved_shard,
    "gc.lock": plant_gc_lock,
    "quarantine": linked_quarantine,
    "quarantine/torn": linked_torn,  # a review found it unreported, and kept by --repair
}


@pytest.mark.parametrize("kind", list(CHECKED))
def test_check_reports_planted_symlink(tmp_path: Path, kind: str) -> None:
    scene = Scene(tmp_path)
    link = CHECKED[kind](scene)
    before = scene.freeze()
    report = scene.reopen().check()
    scene.assert_untouched(before)
    assert not report.ok, report
    naming = [f for f in report.findings if names(f.path, scene.root, link)]
    assert naming, f"no finding names {os.path.relpath(link, scene.root)}: {report.findings}"
    assert any(f.severity != "info" and not f.repaired for f in naming), naming


# -- locations read from the store's own data ------------------------------------------------


def _atime_moves_on_read(scene: Scene) -> bool:
    """True if this file system records reads in atime (not mounted noatime)."""
    probe = scene.tmp / "atime-probe"
    probe.write_bytes(b"probe")
    os.utime(probe, ns=(OLD_NS, OLD_NS))
    probe.read_bytes()
    moved = probe.stat().st_atime_ns != OLD_NS
    probe.unlink()
    return moved


def _evil_log(scene: Scene, value: Any) -> tuple[Path, bytes]:
    """``outside/evil.log``: a valid ``B`` frame holding ``value`` at offset 0."""
    normalized = codec.normalize(value)
    frame = encode_frame(
        KIND_BLOB, encode_blob(bytes.fromhex(codec.hexdigest(normalized)), normalized)
    )
    evil = scene.outside / "evil.log"
    evil.write_bytes(frame)
    return evil, frame


def _location(scene: Scene, evil: Path, how: str) -> str:
    """The path of ``evil`` as a blob location (relative to ``refs/``) would name it."""
    return os.path.relpath(evil, scene.root / "refs") if how == "relative" else str(evil)


def _newest_entry(path: Path) -> Entry:
    frames, _size = frames_of(path)
    return [decode_entry(f.payload) for f in frames if f.kind == KIND_ENTRY][-1]


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_blob_index_record_naming_a_file_outside_is_not_used(tmp_path: Path, how: str) -> None:
    # Finding 4: an I frame records BIG's digest at ../../outside/evil.log.
    scene = Scene(tmp_path)
    evil, frame = _evil_log(scene, BIG)
    location = _location(scene, evil, how)
    assert how == "absolute" or location == "../../outside/evil.log"
    digest = bytes.fromhex(_digest_hex(BIG))
    shard = scene.shard(BIG)
    shard.parent.mkdir(exist_ok=True)
    with open(shard, "ab") as fh:
        fh.write(BlobIndex.payload(digest, BlobLoc(location, 0, len(frame))))
    atime_counts = _atime_moves_on_read(scene)
    before = scene.freeze()

    scene.reopen().set("k", BIG)  # durable, as a plain Store

    scene.assert_untouched(before)
    if atime_counts:
        assert evil.stat().st_atime_ns == OLD_NS, "castore read outside/evil.log"
    blob = _newest_entry(scene.log("k")).blob
    assert blob is not None
    held_by = os.path.normpath(scene.root / "refs" / blob.log)
    assert blob.log == "" or held_by == os.path.normpath(scene.log("k")), blob
    evil.unlink()
    assert scene.reopen().get("k").value == BIG


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_entry_blob_location_naming_a_file_outside_is_never_read(tmp_path: Path, how: str) -> None:
    # Version 2 of k points at a B frame of BIG outside the root: the value is not in the
    # store, so reading it fails as missing; it never comes from outside.
    scene = Scene(tmp_path)
    scene.store.set("k", 1)
    evil, frame = _evil_log(scene, BIG)
    first = _newest_entry(scene.log("k"))
    entry = Entry(
        version=2,
        op=OP_SET,
        time_ns=first.time_ns + 1,
        hash=_digest_hex(BIG),
        size=len(codec.normalize(BIG)),
        blob=BlobLoc(_location(scene, evil, how), 0, len(frame)),
        created_ns=first.created_ns,
    )
    with open(scene.log("k"), "ab") as fh:
        fh.write(encode_frame(KIND_ENTRY, encode_record(entry)))
    atime_counts = _atime_moves_on_read(scene)
    before = scene.freeze()

    exc = attempt(lambda: scene.reopen().get("k"))

    scene.assert_untouched(before)
    if atime_counts:
        assert evil.stat().st_atime_ns == OLD_NS, "castore read outside/evil.log"
    assert isinstance(exc, CorruptionError), f"read a value from outside the root: {exc!r}"


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plant", "args"),
    [
        pytest.param(plant_log, ["set", "k", "1"], id="log-set"),
        pytest.param(plant_namespace, ["set", "k", "3"], id="namespace-set"),
        pytest.param(plant_gc_lock, ["gc", "--grace", "0s"], id="gc.lock-gc"),
    ],
)
def test_cli_refuses_planted_symlink(
    tmp_path: Path, plant: Callable[[Scene], Path], args: list[str]
) -> None:
    scene = Scene(tmp_path)
    link = plant(scene)
    before = scene.freeze()
    proc = scene.cli.run(*args, stdin=subprocess.DEVNULL)
    scene.assert_untouched(before)
    assert_names_symlink(one_line_error(proc, EXIT_DAMAGED), scene, link)


def test_cli_check_reports_planted_symlink(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    link = moved_keys(scene)
    before = scene.freeze()
    proc = scene.cli.run("check", stdin=subprocess.DEVNULL)
    scene.assert_untouched(before)
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == EXIT_FAILURE, (proc.returncode, err, proc.stdout)
    assert "Traceback" not in err
    assert err.startswith("castore: ")
    assert err.count("\n") == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert any(names(f["path"], scene.root, link) for f in report["findings"]), report


@pytest.mark.parametrize("kind", ["fifo", "directory"])
@pytest.mark.parametrize("name", ["log", "KEYS", "STATE", "GRAVES"])
def test_a_fifo_or_directory_planted_in_the_store_is_refused_reported_and_repaired(
    tmp_path: Path, name: str, kind: str
) -> None:
    """No command waits on a FIFO or trips on a directory in place of a store file.

    It fails (exit 5, naming the path), check says so, and check --repair
    removes a FIFO or moves a directory (with what it holds) to quarantine.
    A GRAVES it replaces gets a floor, so versions still never repeat.
    """
    scene = Scene(tmp_path)
    scene.store.set("k", 1)
    scene.store.delete("gone")  # nothing to delete: no GRAVES yet either way
    scene.store.list()  # a STATE
    target = scene.log("k") if name == "log" else scene.ns / name
    if target.exists():
        target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
        (target / "inside").write_bytes(b"kept")
    calls: dict[str, list[tuple[str, ...]]] = {
        "log": [("get", "k"), ("set", "k", "2"), ("--no-sync", "set", "k", "3")],
        "KEYS": [("set", "new", "1"), ("list",)],
        "STATE": [("set", "k", "2"), ("list",)],
        "GRAVES": [("set", "new", "1")],
    }
    for args in calls[name]:
        err = scene.cli.fail(EXIT_DAMAGED, *args, stdin=subprocess.DEVNULL)
        assert "is not a regular file" in err, (args, err)
        assert str(target) in err, (args, err)
    report = json.loads(scene.cli.run("check", stdin=subprocess.DEVNULL).stdout)
    assert not report["ok"]
    planted = {
        "fifo": "a FIFO, socket or device planted in the store (castore never opens one)",
        "directory": "a directory in place of a file of the store",
    }[kind]
    assert [f["path"] for f in report["findings"] if f["problem"] == planted] == [
        str(target.relative_to(scene.root))
    ], report
    repaired = json.loads(scene.cli.run("check", "--repair").stdout)
    assert repaired["ok"], repaired
    assert json.loads(scene.cli.run("check").stdout)["ok"]
    assert not target.exists() or stat.S_ISREG(target.lstat().st_mode)  # KEYS: rebuilt
    if kind == "directory":
        kept = list((scene.root / "quarantine").glob(f"*/**/{target.name}.planted/inside"))
        assert [p.read_bytes() for p in kept] == [b"kept"], kept
    if name != "log":  # derived or recreated: the store works again
        created = scene.cli.ok("set", "new2", "1")
        # What the lost GRAVES held is unknown: a re-created key starts above a floor.
        assert created["version"] > (1_000_000 if name == "GRAVES" else 0), created


@pytest.mark.parametrize("where", ["namespace", "scope", "refs", "index", "quarantine"])
def test_a_file_in_place_of_a_store_directory_is_named_reported_and_moved_aside(
    tmp_path: Path, where: str
) -> None:
    """No command fails with a bare "Not a directory" or walks past it as if it were empty.

    Reads and writes that need the directory fail (exit 5, naming it); gc and
    stats refuse to run (a blob only its logs use may be live); check reports
    it and check --repair moves it, as it was, to quarantine.
    """
    scene = Scene(tmp_path)
    scene.store.set("k", 1)
    scene.cli.ok("gc")  # an index and a quarantine-free store
    target = {
        "namespace": scene.ns,
        "scope": scene.ns.parent,
        "refs": scene.root / "refs",
        "index": scene.root / "index",
        "quarantine": scene.root / "quarantine",
    }[where]
    if target.exists():
        shutil.rmtree(target)
    target.write_bytes(b"not a directory")
    failing: dict[str, list[tuple[str, ...]]] = {
        "namespace": [("get", "k"), ("set", "k", "2"), ("list",), ("gc",), ("stats",)],
        "scope": [("get", "k"), ("set", "new", "1"), ("gc",)],
        "refs": [("get", "k"), ("set", "new", "1"), ("gc",), ("stats",)],
        "index": [("gc",)],
        "quarantine": [],
    }
    for args in failing[where]:
        err = scene.cli.fail(EXIT_DAMAGED, *args, stdin=subprocess.DEVNULL)
        assert f"{target} is not a directory" in err, (args, err)
    report = json.loads(scene.cli.run("check", stdin=subprocess.DEVNULL).stdout)
    problem = "a file in place of a directory of the store"
    assert [f["path"] for f in report["findings"] if f["problem"] == problem] == [
        str(target.relative_to(scene.root))
    ], report
    assert not report["ok"]
    assert json.loads(scene.cli.run("check", "--repair").stdout)["ok"]
    assert json.loads(scene.cli.run("check").stdout)["ok"]
    rel = target.relative_to(scene.root)
    kept = list((scene.root / "quarantine").glob(f"*/{rel}.planted"))
    assert [p.read_bytes() for p in kept] == [b"not a directory"], kept
    scene.cli.ok("set", "new2", "1")
    scene.cli.ok("gc")


def test_a_directory_in_place_of_graves_is_swapped_for_the_floor_in_one_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the repair moves the directory away, GRAVES already holds the floor.

    A writer re-creating a removed key at that moment (another process, as
    the helper's call here) must not start below that key's removed life.
    """
    from castore.file import checktree

    scene = Scene(tmp_path)
    for n in (1, 2, 3):
        scene.store.set("k", n)
    scene.store.delete("k")
    assert scene.store.compact(keep_within_seconds=0, prefix="k").keys_removed == 1
    scene.store.gc()
    graves = scene.ns / "GRAVES"
    graves.unlink()
    graves.mkdir()
    seen: list[tuple[bool, int]] = []
    moving = checktree._to_quarantine

    def then_write(checker: Any, path: str, **kw: Any) -> None:
        moving(checker, path, **kw)
        writer = scene.reopen()
        seen.append((graves.is_file(), writer.set("k", "again").version))
        writer.close()

    monkeypatch.setattr(checktree, "_to_quarantine", then_write)
    assert scene.reopen().check(repair=True).ok
    [(is_file, version)] = seen
    assert is_file
    assert version > 4  # versions 1-4 (the delete) were the removed life's


@pytest.mark.parametrize(
    "below", ["refs/dag2", "index/sub", "quarantine/x/y", "elsewhere/../refs/z"]
)
def test_no_store_is_made_inside_another(tmp_path: Path, below: str) -> None:
    # Found by a review: `--dir A/refs/dag2 set x 1` made a store there; A's gc and stats
    # then failed ("FORMAT is not a directory") and A's check --repair moved B's FORMAT aside.
    outer = tmp_path / "a"
    Store(outer, dag="d").set("k", 1)
    (outer / "elsewhere").mkdir()
    before = snapshot(outer)
    inner = outer / below
    with pytest.raises(FormatVersionError, match="inside the castore store at"):
        Store(inner, dag="d").set("x", 1)
    assert snapshot(outer) == before
    assert not os.path.exists(os.path.normpath(inner))
    err = Cli(tmp_path, inner, dag="d").fail(EXIT_FAILURE, "set", "x", "1")
    named = os.path.normpath(inner)  # the CLI's location, made absolute
    assert err == f"{named} is inside the castore store at {outer}: choose a directory outside it"
    assert snapshot(outer) == before
    assert Store(tmp_path / "b", dag="d").set("x", 1).version == 1  # a sibling is fine
