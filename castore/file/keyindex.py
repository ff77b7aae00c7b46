r"""The key index of one namespace: ``KEYS``, a sorted region plus an appended tail.

Format (docs/FORMAT.md §5)::

    "namespace " hex(utf8(namespace)) "\n"
    "sorted " end-offset (20 decimal digits) "\n"
    sorted region: hex(utf8(key)) "\n" lines in byte order, up to end-offset
    tail: hex(utf8(key)) "\n" lines in creation order

Sorting hex lines sorts keys byte-wise, and a key's byte prefix is a prefix of
its hex, so a prefix is found by binary search in the sorted region (a few
reads, whatever the number of keys) plus a scan of the short tail. When the
tail outgrows :data:`TAIL_MAX_BYTES` and :data:`TAIL_MAX_LINES` lines or an
eighth of the sorted region, the writer that appends rewrites the file sorted
(atomically, under the file's lock): long keys are not re-sorted every few. Lines that
lack their newline or are not lowercase hex are ignored. A writer lists a key once
(it looks under the file's lock), so a line found twice is damage; the lines of the
sorted region ascend strictly. A file without a ``sorted`` line is all tail.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading

from castore import forks
from castore.file import fileio, namesync
from castore.file.tree import Tree

__all__ = ["TAIL_MAX_BYTES", "TAIL_MAX_LINES", "KeyIndex", "namespace_of"]

TAIL_MAX_BYTES = 64 << 10  # 64 KiB of unsorted tail before the file is re-sorted
# ... and this many lines of it, or an eighth of the sorted region's bytes (long keys)
TAIL_MAX_LINES = 2048
_NS_PREFIX = b"namespace "
_SORTED_PREFIX = b"sorted "
_OFFSET_DIGITS = 20
_MAX_LINE = 2 * 4096 + 1  # hex of the longest key, and its newline
_HEX = b"0123456789abcdef"
_SIG_BYTES = 128  # the first bytes of KEYS, part of a handle's check that it is unchanged
_NEAR = 3 * _MAX_LINE  # bytes each side of a prefix's edges whose order is checked


def _line(key: str) -> bytes:
    return key.encode("utf-8").hex().encode("ascii")


def _valid(line: bytes) -> bool:
    return bool(line) and len(line) % 2 == 0 and not line.translate(None, _HEX)


def _decode(hexkey: bytes) -> str | None:
    try:
        return bytes.fromhex(hexkey.decode("ascii")).decode("utf-8")
    except ValueError:
        return None  # a damaged line; check --repair rebuilds KEYS


def _header(namespace: str, end: int) -> bytes:
    ns = _NS_PREFIX + _line(namespace) + b"\n"
    if not end:
        end = len(ns) + len(_SORTED_PREFIX) + _OFFSET_DIGITS + 1
    return ns + _SORTED_PREFIX + b"%0*d\n" % (_OFFSET_DIGITS, end)


class _Layout:
    """Where the regions of one KEYS file are."""

    def __init__(self, fd: int, size: int) -> None:
        head = fileio.read_at(fd, 0, min(size, len(_NS_PREFIX) + _MAX_LINE + 64))
        self.head = head[:_SIG_BYTES]  # tells a rewritten file from the one parsed
        first = head.find(b"\n") + 1
        self.namespace_hex = head[len(_NS_PREFIX) : first - 1] if first else b""
        # A file a writer made always starts with its namespace line (FORMAT.md §5).
        self.valid = size == 0 or (
            head.startswith(_NS_PREFIX) and first > 0 and _valid(self.namespace_hex)
        )
        self.start = self.end = first
        second = head[first : first + len(_SORTED_PREFIX) + _OFFSET_DIGITS + 1]
        digits = second[len(_SORTED_PREFIX) : -1]
        if second.startswith(_SORTED_PREFIX) and second.endswith(b"\n") and digits.isdigit():
            self.start = first + len(second)
            # The namespace and sorted lines, whatever the namespace's length: with the
            # inode, what tells a rewritten file from the one parsed (128 bytes may all be
            # the namespace line).
            self.head = head[: max(self.start, _SIG_BYTES)]
            self.end = end = max(int(digits), self.start)
            if end > size or (end > self.start and fileio.read_at(fd, end - 1, 1) != b"\n"):
                # A writer's file holds its sorted region whole, ending a line: a damaged
                # offset or a cut file. Read all as tail (a full scan) and report it.
                self.valid = False
                self.start = self.end = first


def _first_at_or_after(fd: int, lo: int, hi: int, target: bytes) -> int:
    """Offset of the first line in the sorted region ``[lo, hi)`` that is >= ``target``."""
    while hi - lo > 2 * _MAX_LINE:  # invariant: lo is a line start, the answer is in [lo, hi]
        mid = (lo + hi) // 2
        buf = fileio.read_at(fd, mid, 2 * _MAX_LINE + 1)
        nl = buf.find(b"\n")
        start = mid + nl + 1
        end = buf.find(b"\n", nl + 1)
        if nl < 0 or end < 0 or start >= hi:
            break
        if buf[nl + 1 : end] < target:
            lo = mid + end + 1
        else:
            hi = start
    buf = fileio.read_at(fd, lo, hi - lo)
    pos = 0
    for line in buf.split(b"\n")[:-1]:
        if line >= target:
            return lo + pos
        pos += len(line) + 1
    return hi


def _lines_near(fd: int, layout: _Layout, at: int, span: int) -> tuple[list[bytes], list[bytes]]:
    """The whole lines of the sorted region within ``span`` bytes before, and from, ``at``.

    ``at`` is a line start (or the region's end).
    """
    lo, hi = max(layout.start, at - span), min(layout.end, at + span)
    before = fileio.read_at(fd, lo, at - lo).split(b"\n")[:-1] if at > lo else []
    if lo > layout.start:
        before = before[1:]  # the first piece may be the end of a longer line
    after = fileio.read_at(fd, at, hi - at).split(b"\n")[:-1] if hi > at else []
    return before, after  # (the last piece of a read is partial: left out)


def _ascends_near(fd: int, layout: _Layout, at: int) -> bool:
    """Whether the sorted region's lines ascend strictly within a few lines of offset ``at``."""
    before, after = _lines_near(fd, layout, at, _NEAR)
    return all(a < b for a, b in itertools.pairwise(before + after))


class KeyIndex:
    """The keys ever created in one namespace directory.

    Thread-safe (one lock guards the cached tail); one per namespace per
    Store handle. Safe across processes: appends and re-sorts hold the
    file's lock; readers parse only whole lines.
    """

    def __init__(self, path: str, fs: Tree) -> None:
        self.path, self.fs = path, fs
        self._ino = self._tail_pos = 0
        self._tail: set[bytes] = set()  # hex lines seen in the tail
        self._head = b""  # the first bytes of the file the tail was read from
        self.damaged = False  # a complete line that no writer could have written was read
        # every key, with their UTF-8, while the file has this signature
        self._every: tuple[tuple[int, int, int, int, bytes], list[str], list[bytes]] | None = None
        self._asked: tuple[tuple[int, int, int, int, bytes], int] | None = None  # a prefix
        self._lock = threading.RLock()
        forks.track(self)

    def after_fork_in_child(self) -> None:
        """In a forked child (:mod:`castore.forks`): a new lock; the tail read again."""
        self._lock, self._ino = threading.RLock(), 0  # a thread may have been reading it

    def _refresh_tail(self, fd: int, layout: _Layout, st: os.stat_result) -> None:
        if (
            st.st_ino != self._ino
            or layout.head != self._head  # a rewrite that got the parsed file's inode number
            or self._tail_pos < layout.end
            or st.st_size < self._tail_pos
        ):
            self._ino, self._tail_pos, self._tail = st.st_ino, layout.end, set()
            self._head = layout.head
        longest = 2 * max(TAIL_MAX_LINES * _MAX_LINE, layout.end // 8)  # re-sorted before
        if st.st_size - self._tail_pos > longest:  # no tail: a hole or junk, never read whole
            self.damaged = True
        elif st.st_size > self._tail_pos:
            buf = fileio.read_at(fd, self._tail_pos, st.st_size - self._tail_pos)
            complete = buf.rfind(b"\n") + 1  # a line without its newline is still being written
            lines = buf[:complete].split(b"\n")[:-1]
            # A writer that found a torn last line starts on a new line: one empty
            # line may follow a torn one; anything else invalid is damage, and so is
            # an unfinished last line that is not the start of a hex line.
            rest = buf[complete:]
            good = [line for line in lines if _valid(line)]
            blank = lines.count(b"")
            self.damaged |= len(good) + blank != len(lines) or bool(rest.translate(None, _HEX))
            # A writer lists a key once (it looks under the file's lock): a line twice
            # is damage, a flipped bit that turned one key's line into another's.
            self.damaged |= len(set(good)) < len(good) or not self._tail.isdisjoint(good)
            self._tail.update(good)
            self._tail_pos += complete

    def _scan(self, prefix_hex: bytes, exact: bool) -> set[bytes]:
        with self._lock:
            try:
                fd = self.fs.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return set()
            try:
                return self._scan_fd(fd, prefix_hex, exact)
            finally:
                os.close(fd)

    def _scan_fd(self, fd: int, prefix_hex: bytes, exact: bool) -> set[bytes]:
        """:meth:`_scan` of the file open on ``fd`` (the caller holds ``_lock``)."""
        st = os.fstat(fd)
        layout = _Layout(fd, st.st_size)
        self.damaged |= not layout.valid
        found: set[bytes] = set()
        first = pos = _first_at_or_after(fd, layout.start, layout.end, prefix_hex)
        previous = b""
        while pos < layout.end:
            buf = fileio.read_at(fd, pos, min(layout.end - pos, 1 << 16))
            lines = buf.split(b"\n")
            if len(lines) == 1:
                break
            for line in lines[:-1]:
                if not line.startswith(prefix_hex) or (exact and line != prefix_hex):
                    break
                self.damaged |= line <= previous  # the sorted region only ascends
                previous = line
                pos += len(line) + 1
                if _valid(line):
                    found.add(line)
                else:
                    self.damaged = True
            else:
                continue
            break
        # One damaged line may name another key (a flipped bit): it then breaks the
        # order next to where it stands, which is at the edges of what was read.
        if prefix_hex and not exact:  # a list's prefix: a whole list saw every line
            near = _ascends_near(fd, layout, first) and _ascends_near(fd, layout, pos)
            self.damaged |= not near
        self._refresh_tail(fd, layout, st)
        tail = (
            {prefix_hex} & self._tail
            if exact
            else {line for line in self._tail if line.startswith(prefix_hex)}
        )
        self.damaged |= not found.isdisjoint(tail)  # listed twice: see _refresh_tail
        return found | tail

    def around(self, prefix: str) -> list[str]:
        """The keys listed next to where ``prefix``'s keys would be (none listed: a check).

        One flipped bit may turn a key's line into another key's: the line
        then stands right beside the prefix's place, in the sorted region or,
        by value, in the tail.
        """
        target = _line(prefix)
        with self._lock:
            try:
                fd = self.fs.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return []
            try:
                layout = _Layout(fd, os.fstat(fd).st_size)
                at = _first_at_or_after(fd, layout.start, layout.end, target)
                before, after = _lines_near(fd, layout, at, 2 * _MAX_LINE + 2)
            finally:
                os.close(fd)
            lines = before[-1:] + after[:1]
            below = [x for x in self._tail if x < target]
            above = [x for x in self._tail if x > target]
        lines += [max(below)] if below else []
        lines += [min(above)] if above else []
        return [k for k in map(_decode, {x for x in lines if _valid(x)}) if k is not None]

    def __contains__(self, key: str) -> bool:
        return bool(self._scan(_line(key), exact=True))

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (byte-wise), in byte-wise order.

        A handle keeps the list of every key while the file's inode, size,
        times and first bytes are unchanged (a rewrite's new file may get
        the old one's inode number); it answers every list from it, and a
        prefix from it once the same file was asked for a prefix twice (a
        one-off prefix reads a few pages of the file instead).
        """
        sig = self._signature()
        every = self._every
        if sig is not None and every is not None and every[0] == sig:
            return _with_prefix(every[1], every[2], prefix) if prefix else list(every[1])
        if prefix and (sig is None or self._asked != (sig, 1)):
            self._asked = (sig, 1) if sig is not None else None
            found = sorted(self._scan(_line(prefix), exact=False))
            keys = [key for key in map(_decode, found) if key is not None]
            self.damaged |= len(keys) < len(found)
            return keys
        found = sorted(self._scan(b"", exact=False))
        keys = [key for key in map(_decode, found) if key is not None]
        self.damaged |= len(keys) < len(found)
        encoded = [key.encode("utf-8") for key in keys]
        if sig is not None:  # read after the signature: a later change shows in it
            self._every = (sig, keys, encoded)
        return _with_prefix(keys, encoded, prefix) if prefix else list(keys)

    def _signature(self) -> tuple[int, int, int, int, bytes] | None:
        try:
            fd = self.fs.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            head = fileio.read_at(fd, 0, _SIG_BYTES)
        finally:
            os.close(fd)
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, head)

    def add(self, key: str, namespace: str, *, durable: bool) -> None:
        """Append ``key`` (fdatasync when ``durable``); fsync the directory if new.

        Re-sorts the whole file when the tail has grown too long (module docstring).
        """
        with self._lock:
            self._add(key, namespace, durable=durable)

    def _add(self, key: str, namespace: str, *, durable: bool) -> None:
        line = _line(key) + b"\n"
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        with self.fs.open_locked(self.path, flags, unsynced=True) as fd:
            if self._scan_fd(fd, line[:-1], exact=True):
                return  # another writer listed it meanwhile: a key is listed once
            st = os.fstat(fd)
            size = st.st_size
            if size == 0:
                line = _header(namespace, 0) + line
            elif fileio.read_at(fd, size - 1, 1) != b"\n":
                line = b"\n" + line  # a torn last line stays alone on its line
            fileio.append(fd, line, durable=durable)
            layout = _Layout(fd, size + len(line))
            if durable and namesync.marked(st.st_mode):  # a new namespace (FORMAT.md §6)
                namesync.settle_namespace(self.fs, os.path.dirname(self.path), self.fs.root or "/")
                namesync.clear(fd, st.st_mode)
            tail, body = size + len(line) - layout.end, layout.end - layout.start
            if tail > TAIL_MAX_BYTES and (len(self._tail) >= TAIL_MAX_LINES or tail * 8 > body):
                self._rewrite(fd, namespace, {}, durable=durable)

    def remove(self, keys: set[str], *, durable: bool) -> None:
        """Rewrite the file, sorted, without ``keys`` (FileNotFoundError if it is missing)."""
        with self._lock, self.fs.open_locked(self.path, os.O_RDWR) as fd:
            namespace = namespace_of(self.path, self.fs) or ""
            self._rewrite(fd, namespace, dict.fromkeys(map(_line, keys), False), durable=durable)

    def rename_namespace(
        self,
        namespace: str,
        *,
        durable: bool,
        add: tuple[str, ...] = (),
        drop: tuple[str, ...] = (),
    ) -> None:
        """Rewrite the file, sorted, naming ``namespace``, ``add`` listed, ``drop`` not (§5)."""
        edit = dict.fromkeys(map(_line, add), True) | dict.fromkeys(map(_line, drop), False)
        with self._lock, self.fs.open_locked(self.path, os.O_RDWR | os.O_CREAT) as fd:
            self._rewrite(fd, namespace, edit, durable=durable)

    def _rewrite(self, fd: int, namespace: str, edit: dict[bytes, bool], *, durable: bool) -> None:
        """Replace the locked file by a sorted one, ``edit``'s lines listed (True) or not.

        A durable rewrite of a marked (or new) file settles the namespace's directories
        first: the new file is unmarked, and the mark is what tells a later durable write
        that they may not be durable yet (FORMAT.md §6, "Names").
        """
        st = os.fstat(fd)
        size = st.st_size
        if durable and (namesync.marked(st.st_mode) or not size):
            namesync.settle_namespace(self.fs, os.path.dirname(self.path), self.fs.root or "/")
        layout = _Layout(fd, size)
        data = fileio.read_at(fd, layout.start, size - layout.start)
        complete = data[: data.rfind(b"\n") + 1]
        listed = {x for x in complete.split(b"\n") if _valid(x)} | set(edit)
        lines = sorted(x for x in listed if edit.get(x, True))
        body = b"".join(x + b"\n" for x in lines)
        head_len = len(_header(namespace, 0))
        whole = _header(namespace, head_len + len(body)) + body
        self.fs.atomic_write(self.path, whole, durable=durable, unsynced=not durable)
        self._ino = 0  # re-read on next use


def _with_prefix(keys: list[str], encoded: list[bytes], prefix: str) -> list[str]:
    """The keys (sorted byte-wise, with their UTF-8) that start with ``prefix``."""
    want = prefix.encode("utf-8")
    start = end = bisect.bisect_left(encoded, want)
    while end < len(encoded) and encoded[end].startswith(want):
        end += 1
    return keys[start:end]


def namespace_of(keys_path: str, fs: Tree) -> str | None:
    """The namespace named by the first line of a ``KEYS`` file, or None."""
    try:
        head = fs.read_file(keys_path, len(_NS_PREFIX) + _MAX_LINE + 1)
    except FileNotFoundError:
        return None
    first = head[: head.find(b"\n") + 1]
    if not first.startswith(_NS_PREFIX) or not first.endswith(b"\n"):
        return None
    return _decode(first[len(_NS_PREFIX) : -1])
