"""Each log's newest entry and value, as a handle last read or wrote it; bounded.

A hit needs the log's ``stat`` to equal the one recorded with it (inode,
size, mtime, ctime): any write to the file since, by any process, is a miss.
The cache holds at most :data:`CACHE_MAX_ENTRIES` logs and
:data:`CACHE_MAX_BYTES` of values (each counted with an overhead); past
either it is emptied at once, so a handle that reads or writes many large
values keeps no more than that.
"""

from __future__ import annotations

import os
import threading
from typing import Final

from castore import forks
from castore.backend import Current

__all__ = ["CACHE_MAX_BYTES", "CACHE_MAX_ENTRIES", "ReadCache", "Sig", "stat_sig"]

CACHE_MAX_ENTRIES: Final = 65536  # per handle (also bounds the handle's RefLog objects)
CACHE_MAX_BYTES: Final = 64 << 20  # values kept per handle, each with _OVERHEAD
_OVERHEAD: Final = 512  # what an entry costs beyond its value (entry, key, slot)

Sig = tuple[int, int, int, int]


def stat_sig(st: os.stat_result) -> Sig:
    """What identifies one state of a log file: inode, size, mtime, ctime."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ReadCache:
    """Log path -> (its ``stat`` signature when read or written, its newest entry and value).

    Thread-safe: lookups are single dictionary reads; changes take a lock.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[Sig, Current]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        forks.track(self)

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`): a new lock, nothing held.

        A parent's thread may have been changing the entries and their count.
        """
        self._lock = threading.Lock()
        self._items, self._bytes = {}, 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: str) -> tuple[Sig, Current] | None:
        """What was recorded for ``path`` (compare its signature before use)."""
        return self._items.get(path)

    def put(self, path: str, sig: Sig, current: Current, *, removed: bool = False) -> None:
        """Record ``current`` for the log at ``path`` in the state ``sig``.

        Never a lower version than the one held: a log's newest version only
        grows, so a thread's late put of an older read keeps the newer entry
        (the evidence of a cut, FORMAT.md §7, "A cut a handle saw"), unless
        ``removed``: the caller found the log without entries and the key's
        grave above the version held (compaction removed it).
        """
        size = _cost(current)
        with self._lock:
            held = self._items.get(path)
            if held is not None and _version(held[1]) > _version(current) and not removed:
                return
            old = self._items.pop(path, None)
            if old is not None:
                self._bytes -= _cost(old[1])
            if size > CACHE_MAX_BYTES:
                return
            if len(self._items) >= CACHE_MAX_ENTRIES or self._bytes + size > CACHE_MAX_BYTES:
                self._items.clear()
                self._bytes = 0
            self._items[path] = (sig, current)
            self._bytes += size

    def stale(self, path: str) -> None:
        """The log at ``path`` is about to be rewritten: no hit until it is read again.

        What was seen is kept: a rewrite keeps the newest version, and a cut
        found later is still told by it.
        """
        with self._lock:
            held = self._items.get(path)
            if held is not None:
                self._items[path] = (_NO_FILE, held[1])

    def pop(self, path: str) -> None:
        """Forget ``path`` (its log is about to change)."""
        with self._lock:
            old = self._items.pop(path, None)
            if old is not None:
                self._bytes -= _cost(old[1])

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def held_bytes(self) -> int:
        """The bytes counted for what is held now."""
        return self._bytes


_NO_FILE: Final[Sig] = (-1, -1, -1, -1)  # the signature of no file: never a hit


def _version(current: Current) -> int:
    return current.entry.version if current.entry is not None else 0


def _cost(current: Current) -> int:
    return _OVERHEAD + (len(current.value) if current.value is not None else 0)
