"""Descriptor-level primitives: flock with back-off, exact reads, durable appends, failpoints.

Locks are ``flock(2)`` locks on the file itself: the kernel releases them
when the holder dies, so a crash never leaves a stale lock. They belong to
the open file, which a forked child's copy of the descriptor shares: so a
lock is released with ``LOCK_UN`` (:func:`locked`, :func:`unlock_and_close`),
never by closing alone, which would leave it held while such a child lives.
Paths are :mod:`castore.file.tree`'s business; these functions take descriptors.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Callable

from castore.defaults import LOCK_TIMEOUT_SECONDS
from castore.errors import LockTimeoutError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "FAILPOINTS",
    "LOCK_TIMEOUT_SECONDS",
    "SHORT_PAUSES",
    "WRITER_PAUSES",
    "append",
    "commit",
    "descriptor_share",
    "failpoint",
    "listdir_at",
    "lock",
    "locked",
    "read_at",
    "try_lock",
    "unlock_and_close",
]

# While a lock is busy: the first pause, doubled up to the longest (seconds).
SHORT_PAUSES: Final = (0.00005, 0.002)  # locks held for µs (indexes, STATE) or a reader's wait
# A ref log's write lock, held for a write's fdatasync: a waiter that wakes
# early mostly takes the lock from the writer about to go again, with a version
# already stale (a lost compare-and-swap); 4 processes in a CAS loop on one key
# made 13% more increments with these pauses than with SHORT_PAUSES
# (docs/PERFORMANCE.md).
WRITER_PAUSES: Final = (0.002, 0.008)

# Failpoints for crash tests (docs/DESIGN.md, "Testing"): CASTORE_FAILPOINTS is a comma
# list of ``name`` or ``name:action``; at a named point the process kills itself with
# SIGKILL (action ``kill``, the default) or stops itself with SIGSTOP (``stop``: a test
# can pause it there and continue it with SIGCONT).
_FAILPOINTS = {
    item.partition(":")[0]: item.partition(":")[2] or "kill"
    for item in filter(None, os.environ.get("CASTORE_FAILPOINTS", "").split(","))
}
FAILPOINTS = (
    "before-append",  # the ref log is locked and repaired; nothing of this write is on disk
    "after-append",  # the write (blob + entry frames) is appended and fdatasynced
    "rewrite-before-rename",  # a rewritten log (compact, gc, repair) is durable, not yet in place
    "rewrite-after-rename",  # the rewritten log replaced the old one; its index is not rebuilt
    "rewrite-before-remove",  # a log that gc or compaction empties is about to be removed
    "compact-after-bury",  # a removed key's last version is in GRAVES; its log is unchanged
    "gc-after-mark",  # gc holds gc.lock and has marked; nothing is swept yet
)


def failpoint(name: str) -> None:
    """Kill (or stop) this process if ``name`` is an armed failpoint."""
    action = _FAILPOINTS.get(name)
    if action is not None:
        import signal  # only in tests that arm a failpoint (CLI start-up)

        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def lock(
    fd: int,
    path: str,
    *,
    shared: bool = False,
    timeout: float = LOCK_TIMEOUT_SECONDS,
    pauses: tuple[float, float] = SHORT_PAUSES,
) -> None:
    """Take an flock on ``fd`` (the caller releases it with ``LOCK_UN`` or by closing).

    Polls with an exponential back-off (``pauses``: the first and the longest), so
    with :data:`SHORT_PAUSES` a waiter starts within about a millisecond of the lock
    being freed.

    Raises:
        LockTimeoutError: when the lock is not taken within ``timeout`` seconds.
        WouldWait: the lock is taken and this thread refused to wait
            (:func:`castore.waits.no_waiting`).
    """
    if try_lock(fd, shared=shared):
        return
    from castore.waits import would_wait  # on a wait only (CLI start-up)

    would_wait(path)
    deadline = time.monotonic() + timeout
    pause, longest = pauses
    while True:
        time.sleep(pause)
        if try_lock(fd, shared=shared):
            return
        if time.monotonic() >= deadline:
            raise LockTimeoutError(path, timeout)
        pause = min(pause * 2, longest)


def try_lock(fd: int, *, shared: bool) -> bool:
    """Take an flock on ``fd`` if it is free now; False (and no lock) if it is not."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class locked:  # noqa: N801 - used as the function it was: ``with locked(fd, path):``
    """Hold an flock on ``fd`` for the ``with`` block (see :func:`lock`).

    A class, not a generator: an exception delivered as its ``__exit__`` begins
    (a ``KeyboardInterrupt``, CPython runs a signal's handler as a function starts)
    leaves the lock on ``fd`` for the caller's close to release. A generator then
    stayed suspended, and unlocked the number when it was collected, after the
    caller had closed ``fd``: another descriptor given that number lost its lock.

    Raises:
        LockTimeoutError: when the lock is not taken within ``timeout`` seconds.
    """

    __slots__ = ("_fd", "_lock")

    def __init__(
        self,
        fd: int,
        path: str,
        *,
        shared: bool = False,
        timeout: float = LOCK_TIMEOUT_SECONDS,
        pauses: tuple[float, float] = SHORT_PAUSES,
    ) -> None:
        self._fd = fd
        self._lock = functools.partial(
            lock, fd, path, shared=shared, timeout=timeout, pauses=pauses
        )

    def __enter__(self) -> None:
        self._lock()

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def unlock_and_close(fd: int) -> None:
    """Release ``fd``'s flock (if it holds one), then close it.

    Closing alone releases the lock only with the last copy of the descriptor,
    and a child forked while it was held has one (:mod:`castore.forks`).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_at(fd: int, offset: int, size: int) -> bytes:
    """Read exactly ``size`` bytes at ``offset`` (fewer only at end of file)."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def append(fd: int, data: bytes, *, durable: bool) -> None:
    """Append ``data`` to an ``O_APPEND`` file and, if ``durable``, fdatasync it.

    Appends under the file's exclusive lock never interleave; without it (the
    blob index) only a short write (a full disk) lets another's land inside.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    if durable:
        os.fdatasync(fd)


def commit(fd: int, data: bytes, size: int, *, durable: bool, forget: Callable[[], object]) -> None:
    """Append the frames of one write to a locked log of ``size`` bytes: the commit point.

    FORMAT.md §6 step 7. On failure the appended bytes are cut again before the
    error is raised (the write was not acknowledged, and no reader may see it),
    and ``forget`` removes the log's version index (a reader may have indexed
    them meanwhile); errors of both are suppressed in favour of the first.
    Not after an exception that is no failure of the append (a ``KeyboardInterrupt``,
    or a signal handler's, delivered as ``fdatasync`` or the last ``write`` returned)
    once every byte is in the file (fdatasynced then if ``durable``: :func:`_whole`):
    the frames stand. Readers
    may have read them already (a Ctrl-C during the fdatasync cut a version another
    handle had read: that handle then failed every read of the key, "acknowledged
    bytes were cut off", and the next write gave the version again).
    """
    failpoint("before-append")
    try:
        append(fd, data, durable=durable)
    except BaseException as exc:
        if not isinstance(exc, OSError) and _whole(fd, size + len(data), durable):
            raise  # the interrupted write may have written, as its caller is told
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)  # the bytes after ``size`` are the caller's alone (locked)
        with contextlib.suppress(OSError):
            forget()
        raise
    failpoint("after-append")


def _whole(fd: int, end: int, durable: bool) -> bool:
    """Whether an interrupted append left every byte in the file, fdatasynced if ``durable``.

    Synced here if the interruption came before the fdatasync: a durable write's log
    carries no mark, so a blob left unsynced there could be indexed (gc's rebuild)
    and pointed at by another key's durable write, which a power loss then broke.
    False (the frames are cut) if the sync fails or is interrupted too.
    """
    try:
        if os.fstat(fd).st_size != end:
            return False
        if durable:
            os.fdatasync(fd)
    except BaseException:  # noqa: BLE001 - cut as a failed append is: nothing unsynced stays
        return False
    return True


_LIMIT: list[float] = [0, -1e9]  # the soft RLIMIT_NOFILE as last read, and when read
_LIMIT_READ_EVERY = 1.0  # seconds: a cache asks per kept descriptor, a write per call


def descriptor_share(share: int, most: int) -> int:
    """How many descriptors a cache may keep: the soft ``RLIMIT_NOFILE`` // ``share``.

    At most ``most``, at least 1. The limit is read again at most once a second (every
    write asks; ``castore serve`` raises its limit after it opened its store). A cache
    sized without the limit kept the descriptors a process needs for its calls and
    connections: a server under ``--nofile=256:256`` answered every request ``EMFILE``
    after reading 236 namespaces.
    """
    now = time.monotonic()
    if now - _LIMIT[1] > _LIMIT_READ_EVERY:
        import resource  # not on the CLI's quick paths

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        _LIMIT[:] = [1 << 20 if soft == resource.RLIM_INFINITY else soft, now]
    return max(1, min(most, int(_LIMIT[0]) // share))


def listdir_at(dir_fd: int) -> list[str]:
    """Names in the directory open on ``dir_fd``, read through a descriptor of this call's own.

    ``os.listdir(dir_fd)`` reads through a copy that shares ``dir_fd``'s position: two
    threads listing one cached descriptor at once each moved the other's, and found
    no names, or each twice.
    """
    own = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listdir(own)
    finally:
        os.close(own)
