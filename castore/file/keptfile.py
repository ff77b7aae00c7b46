"""A small file read again and again: its descriptor kept open, its state told by one ``lstat``.

A namespace file (``STATE``) is read on many calls and changes by appends
and by renames of a new file over it. Keeping the descriptor saves the
open and close of every look; it also pins the inode, so no new file gets
its number while it is held. The path is ``lstat``'d on each look: the
same inode, size and times as when the caller last parsed it means nothing
to read; another inode means another file there, opened as the first was
(with :meth:`Tree.open`'s checks). Not thread-safe: the caller holds its lock.
"""

from __future__ import annotations

import os

from castore.file.tree import Tree

__all__ = ["KeptFile", "Signature"]

Signature = tuple[int, int, int, int, int]  # inode, device, size, mtime and ctime (ns)


class KeptFile:
    """The kept read descriptor of the file at ``path``, and the signature last parsed."""

    def __init__(self, fs: Tree, path: str) -> None:
        self.fs, self.path = fs, path
        self.fd = -1
        self.parsed: Signature | None = None  # set by the caller once it read the file
        self._pid = os.getpid()

    def look(self) -> tuple[int, Signature]:
        """A descriptor of the file the path names, and the held file's signature now.

        The signature is taken before any read through the descriptor: a
        change after it makes the next look's differ. It always names the
        inode held (a rename between the ``lstat`` and an ``open`` hands over
        another file), so a number the path shows later is that file's only
        while it is held. The caller compares it with :attr:`parsed`.

        Raises:
            OSError: there is no file, or it cannot be opened.
        """
        if self._pid != os.getpid():  # forked: the parent's descriptor is the parent's
            self.fd, self.parsed, self._pid = -1, None, os.getpid()
        try:
            st = self.fs.stat(self.path)
        except OSError:
            self.close()
            raise
        sig = _signature(st)
        if self.fd >= 0 and (self.parsed is None or self.parsed[:2] != sig[:2]):
            held = os.fstat(self.fd)
            if (held.st_ino, held.st_dev) != sig[:2]:
                self.close()
        if self.fd < 0:
            self.fd = self.fs.open(self.path, os.O_RDONLY)
            # The file opened, which a rename may have put there since the lstat: the
            # signature must name the inode held (a freed one's number is reused at once).
            sig = _signature(os.fstat(self.fd))
        return self.fd, sig

    def close(self) -> None:
        """Close the descriptor and forget the signature."""
        fd, self.fd, self.parsed = self.fd, -1, None  # never a closed number held
        if fd >= 0 and self._pid == os.getpid():
            os.close(fd)

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`, through its owner): the copy closed."""
        self._pid = os.getpid()
        self.close()


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
