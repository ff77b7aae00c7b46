"""Where everything lives in one store directory, and the ``FORMAT`` file that marks it.

:class:`Layout` checks a store directory's ``FORMAT``, creates the store on
the first write (never on a read: a location without a store reads as an
empty store and is left exactly as it was), and names every path below it
(docs/FORMAT.md §1): the ref log of a ref, namespace directories, every log
in the store, quarantine copies. It holds the confined
:class:`~castore.file.tree.Tree` every other part uses to touch those paths.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

from castore import forks
from castore.errors import FormatVersionError, StoreUnavailableError, UnsafePathError
from castore.file import fileio
from castore.file.formatfile import check_format, format_line, read_format
from castore.file.modes import MODES, PRIVATE, makedirs_plain, modes_of_dir
from castore.file.rewrite import utc_stamp
from castore.file.tree import UNCONFINED, Tree
from castore.keys import SCOPES, Ref, file_id, log_name
from castore.waits import lock_wait

__all__ = ["KEY_BYTES_CACHED", "PATHS_CACHED", "Layout"]

PATHS_CACHED = 65536  # ref -> log path entries a handle remembers; cleared wholesale when full
KEY_BYTES_CACHED = 16 << 20  # and the characters of their names (4 KiB keys and namespaces: 2,048)
forks.track(UNCONFINED)  # tree.py imports no weakref (the CLI's quick paths): its owners do


class Layout:
    """One store directory: its settings, its confined tree, and the path of every file.

    Opening one creates nothing: :attr:`present` says whether a store is
    there (its FORMAT checked), :meth:`exists` looks again, and only
    :meth:`create` (run by the first write) makes the directory and FORMAT.

    Args:
        root: the store directory; it need not exist.
        durable: fsync so that a returned write survives a power loss.
        lock_timeout: seconds to wait for a log's lock (and for ``gc.lock``).
        mode: ``private`` or ``group`` (:data:`~castore.file.modes.MODES`);
            None follows the root directory (private for a new one).

    Raises:
        FormatVersionError: the directory holds another format, is a
            non-empty directory that is not a castore store, or is not a directory.
    """

    def __init__(
        self, root: str, *, durable: bool, lock_timeout: float, mode: str | None = None
    ) -> None:
        self.root = root
        self.durable = durable
        self._lock_timeout = lock_timeout
        self.refs = os.path.join(root, "refs")
        self.gc_lock = os.path.join(root, "gc.lock")  # §8: gc exclusive, others shared
        self._chosen = mode is not None
        self.fs = Tree(root, MODES[mode] if mode is not None else PRIVATE)
        forks.track(self.fs)
        self.present = False  # a store is here and its FORMAT was checked
        self._paths: dict[Ref, str] = {}
        self._path_bytes = 0  # of the keys in _paths
        self._probe(refuse_foreign=True)

    @property
    def lock_timeout(self) -> float:
        """Seconds to wait for a log's lock: the handle's, or less in a server's request.

        A request of ``castore serve`` waits at most its client's lock timeout
        (:func:`castore.waits.waiting_at_most`), as the client's own store would;
        the fixed waits for a namespace's files (``KEYS``, ``STATE``) are not this.
        """
        return lock_wait(self._lock_timeout)

    def close(self) -> None:
        """Close the cached directory descriptors."""
        self._paths.clear()
        self.fs.close()

    def exists(self, *, walk: bool = False) -> bool:
        """True if a store is here (looked for again until one is); creates nothing.

        ``walk``: the caller is about to walk the whole store (check, gc, stats):
        cached directories their paths no longer name are dropped first
        (``Tree.drop_stale``; nothing was read through them yet).

        Raises:
            StoreUnavailableError: the store this handle saw is gone (:meth:`not_gone`).
        """
        self.not_gone()
        if walk and self.present:
            self.fs.drop_stale()
        return self.present

    def not_gone(self, path: str | None = None) -> None:
        """Refuse to go on where the store this handle saw is gone or was replaced.

        Gone: the path no longer names the directory this handle holds open
        (deleted, moved, replaced, a volume mounted or unmounted there), or its
        ``FORMAT`` is missing. A read must not answer "not found" for what it
        held, nor a write make a new store in its place. A handle that saw no
        store yet looks again instead (dropping its descriptors if the path
        names another directory now). A few ``stat`` calls, made only on the
        paths that find nothing or make a directory (FORMAT.md §1). So are the
        directories on the way to ``path`` (what the call found nothing in),
        as ``Tree.drop_stale``.

        Raises:
            StoreUnavailableError: the store is gone, or one appeared in place of
                the directory this handle had opened, or a directory on the way to
                ``path`` was replaced (try again: it is seen now).
        """
        # What is held first: another thread may make the root and open it meanwhile, and
        # a root held since before the stat must not look moved (its descriptors retired).
        held = self.fs.held_root()
        try:
            st = os.stat(self.root)  # the root may be a link the user chose
            here: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            here = None
        moved = held is not None and held != here
        if self.present:
            if moved or not os.path.exists(os.path.join(self.root, "FORMAT")):
                raise StoreUnavailableError(
                    f"the store at {self.root} is gone: the path no longer names the store "
                    "this handle opened (deleted, moved, replaced or unmounted); nothing was "
                    "read or written; open it again"
                )
            if path is not None and (dropped := self.fs.drop_stale(path)):
                raise StoreUnavailableError(
                    f"{os.path.relpath(dropped[0], self.root)} in the store at {self.root}"
                    " was replaced under this handle (restored from a copy, moved or removed):"
                    " nothing was read or written; try again"
                )
            return
        if moved:
            self.fs.close(root=True)  # nothing seen through them yet: look at what is there now
        if here is not None and self._probe(refuse_foreign=False) and moved:
            raise StoreUnavailableError(
                f"the store at {self.root} appeared in place of the directory this handle "
                "had opened (made or mounted there): nothing was read or written; try again"
            )

    def _probe(self, *, refuse_foreign: bool) -> bool:
        """Check the store here, if any, creating nothing; True if there is one.

        Raises:
            FormatVersionError: another format, not a directory, or (with
                ``refuse_foreign``) a non-empty directory without FORMAT.
        """
        try:
            st = os.stat(self.root)  # the root may be a link the user chose
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise FormatVersionError(f"{self.root} is not a directory: not a castore store")
        if not self._chosen:
            self.fs.modes = modes_of_dir(st.st_mode)
        marker = os.path.join(self.root, "FORMAT")
        text = read_format(self.fs, marker)
        if text is None and refuse_foreign:
            self._refuse_foreign(marker)
            text = read_format(self.fs, marker)  # another process may have just created it
        if text is None:
            return False
        check_format(marker, text)
        self.present = True
        return True

    def _refuse_foreign(self, marker: str) -> None:
        """Refuse a non-empty directory without FORMAT: never scatter files into it.

        Raises:
            FormatVersionError: the directory holds names that do not start with a dot.
        """
        names = self.fs.listdir(self.root)
        # A store another process made meanwhile has FORMAT before any other name.
        if any(not n.startswith(".") for n in names) and read_format(self.fs, marker) is None:
            dagu = {"v1", *SCOPES} & set(names)  # Dagu's dag-state, or its v1/, given as --dir
            hint = (
                " (it looks like a Dagu dag-state directory: castore import-dagu "
                f"{self.root} imports it into a castore store)"
            )
            raise FormatVersionError(
                f"{self.root} is not empty and has no FORMAT file: not a castore store"
                + (hint if dagu else "")
            )

    def create(self) -> None:
        """Make the store if there is none yet (the first write): FORMAT first, atomically.

        Any number of processes may create the same store at once: each
        writes a hidden temporary file and links it to ``FORMAT`` (only the
        first link wins), and ``refs/`` is made only after ``FORMAT`` exists,
        so nobody ever sees a store directory without its ``FORMAT``. The
        directory and missing parents get the store's directory mode.

        Raises:
            FormatVersionError: the directory is not empty and not a castore
                store, or holds another format.
        """
        if self.exists():
            return
        _refuse_nested(self.root)
        if not os.path.isdir(self.root):  # the user chose this path
            makedirs_plain(self.root, self.fs.modes.dir, durable=self.durable)
        if self._probe(refuse_foreign=True):
            return
        marker = os.path.join(self.root, "FORMAT")
        self.fs.create_once(marker, format_line())
        self.fs.makedirs(self.refs, durable=self.durable)
        check_format(marker, read_format(self.fs, marker) or "")
        self.present = True

    def gc_locked(
        self, *, shared: bool, held: bool = False, create: bool = True
    ) -> contextlib.AbstractContextManager[int | None]:
        """Hold ``gc.lock`` (FORMAT.md §8): exclusively for gc, shared for a rewrite.

        A rewrite moves blobs (compaction, an import's overwrite, a repair) and
        records their new locations in the blob index before its rename; a
        rebuild of the index (gc's, a repair's), if it read that log before the
        rename, would drop them. So rewrites hold it shared, taken before the
        log's lock (gc's order), and rebuilds exclusively. ``held``: the caller
        holds it already (nothing is taken). Without ``create`` the file is
        opened read-only and never made (a dry run changes nothing).

        Raises:
            LockTimeoutError: it stayed taken for the lock timeout.
            FileNotFoundError: there is no ``gc.lock`` and ``create`` is False.
        """
        if held:
            return contextlib.nullcontext()
        flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
        return self.fs.open_locked(self.gc_lock, flags, shared=shared, timeout=self.lock_timeout)

    def ns_dir(self, scope: str, namespace: str) -> str:
        """The directory of a namespace's logs, ``KEYS`` and ``GRAVES``."""
        return os.path.join(self.refs, scope, file_id(namespace))

    def log_path(self, ref: Ref, *, keep: bool = True) -> str:
        """The ref log file of ``ref`` (which may not exist yet); remembered if ``keep``."""
        path = self._paths.get(ref)
        if path is None and not keep:
            return os.path.join(self.refs, log_name(ref))
        if path is None:
            if len(self._paths) >= PATHS_CACHED or self._path_bytes >= KEY_BYTES_CACHED:
                self._paths.clear()
                self._path_bytes = 0
            self._path_bytes += len(ref.key) + len(ref.namespace)
            path = os.path.join(self.refs, log_name(ref))
            self._paths[ref] = path
        return path

    def rel(self, path: str) -> str:
        """A log path relative to ``refs/`` (as stored in blob locations)."""
        return path[len(self.refs) + 1 :]

    def iter_logs(self) -> Iterator[str]:
        """Paths of every ref log in the store (scopes and namespace directories sorted)."""
        try:
            scopes = sorted(self.fs.listdir(self.refs))
        except FileNotFoundError:  # a store without a key yet
            return
        for scope in scopes:
            scope_dir = self._directory(os.path.join(self.refs, scope))
            for name in sorted(self.fs.listdir(scope_dir)):
                nsdir = self._directory(os.path.join(scope_dir, name))
                for file in sorted(self.fs.listdir(nsdir)):
                    if file.endswith(".log"):
                        yield os.path.join(nsdir, file)

    def _directory(self, path: str) -> str:
        """``path``, if it is a directory (not a link to one).

        Raises:
            UnsafePathError: anything else, where castore keeps a scope or a
                namespace: what it holds is unknown (a blob only its logs
                use may be live), so the walk stops until ``check --repair``.
        """
        if not self.fs.isdir(path):
            raise UnsafePathError(
                f"{path} is not a directory; castore keeps a directory there; "
                "run castore check --repair"
            )
        return path

    def quarantine_path(self, path: str, stamp: str) -> str:
        """Where ``quarantine/<stamp>/`` keeps a copy of the store file ``path``."""
        return os.path.join(self.root, "quarantine", stamp, os.path.relpath(path, self.root))

    def quarantine_bytes(self, path: str, offset: int, data: bytes) -> str:
        """Keep ``data``, cut from ``path`` at ``offset``, in quarantine (durably); return where.

        One flat folder, ``quarantine/torn/``, named after the log's path, so
        recoveries never multiply directories.
        """
        flat = os.path.relpath(path, self.refs).replace("/", ".")
        keep = os.path.join(self.root, "quarantine", "torn", f"{flat}.{offset}.{utc_stamp()}")
        self.fs.makedirs(os.path.dirname(keep), durable=self.durable)
        self.fs.atomic_write(keep, data, durable=self.durable)
        return keep

    def keep_copy(self, fd: int, size: int, keep: str) -> None:
        """Copy the first ``size`` bytes of the file on ``fd`` to ``keep`` (durably)."""
        self.fs.makedirs(os.path.dirname(keep), durable=self.durable)
        self.fs.atomic_write(keep, fileio.read_at(fd, 0, size), durable=self.durable)


def _refuse_nested(root: str) -> None:
    """Refuse to make a store inside another one (a mistyped location, say).

    Its maintenance would walk into it and a repair move its files aside. A
    directory above ``root`` holding a regular ``FORMAT`` and a ``refs/``
    directory is a store; only ``lstat`` is used there, nothing is read.

    Raises:
        FormatVersionError: ``root`` is below a castore store.
    """
    here = os.path.realpath(root)
    while (parent := os.path.dirname(here)) != here:
        here = parent
        try:
            marker, refs = (os.lstat(os.path.join(here, n)).st_mode for n in ("FORMAT", "refs"))
        except OSError:
            continue
        if stat.S_ISREG(marker) and stat.S_ISDIR(refs):
            raise FormatVersionError(
                f"{root} is inside the castore store at {here}: choose a directory outside it"
            )
