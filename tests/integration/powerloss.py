"""A power-loss model: the trees a power loss could leave, and what must hold in them.

:class:`PowerModel` wraps ``os.open``, ``os.mkdir``, ``os.fsync`` and ``os.fdatasync`` in
this process and records, below one top directory, what a power loss keeps (POSIX, and
the least ext4, XFS and btrfs guarantee):

* a file's content as of its last ``fsync`` or ``fdatasync`` (what the file held then);
  everything written since may be lost, and the file is never longer than what was written;
* a directory's entries as of its last ``fsync``: names made, renamed or removed since
  may all revert (an unlinked name comes back with its inode's durable content; a new
  directory never fsynced is empty);
* everything that existed when the model started.

Renames, links and unlinks need no wrapper: a directory's entries are read when it is
fsynced and when an image is built, and every inode seen is held open (``O_PATH``) so
that its number is never reused while the model runs. A file's mode is taken as it is
now (a mark cleared is taken as kept: stricter than a disk, which may keep the mark).

:meth:`PowerModel.image` writes one tree a power loss could leave:

* ``worst``: every unsynced change is lost;
* ``mixed`` (seeded): a random subset is kept. Each directory, with probability 1/2,
  keeps or reverts each unsynced name change independently, and each file either keeps
  its durable content or gets its current content. This reorders unsynced directory
  changes more freely than ext4 or XFS do (a later rename may survive an earlier one
  that did not), so callers use it only on request.

:func:`verify` opens an image with fresh handles under a new boot id and checks, for
every key of :data:`SPACES`:

* its history reads: an unreadable key is a problem if a durable call acknowledged a
  version of it and no ``durable=False`` call wrote it (those may lose a blob; FORMAT.md §6);
* its newest version is at least the highest version a durable call acknowledged,
  unless the key is gone and a compaction removed it at or above that version (its grave);
* its newest version is one some call acknowledged: nothing a call never returned;
* a live key's ``get`` answers that newest version with the value acknowledged for it;
* the CLI's quick ``get`` (:func:`castore.file.peek.peek`) declines or answers as ``get``;
* ``list`` answers every live key, at the version ``get`` answered, and no other;
* every acknowledged version up to that newest one reads with its acknowledged value
  (``get --version``): not found only if a rewrite may have dropped it, unreadable only
  if a ``durable=False`` call acknowledged it;
* a durable ``set`` on it then gets a version above every version a durable call
  acknowledged and above its grave: no version is handed out twice.

:func:`session` sets a store up below a model; :meth:`Session.crash` images and verifies it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import random
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest

from castore import Store
from castore.errors import CastoreError, CorruptionError, NotFoundError
from castore.file import staterecords
from castore.file.peek import peek
from castore.keys import Ref as KeyRef

Image = Literal["worst", "mixed"]
IMAGES: tuple[Image, ...] = ("worst", "mixed")
PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
Ref = tuple[str, str]  # (dag, key)

# the namespaces (dag names) and keys the sequences use; "g" is the global scope's
SPACES: dict[str, list[str]] = {"d": [f"k{i}" for i in range(4)], "e": ["x0", "x1"], "g": ["g0"]}
SCOPE_OF: dict[str, str] = {"g": "global"}  # the others are the dag scope


_StoreBase: Any = Store  # final for users; this test's subclass only changes defaults
_KEY_CALLS: tuple[str, ...] = ("get", "set", "delete", "diff", "history", "rollback")
_KEY_CALLS += ("diff_versions", "patch", "incr", "update")


class ScopedStore(_StoreBase):  # type: ignore[misc]
    """A handle whose key calls default to ``scope`` (the global scope's namespace ``_``)."""

    def __init__(self, *args: Any, scope: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scope = scope

    def ref(self, key: str, scope: str = "dag", namespace: str | None = None) -> Any:
        return super().ref(key, self.scope if scope == "dag" else scope, namespace)

    def list(self, prefix: str = "", **kw: Any) -> Any:
        kw.setdefault("scope", self.scope)
        return super().list(prefix, **kw)


def _scoped(name: str) -> Callable[..., Any]:
    def call(self: ScopedStore, key: str, *args: Any, **kw: Any) -> Any:
        kw.setdefault("scope", self.scope)
        return getattr(Store, name)(self, key, *args, **kw)

    return call


for _name in _KEY_CALLS:
    setattr(ScopedStore, _name, _scoped(_name))


def open_store(root: str, dag: str, **kwargs: Any) -> Store:
    """A handle on namespace ``dag`` of :data:`SPACES` (the global scope's for "g")."""
    if dag in SCOPE_OF:
        scoped: Store = ScopedStore(root, dag=dag, scope=SCOPE_OF[dag], **kwargs)
        return scoped
    return Store(root, dag=dag, **kwargs)


MISSING = "?"  # the value expected of a version nobody acknowledged


class PowerModel:
    """What a power loss would keep below ``top``, from the ``os`` calls of this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, top: str) -> None:
        self.top = os.path.abspath(top)
        self.active = True  # False: calls are passed through, not recorded
        self.held: dict[int, int] = {}  # inode -> O_PATH descriptor
        self.dirs: set[int] = set()  # the held inodes that are directories
        self.entries: dict[int, dict[str, int]] = {}  # directory inode -> durable entries
        self.data: dict[int, bytes] = {}  # file inode -> durable content
        self.syncs = 0
        self._os_open = os.open
        self._os_mkdir = os.mkdir
        self.top_ino = os.stat(self.top).st_ino
        self._snapshot(self.top)
        monkeypatch.setattr(os, "open", self._open)
        monkeypatch.setattr(os, "mkdir", self._mkdir)
        monkeypatch.setattr(os, "fsync", self._synced(os.fsync))
        monkeypatch.setattr(os, "fdatasync", self._synced(os.fdatasync))

    def close(self) -> None:
        """Close the held descriptors."""
        for fd in self.held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.held.clear()

    # -- tracking ---------------------------------------------------------------------------
    def _hold(self, st: os.stat_result, fd: int) -> None:
        """Hold the inode ``st`` describes, open as ``fd`` (the caller keeps ``fd``)."""
        if st.st_ino not in self.held:
            self._keep(st, self._os_open(f"/proc/self/fd/{fd}", os.O_PATH))

    def _hold_name(self, st: os.stat_result, name: PathArg, dir_fd: int | None) -> None:
        if st.st_ino not in self.held:
            self._keep(st, self._os_open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dir_fd))

    def _keep(self, st: os.stat_result, handle: int) -> None:
        self.held[st.st_ino] = handle
        if stat.S_ISDIR(st.st_mode):
            self.dirs.add(st.st_ino)

    def _snapshot(self, path: str) -> None:
        """Record ``path`` and everything below it as durable."""
        st = os.stat(path, follow_symlinks=False)
        self._hold_name(st, path, None)
        if stat.S_ISDIR(st.st_mode):
            self.entries[st.st_ino] = {}
            for name in os.listdir(path):
                child = os.path.join(path, name)
                self.entries[st.st_ino][name] = os.stat(child, follow_symlinks=False).st_ino
                self._snapshot(child)
        else:
            with open(path, "rb") as f:
                self.data[st.st_ino] = f.read()

    def _inside(self, where: str) -> bool:
        where = os.path.abspath(where)
        return self.active and (where == self.top or where.startswith(self.top + "/"))

    def _fd_inside(self, fd: int) -> bool:
        try:
            return self._inside(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return False

    def _path_inside(self, path: PathArg, dir_fd: int | None) -> bool:
        name = os.fsdecode(path)
        if dir_fd is None or os.path.isabs(name):
            return self._inside(name)
        return self._fd_inside(dir_fd)

    def _open(
        self, path: PathArg, flags: int, mode: int = 0o777, *, dir_fd: int | None = None
    ) -> int:
        fd = self._os_open(path, flags, mode, dir_fd=dir_fd)
        if self._path_inside(path, dir_fd):
            with contextlib.suppress(OSError):
                self._hold(os.fstat(fd), fd)
        return fd

    def _mkdir(self, path: PathArg, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        self._os_mkdir(path, mode, dir_fd=dir_fd)
        if self._path_inside(path, dir_fd):
            self._hold_name(os.stat(path, dir_fd=dir_fd, follow_symlinks=False), path, dir_fd)

    def _synced(self, real_sync: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            real_sync(fd)
            if self._fd_inside(fd):
                self._sync(fd)

        return sync

    def _sync(self, fd: int) -> None:
        self.syncs += 1
        st = os.fstat(fd)
        self._hold(st, fd)
        if stat.S_ISDIR(st.st_mode):
            self.entries[st.st_ino] = self._listing(fd)  # a new directory in it: empty
        else:
            self.data[st.st_ino] = self._current_data(st.st_ino)

    def _listing(self, fd: int) -> dict[str, int]:
        """The entries of the directory open as ``fd`` now; every inode they name is held.

        Read through a descriptor of its own: on btrfs, a directory's open file
        (``fd``'s, shared by ``os.listdir(fd)``) lists no entry made after its last
        rewind, so the model missed a new log's name that the caller's fsync made durable.
        """
        own = self._os_open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        try:
            names = os.listdir(own)
        finally:
            os.close(own)
        out: dict[str, int] = {}
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            self._hold_name(st, name, fd)  # made by another process, or by builtin open()
            out[name] = st.st_ino
        return out

    # -- crash images -----------------------------------------------------------------------
    def _current_entries(self, ino: int) -> dict[str, int]:
        fd = self._os_open(f"/proc/self/fd/{self.held[ino]}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._listing(fd)
        finally:
            os.close(fd)

    def _current_data(self, ino: int) -> bytes:
        try:
            fd = self._os_open(f"/proc/self/fd/{self.held[ino]}", os.O_RDONLY)
        except OSError:
            return self.data.get(ino, b"")
        try:
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)

    def _mode(self, ino: int) -> int:
        return stat.S_IMODE(os.fstat(self.held[ino]).st_mode)

    def image(self, dest: str, how: Image = "worst", seed: int = 0) -> None:
        """Write the tree a power loss could leave at ``dest`` (``top``'s contents)."""
        was, self.active = self.active, False
        try:
            os.makedirs(dest)
            self._build(self.top_ino, dest, how, random.Random(seed), set())
        finally:
            self.active = was

    def _kept_entries(self, ino: int, how: Image, rnd: random.Random) -> dict[str, int]:
        durable = dict(self.entries.get(ino, {}))
        if how == "mixed" and rnd.random() < 0.5:
            current = self._current_entries(ino)
            for name in sorted(set(durable) | set(current)):  # seeded: the same image
                if durable.get(name) != current.get(name) and rnd.random() < 0.5:
                    if name in current:
                        durable[name] = current[name]
                    else:
                        durable.pop(name, None)
        return durable

    def _build(self, ino: int, dest: str, how: Image, rnd: random.Random, seen: set[int]) -> None:
        if ino in seen:  # a directory reachable twice (a rename kept and reverted): once
            return
        seen.add(ino)
        for name, child in sorted(self._kept_entries(ino, how, rnd).items()):
            path = os.path.join(dest, name)
            if child in self.dirs:
                os.mkdir(path)
                self._build(child, path, how, rnd, seen)
                os.chmod(path, 0o700)
                continue
            content = self.data.get(child, b"")
            if how == "mixed" and rnd.random() < 0.5:
                now = self._current_data(child)
                if now.startswith(content) or rnd.random() < 0.5:
                    content = now  # its newest data reached the disk
            with open(path, "wb") as f:
                f.write(content)
            os.chmod(path, self._mode(child) & 0o7777)


# -- what must hold after a power loss ------------------------------------------------------
class Expect:
    """What the calls made so far acknowledged."""

    def __init__(self) -> None:
        self.durable: dict[Ref, int] = {}  # the highest version a durable call acknowledged
        self.acked: dict[Ref, dict[int, object]] = {}  # version -> value (None: a delete)
        self.grave: dict[Ref, int] = {}  # the version a removal of the key buried
        self.undurable_ops: dict[Ref, int] = {}  # how many durable=False calls wrote it
        self.durable_versions: dict[Ref, set[int]] = {}  # versions a durable call acknowledged
        self.dropped: dict[Ref, int] = {}  # versions up to this one a rewrite may have dropped

    def ack(self, ref: Ref, version: int, value: object, durable: bool) -> None:
        """Record that a call returned ``version`` of ``ref`` with ``value``."""
        self.acked.setdefault(ref, {})[version] = value
        if durable:
            self.durable[ref] = max(self.durable.get(ref, 0), version)
            self.durable_versions.setdefault(ref, set()).add(version)
        else:
            self.undurable_ops[ref] = self.undurable_ops.get(ref, 0) + 1

    def newest(self, ref: Ref) -> tuple[int, object]:
        """The newest version acknowledged of ``ref`` and its value (None: none, or a delete)."""
        versions = self.acked.get(ref, {})
        if not versions:
            return 0, None
        top = max(versions)
        return top, versions[top]

    def drop_all(self) -> None:
        """A compaction ran: every version below each key's newest may be gone."""
        for ref, versions in self.acked.items():
            if versions:
                self.dropped[ref] = max(self.dropped.get(ref, 0), max(versions) - 1)

    def lost_after(self, ref: Ref, version: int) -> None:
        """A power loss left ``version`` as ``ref``'s newest: later acknowledgements are gone."""
        versions = self.acked.get(ref, {})
        for v in [v for v in versions if v > version]:
            del versions[v]


def newest(store: Store, key: str) -> tuple[int, str]:
    """The newest version of ``key`` and its operation; ``(0, "")`` when it has none."""
    entries = store.history(key, limit=1).entries
    return (entries[0].version, entries[0].operation) if entries else (0, "")


def verify(root: str, expect: Expect, boot: str) -> list[str]:
    """The problems of the store at ``root``, opened under boot id ``boot``.

    A problem tagged ``[info]`` is allowed (a key a ``durable=False`` call wrote is unreadable).
    """
    staterecords._boot[:] = [boot]
    problems: list[str] = []
    for dag, keys in SPACES.items():
        with open_store(root, dag) as store:
            live: dict[str, int] = {}
            for key in keys:
                problems += _check_key(store, (dag, key), expect, live)
                problems += _check_versions(store, (dag, key), expect)
                problems += _check_peek(root, store, (dag, key))
            problems += _check_list(store, dag, live)
            for key in keys:
                problems += _check_next_set(store, (dag, key), expect)
    return problems


def _check_key(store: Store, ref: Ref, expect: Expect, live: dict[str, int]) -> list[str]:
    """The problems of one key's newest version; a live key is added to ``live``."""
    dag, key = ref
    top = expect.durable.get(ref, 0)
    try:
        version, op = newest(store, key)
    except CorruptionError as exc:
        if top and not expect.undurable_ops.get(ref):
            return [f"{dag}/{key}: unreadable ({exc}) [durable-only key]"]
        return [f"{dag}/{key}: unreadable ({str(exc)[:160]}) [info]"]
    problems = []
    if version < top and not (version == 0 and expect.grave.get(ref, 0) >= top):
        problems.append(f"{dag}/{key}: newest v{version} < durably acked v{top}")
    if version and version not in expect.acked.get(ref, {}):
        problems.append(f"{dag}/{key}: newest v{version} never acknowledged")
    if op not in ("set", "rollback"):
        return problems
    try:
        got = store.get(key)
    except CorruptionError as exc:
        tag = " [info]" if expect.undurable_ops.get(ref) else " [durable-only key]"
        return [*problems, f"{dag}/{key}: get v{version}: {str(exc)[:200]}{tag}"]
    want = expect.acked.get(ref, {}).get(got.version, MISSING)
    if got.version != version or got.value != want:
        problems.append(f"{dag}/{key}: get v{got.version} {got.value!r:.40} != {want!r:.40}")
    live[key] = version
    return problems


def _check_versions(store: Store, ref: Ref, expect: Expect) -> list[str]:
    """Every acknowledged version up to the newest the store holds reads as acknowledged.

    A version a rewrite may have dropped (compaction, an import's overwrite) may be not
    found; one a ``durable=False`` call acknowledged may be unreadable (its value may be in
    another log's unsynced bytes); nothing may read as another value.
    """
    dag, key = ref
    try:
        top = newest(store, key)[0]
    except CorruptionError:
        return []  # _check_key judged it
    problems = []
    for version, value in sorted(expect.acked.get(ref, {}).items()):
        if version > top:
            break
        durable = version in expect.durable_versions.get(ref, set())
        try:
            got = store.get(key, version=version)
        except NotFoundError as exc:
            if version > expect.dropped.get(ref, 0):
                problems.append(f"{dag}/{key}: get --version {version}: {exc} (acked, kept)")
            continue
        except CorruptionError as exc:
            tag = "" if durable else " [info]"
            problems.append(f"{dag}/{key}: get --version {version}: {str(exc)[:160]}{tag}")
            continue
        if (got.value if got.found else None) != value:
            problems.append(
                f"{dag}/{key}: get --version {version} {got.value!r:.40} != {value!r:.40}"
            )
    return problems


def _check_peek(root: str, store: Store, ref: Ref) -> list[str]:
    """The CLI's quick ``get`` (:func:`castore.file.peek.peek`) answers as ``get`` does, or not."""
    dag, key = ref
    scope = SCOPE_OF.get(dag, "dag")
    found = peek(os.path.abspath(root), KeyRef(scope, "_" if scope == "global" else dag, key))
    if found is None:
        return []  # declined: the store answers
    version, digest, value = found
    try:
        got = store.get(key)
    except CastoreError as exc:
        return [f"{dag}/{key}: quick get v{version}, get: {str(exc)[:160]}"]
    if not got.found:
        return [] if not version else [f"{dag}/{key}: quick get v{version}, get: not found"]
    if (version, digest, json.loads(value)) != (got.version, got.hash, got.value):
        return [f"{dag}/{key}: quick get v{version} {value!r:.40}, get v{got.version}"]
    return []


def _check_list(store: Store, dag: str, live: dict[str, int]) -> list[str]:
    try:
        listed = {e.key: e.version for e in store.list().entries}
    except CastoreError as exc:
        return [f"list {dag}: {exc}"]
    return [] if listed == live else [f"list {dag}: {listed} but get says {live}"]


def _check_next_set(store: Store, ref: Ref, expect: Expect) -> list[str]:
    dag, key = ref
    floor = max(expect.durable.get(ref, 0), expect.grave.get(ref, 0))
    try:
        version = store.set(key, {"after": "crash"}).version
    except CorruptionError:
        return []
    if version <= floor:
        return [f"{dag}/{key}: next set got v{version}, but v{floor} was acknowledged/buried"]
    return []


# -- sessions: a store below a model, crashed on demand -------------------------------------
Handles = dict[tuple[str, bool], Store]  # (dag, durable) -> handle


def real(problems: list[str]) -> list[str]:
    """The problems that are not ``[info]``."""
    return [p for p in problems if "[info]" not in p]


@dataclasses.dataclass
class Session:
    """A store below a power model, its handles, and what their calls acknowledged."""

    model: PowerModel
    handles: Handles
    expect: Expect
    boot: str
    images: pathlib.Path
    monkeypatch: pytest.MonkeyPatch | None = None
    generation: int = 1

    def crash(self, how: Image, seed: int, name: str, boot: str) -> list[str]:
        """The problems of image ``how``; it is left at ``images/name`` if any are real."""
        dest = self.images / name
        self.model.image(str(dest), how, seed)
        self.model.active = False
        try:
            problems = verify(str(dest / "store"), self.expect, boot)
        finally:
            self.model.active = True
            staterecords._boot[:] = [self.boot]
        if not real(problems):
            shutil.rmtree(dest)
        return problems

    def reboot(self, name: str, boot: str, repair: bool = True) -> str:
        """Go on in the ``worst`` image of now, under boot ``boot``: a second-generation crash.

        The image (after ``check --repair`` when ``repair``) gets a model and handles of its
        own; what the power loss took is dropped from :attr:`expect`, whose durable
        versions still bind. Returns what the repair reported.
        """
        assert self.monkeypatch is not None
        dest = self.images / name
        self.model.image(str(dest), "worst", 0)
        for h in self.handles.values():
            h.close()
        self.model.active = False
        self.model.close()
        staterecords._boot[:] = [boot]
        self.boot = boot
        self.generation += 1
        self.model = PowerModel(self.monkeypatch, str(dest))
        root = str(dest / "store")
        for dag, durable in list(self.handles):
            self.handles[dag, durable] = open_store(root, dag, durable=durable)
        said = ""
        if repair:
            report = self.handles["d", True].check(repair=True)
            said = "; ".join(f.problem[:70] for f in report.findings if f.severity != "info")
        for dag, keys in SPACES.items():
            h = self.handles[dag, True]
            for key in keys:
                try:
                    version = newest(h, key)[0]
                except CorruptionError:
                    continue
                self.expect.lost_after((dag, key), version)
        return said


@contextlib.contextmanager
def session(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    """A model of ``tmp_path/top``, a durable and a durable=False handle per namespace.

    Images go to ``tmp_path/images``; the handles and the model are closed at the end
    (those of the last generation, after :meth:`Session.reboot`).
    """
    top = tmp_path / "top"
    top.mkdir()
    boot = staterecords.boot_id()
    model = PowerModel(monkeypatch, str(top))
    s = Session(model, {}, Expect(), boot, tmp_path / "images", monkeypatch)
    try:
        for dag in SPACES:
            for durable in (True, False):
                s.handles[dag, durable] = open_store(str(top / "store"), dag, durable=durable)
        yield s
    finally:
        for h in s.handles.values():
            h.close()
        s.model.close()
        staterecords._boot[:] = [boot]
