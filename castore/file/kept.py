"""Ref logs kept open between writes: a write locks a kept descriptor instead of opening one.

Opening a log below the root costs a confined open (``O_NOFOLLOW`` relative
to its directory) and a close; relocking a descriptor this handle already
has costs an ``flock`` and a ``stat``. A kept descriptor is used only if,
under its lock, the path still names the same file (a rewrite renames a new
log over the old one; gc may remove it). One thread at a time uses a
descriptor (it is taken out of the pool for the write), and a forked child
never uses its parent's: their ``flock`` would be shared. The child closes
its copies of the pool's descriptors right after the fork (:mod:`castore.forks`),
never unlocking them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
from collections.abc import Callable
from types import TracebackType

from castore import forks
from castore.errors import LockTimeoutError
from castore.file import fileio
from castore.file.reflog import RefLog
from castore.forks import FORKS

__all__ = ["Held", "KeptLogs", "kept_max"]


def kept_max() -> int:
    """How many log descriptors a process keeps: 1/16 of its soft ``RLIMIT_NOFILE`` now.

    At most 1,024 (a server over a thousand keys reopens none; under the common
    soft limit of 1,024, 64), shared by all of its handles. (It was at least 32:
    half of a limit of 64, which the other caches then took the rest of; and it
    was read once, at import, before ``castore serve`` raised its limit.)
    """
    return fileio.descriptor_share(16, 1024)


class _Budget:
    """The kept descriptors of every handle of this process (a count, under a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept = 0

    def after_fork_in_child(self) -> None:
        """In a forked child: a new lock (the handles' hooks, taking none, count down)."""
        self.lock = threading.Lock()


_BUDGET = _Budget()
forks.track(_BUDGET)


class KeptLogs:
    """A pool of log descriptors, by path, for the writes of one handle.

    Every handle of a process draws on one budget of :func:`kept_max`
    descriptors: a process that opens many handles does not run out of
    descriptors, and one busy handle (a server's) may keep them all.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._guard = threading.Lock()
        forks.track(self)

    def __del__(self, _exiting: Callable[[], bool] = sys.is_finalizing) -> None:
        if _exiting():  # the kernel closes them at exit; the modules' globals may be gone
            return
        self.close()  # a handle that is never closed does not hold descriptors forever

    def close(self) -> None:
        """Close every kept descriptor."""
        with self._guard:
            fds, self._fds = self._fds, {}
            with _BUDGET.lock:
                _BUDGET.kept -= len(fds)
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def after_fork_in_child(self) -> None:
        """In a forked child: a new lock; the copies of the parent's descriptors closed.

        Never unlocked: a copy shares its ``flock`` with the parent's descriptor.
        """
        fds, self._fds, self._pid = self._fds, {}, os.getpid()
        self._guard = threading.Lock()
        _BUDGET.kept = max(0, _BUDGET.kept - len(fds))  # in the child alone: no lock needed
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _take(self, path: str) -> int | None:
        if self._pid != os.getpid():  # inherited from the parent: never used
            self._pid = os.getpid()
            self.close()
        with self._guard:
            fd = self._fds.pop(path, None)
            if fd is not None:
                with _BUDGET.lock:
                    _BUDGET.kept -= 1
            return fd

    @staticmethod
    def _room() -> bool:
        return _BUDGET.kept < kept_max()

    def _give(self, path: str, fd: int, forks_seen: int) -> None:
        """Keep ``fd`` for ``path`` if the budget allows (a full pool keeps what it has).

        Not if the process forked since ``forks_seen`` (:data:`~castore.forks.FORKS`
        when the write began): the child may hold a copy that is in no pool of its
        own, and a lock taken later on this one would then outlive this process.
        """
        with self._guard:
            if path not in self._fds and self._pid == os.getpid():
                with _BUDGET.lock:
                    room = _BUDGET.kept < kept_max()
                    if room:
                        _BUDGET.kept += 1
                if room:
                    self._fds[path] = fd  # then the look: a fork after it finds fd kept
                    if FORKS[0] == forks_seen:
                        return
                    del self._fds[path]
                    with _BUDGET.lock:
                        _BUDGET.kept -= 1
        os.close(fd)

    def _relock(self, log: RefLog, fd: int) -> os.stat_result | None:
        """Lock ``fd``; its ``fstat`` if its path still names it, else unlock (caller closes).

        Nor a file that has another name since it was opened: a new descriptor is opened,
        which refuses it (a name outside the store, castore/file/modes.py ``regular``).
        """
        fileio.lock(fd, log.path, timeout=log.layout.lock_timeout, pauses=fileio.WRITER_PAUSES)
        st = log.layout.fs.names(log.path, fd)
        if st is None or st.st_nlink != 1:
            st = None
            fcntl.flock(fd, fcntl.LOCK_UN)
        return st

    def locked(self, log: RefLog) -> Held:
        """``log`` locked exclusively (``with``), on a kept descriptor if one is still current.

        The log's header is the writer's to check (FORMAT.md §6 step 1).

        Raises:
            LockTimeoutError: the lock stayed taken for the lock timeout.
        """
        return Held(self, log)


class Held:
    """One log locked for a write: its descriptor and its ``fstat`` taken under the lock.

    A context manager (a class, not a generator: it is on every write's path).
    On a normal exit the descriptor goes back to the pool; on an exception it
    is closed (the write may have left it anywhere).
    """

    __slots__ = ("_forks", "_fresh", "_held", "_log", "_pool", "fd", "st")
    fd: int  # set by __enter__, as ``st``
    st: os.stat_result

    def __init__(self, pool: KeptLogs, log: RefLog) -> None:
        self._pool, self._log = pool, log
        self._fresh: contextlib.AbstractContextManager[int] | None = None
        self._held = False  # ``fd``, from the pool, is locked
        self._forks = FORKS[0]  # before the descriptor leaves the pool (KeptLogs._give)

    def __enter__(self) -> Held:
        try:
            return self._enter()
        except BaseException as exc:
            self._undo(exc)  # a Ctrl-C as ``_enter`` returned: its lock held, no ``__exit__``
            ref = self._log.ref
            if isinstance(exc, LockTimeoutError) and exc.path == self._log.path and ref is not None:
                exc.ref = str(ref)  # a user names keys, not their logs' hashed paths
            raise

    def __del__(self) -> None:
        """A pool's descriptor still locked: ``__exit__`` was interrupted as it began.

        (CPython runs a signal's handler as a function starts.) Released once this is
        collected, when the exception's traceback is (a fresh descriptor's generator is).
        """
        if getattr(self, "_held", False) and not sys.is_finalizing():  # exit: the kernel does
            self._held = False
            with contextlib.suppress(OSError):
                fileio.unlock_and_close(self.fd)

    def _undo(self, exc: BaseException) -> None:
        """Release what an interrupted :meth:`_enter` holds (the ``with`` never ran)."""
        fresh, self._fresh = self._fresh, None
        if fresh is not None:  # unlocked and closed, whether it was entered or not
            with contextlib.suppress(Exception):  # the exception raised is ``exc``
                fresh.__exit__(type(exc), exc, exc.__traceback__)
        elif self._held:
            self._held = False
            with contextlib.suppress(OSError):
                fileio.unlock_and_close(self.fd)

    def _enter(self) -> Held:
        pool, log = self._pool, self._log
        fd = pool._take(log.path)
        if fd is not None:
            try:
                st = pool._relock(log, fd)
            except BaseException:
                fileio.unlock_and_close(fd)  # locked if its path's look failed
                raise
            if st is not None:
                self.fd, self.st, self._held = fd, st, True  # no call between: one step
                return self
            os.close(fd)
        fresh = self._fresh = log.locked()  # before it locks: undone if interrupted (__enter__)
        self.fd = fresh.__enter__()
        self.st = os.fstat(self.fd)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pool, fd, fresh = self._pool, self.fd, self._fresh
        if fresh is None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BaseException:
                self._held = False
                os.close(fd)  # the unlock failed: the lock goes with the last copy
                raise
            self._held = False
            if kind is None:
                pool._give(self._log.path, fd, self._forks)
            else:
                os.close(fd)
            return
        # The same open file: its flock goes with the unlock below. A full pool
        # keeps its logs (a round robin over more keys would only churn it).
        kept = -1
        try:
            if kind is None and pool._room():
                with contextlib.suppress(OSError):  # none left (EMFILE): the write is done anyway
                    kept = os.dup(fd)
        except BaseException as stop:  # a Ctrl-C in the pool's calls: the lock still goes now
            fresh.__exit__(type(stop), stop, stop.__traceback__)
            raise
        try:
            fresh.__exit__(kind, exc, tb)
        except BaseException:
            if kept >= 0:
                os.close(kept)
            raise
        if kept >= 0:
            pool._give(self._log.path, kept, self._forks)
