"""Where everything lives in one store directory, and the ``FORMAT`` file that marks it.

:class:`Layout` opens (or creates) a store directory, checks its
``FORMAT``, and names every path below it (docs/FORMAT.md §1): the ref log
of a ref, namespace directories, every log in the store, quarantine
copies. It holds the confined :class:`~castore.file.tree.Tree` every other
part uses to touch those paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from castore.errors import FormatVersionError
from castore.file import fileio
from castore.file.formatfile import check_format, format_line, read_format
from castore.file.rewrite import utc_stamp
from castore.file.tree import UNCONFINED, Tree
from castore.keys import Ref, file_id

__all__ = ["PATHS_CACHED", "Layout"]

PATHS_CACHED = 65536  # ref -> log path entries a handle remembers; cleared wholesale when full


class Layout:
    """One store directory: its settings, its confined tree, and the path of every file.

    Args:
        root: the store directory, created with its FORMAT file if absent.
        durable: fsync so that a returned write survives a power loss.
        lock_timeout: seconds to wait for a log's lock.

    Raises:
        FormatVersionError: the directory holds another format, or is a
            non-empty directory that is not a castore store.
    """

    def __init__(self, root: str, *, durable: bool, lock_timeout: float) -> None:
        self.root = root
        self.durable = durable
        self.lock_timeout = lock_timeout
        self.refs = os.path.join(root, "refs")
        self.fs: Tree = UNCONFINED
        self._open_format()
        self._paths: dict[Ref, str] = {}

    def close(self) -> None:
        """Close the cached directory descriptors."""
        self._paths.clear()
        self.fs.close()

    def _open_format(self) -> None:
        """Check the FORMAT file, or create the store: FORMAT first, atomically.

        Any number of processes may create the same store at once: each
        writes a hidden temporary file and links it to ``FORMAT`` (only the
        first link wins), and ``refs/`` is made only after ``FORMAT`` exists,
        so nobody ever sees a store directory without its ``FORMAT``.
        """
        marker = os.path.join(self.root, "FORMAT")
        if not os.path.isdir(self.root):
            UNCONFINED.makedirs(self.root, durable=self.durable)  # the user chose this path
        fs = self.fs = Tree(self.root)
        text = read_format(fs, marker)
        if text is None:
            if any(not name.startswith(".") for name in fs.listdir(self.root)):
                text = read_format(fs, marker)  # another process may have just created it
                if text is None:
                    raise FormatVersionError(
                        f"{self.root} is not empty and has no FORMAT file: not a castore store"
                    )
            else:
                fs.create_once(marker, format_line())
                fs.makedirs(self.refs, durable=self.durable)
                text = read_format(fs, marker)
        check_format(marker, text or "")

    def ns_dir(self, scope: str, namespace: str) -> str:
        """The directory of a namespace's logs, ``KEYS`` and ``GRAVES``."""
        return os.path.join(self.refs, scope, file_id(namespace))

    def log_path(self, ref: Ref) -> str:
        """The ref log file of ``ref`` (which may not exist yet)."""
        path = self._paths.get(ref)
        if path is None:
            if len(self._paths) >= PATHS_CACHED:
                self._paths.clear()
            path = os.path.join(self.ns_dir(ref.scope, ref.namespace), file_id(ref.key) + ".log")
            self._paths[ref] = path
        return path

    def rel(self, path: str) -> str:
        """A log path relative to ``refs/`` (as stored in blob locations)."""
        return path[len(self.refs) + 1 :]

    def iter_logs(self) -> Iterator[str]:
        """Paths of every ref log in the store (scopes and namespace directories sorted)."""
        for scope in sorted(self.fs.listdir(self.refs)):
            scope_dir = os.path.join(self.refs, scope)
            if not self.fs.isdir(scope_dir):
                continue
            for name in sorted(self.fs.listdir(scope_dir)):
                nsdir = os.path.join(scope_dir, name)
                if self.fs.isdir(nsdir):
                    for file in sorted(self.fs.listdir(nsdir)):
                        if file.endswith(".log"):
                            yield os.path.join(nsdir, file)

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
