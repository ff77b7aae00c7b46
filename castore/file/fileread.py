"""Reading the file backend: paths, the newest entry (cached), versions, history.

:class:`FileReader` holds everything that reads ref logs and indexes;
:class:`castore.filestore.FileBackend` adds the write protocol on top. See
docs/FORMAT.md for the bytes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from castore.backend import Current
from castore.errors import CorruptionError, FormatVersionError, NotFoundError, UnsafePathError
from castore.file import fileio, reflog, versionindex
from castore.file.blobindex import BlobIndex
from castore.file.blobs import BlobReader
from castore.file.damage import REPAIR_HINT, damage_windows, damaged_error, marker
from castore.file.formatfile import check_format, format_line, read_format
from castore.file.frames import FRAME_OVERHEAD, frame_at
from castore.file.graves import Graveyard
from castore.file.keyindex import KeyIndex, namespace_of
from castore.file.records import (
    KIND_BLOB,
    KIND_COMPACTED,
    KIND_ENTRY,
    Compaction,
    decode_compaction,
    decode_entry,
)
from castore.file.tree import UNCONFINED, Tree
from castore.keys import Ref, file_id
from castore.records import OP_DAMAGED, Entry
from castore.results import rfc3339

__all__ = [
    "CACHE_MAX_ENTRIES",
    "Current",
    "FileReader",
]

CACHE_MAX_ENTRIES = 65536  # per-handle read cache; cleared wholesale when full


class FileReader:
    """Reads ref logs and blobs in one directory (docs/FORMAT.md).

    Safe for many processes (readers take no lock) and threads (guarded caches).

    Args:
        root: the store directory, created with its FORMAT file if absent.
        durable: fsync so that a returned write survives a power loss.
        lock_timeout: seconds to wait for a ref's lock.

    Raises:
        FormatVersionError: the directory holds another format, or is a
            non-empty directory that is not a castore store.
    """

    def __init__(self, root: str, *, durable: bool, lock_timeout: float) -> None:
        self.root = root
        self.durable = durable
        self.lock_timeout = lock_timeout
        self.refs = os.path.join(root, "refs")
        self.fs = UNCONFINED
        self._open_format()
        self._blobs = BlobIndex(root, self.fs)
        self.blob_reader = BlobReader(self.fs, self.refs, self._blobs)
        self._keys: dict[str, KeyIndex] = {}
        self._graves: dict[str, Graveyard] = {}
        self._cache: dict[str, tuple[tuple[int, int, int, int], Current]] = {}
        self._paths: dict[Ref, str] = {}
        self._dirs: set[str] = set()

    def close(self) -> None:
        """Drop cached state; close the cached directory descriptors (see ``Store.close``)."""
        self._cache.clear()
        self._keys.clear()
        self._graves.clear()
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

    def _ns_dir(self, scope: str, namespace: str) -> str:
        return os.path.join(self.refs, scope, file_id(namespace))

    def log_path(self, ref: Ref) -> str:
        """The ref log file of ``ref`` (which may not exist yet)."""
        path = self._paths.get(ref)
        if path is None:
            if len(self._paths) >= CACHE_MAX_ENTRIES:
                self._paths.clear()
            path = os.path.join(self._ns_dir(ref.scope, ref.namespace), file_id(ref.key) + ".log")
            self._paths[ref] = path
        return path

    def rel(self, path: str) -> str:
        """A log path relative to ``refs/`` (as stored in blob locations)."""
        return path[len(self.refs) + 1 :]

    def key_index(self, scope: str, namespace: str) -> KeyIndex:
        """The key index of a namespace (cached per handle)."""
        nsdir = self._ns_dir(scope, namespace)
        index = self._keys.get(nsdir)
        if index is None:
            index = self._keys[nsdir] = KeyIndex(os.path.join(nsdir, "KEYS"), self.fs)
        return index

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

    def graveyard(self, scope: str, namespace: str) -> Graveyard:
        """The graveyard of a namespace (last versions of removed keys)."""
        nsdir = self._ns_dir(scope, namespace)
        graves = self._graves.get(nsdir)
        if graves is None:
            graves = self._graves[nsdir] = Graveyard(os.path.join(nsdir, "GRAVES"), self.fs)
        return graves

    def exists(self, ref: Ref) -> bool:
        """True if ``ref``'s log exists (it may hold only a tombstone)."""
        return self.fs.exists(self.log_path(ref))

    def keys(self, scope: str, namespace: str, prefix: str, *, verify: bool = False) -> list[str]:
        """Keys ever created in a namespace that start with ``prefix``, byte-wise sorted.

        The key index answers; when it shows damage, or with ``verify`` (the
        caller found it inconsistent), the keys named by the logs' headers
        are added, so damage to ``KEYS`` never hides a key (FORMAT.md §5).
        """
        index = self.key_index(scope, namespace)
        found = index.keys(prefix)
        if not (verify or index.damaged):
            return found
        from_logs = self._keys_from_logs(self._ns_dir(scope, namespace), namespace, prefix)
        return sorted(set(found) | from_logs, key=lambda k: k.encode("utf-8"))

    def _keys_from_logs(self, nsdir: str, namespace: str, prefix: str) -> set[str]:
        """Keys named by the header frames of a namespace's logs (a full directory read)."""
        try:
            names = self.fs.listdir(nsdir)
        except FileNotFoundError:
            return set()
        out = set()
        for name in names:
            if not name.endswith(".log"):
                continue
            try:
                fd = self.fs.open(os.path.join(nsdir, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                head = reflog.header_of(fd)
            finally:
                os.close(fd)
            if (
                head is not None
                and head.namespace == namespace
                and file_id(head.key) + ".log" == name
                and head.key.startswith(prefix)
            ):
                out.add(head.key)
        return out

    def namespaces(self, scope: str) -> list[str]:
        """Namespaces of ``scope`` that hold at least one key, sorted byte-wise."""
        try:
            names = self.fs.listdir(os.path.join(self.refs, scope))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            namespace = namespace_of(os.path.join(self.refs, scope, name, "KEYS"), self.fs)
            if namespace is not None and file_id(namespace) == name:
                found.append(namespace)
        return sorted(found, key=lambda n: n.encode("utf-8"))

    def iter_versions(self, ref: Ref) -> Iterator[tuple[Entry, bytes | None]]:
        """Every entry of a ref, oldest first, with its verified value (None for tombstones).

        Raises:
            CorruptionError: a value fails verification.
        """
        try:
            fd = self.fs.open(self.log_path(ref), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            log = reflog.scan(fd)[1]
            if log.damage:
                raise damaged_error(self.log_path(ref), *log.damage[0], str(ref))
            frames = log.frames
            blobs = {f.start: f.payload for f in frames if f.kind == KIND_BLOB}
            for frame in frames:
                if frame.kind != KIND_ENTRY:
                    continue
                entry = decode_entry(frame.payload)
                if entry.op == OP_DAMAGED:
                    yield entry, None  # versions a repair recorded as lost: no value
                    continue
                own = blobs.get(entry.blob.offset) if entry.blob and not entry.blob.log else None
                yield entry, self.blob_reader.value_of(ref, entry, own, fd)
        finally:
            os.close(fd)

    def iter_newest_first(self, ref: Ref) -> Iterator[Entry]:
        """Every entry of a ref, newest first, reading backwards a page at a time.

        Pages grow (1, 16, 256 entries), so many refs walked side by side (an
        audit merge) hold little memory each until they are actually consumed.
        """
        newest = self.current(ref).entry
        high = newest.version if newest is not None else 0
        size = 1
        while high > 0:
            page = self.history(ref, high + 1, size)
            yield from page
            if not page:
                return
            high = page[-1].version - 1
            size = min(size * 16, 256)

    # -- reading ------------------------------------------------------------------

    def current(self, ref: Ref) -> Current:
        """Newest entry and value of ``ref``; served from cache when the log is unchanged."""
        path = self.log_path(ref)
        try:
            st = self.fs.stat(path)
        except FileNotFoundError:
            return Current(None, None)
        sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        fd = self.fs.open(path, os.O_RDONLY)
        try:
            tail = reflog.read_tail(fd, st.st_size)
            if tail is None or tail.entry is None:
                # Torn, still being written, or no entry yet: wait for the writer, then
                # re-read, and make sure nothing hides a newer version.
                with fileio.locked(fd, path, shared=True, timeout=self.lock_timeout):
                    st = os.fstat(fd)
                    sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    tail = self.settled_tail(fd, path, str(ref), st.st_size)
            value = self.blob_reader.value_of(ref, tail.entry, tail.blob, fd)
            current = Current(tail.entry, value, tail.entry_start)
        finally:
            os.close(fd)
        if tail.valid_end == sig[1]:
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[path] = (sig, current)
        return current

    def settled_tail(self, fd: int, path: str, what: str, size: int = -1) -> reflog.Tail:
        """The newest intact entry of the log on ``fd``, once nothing can hide a newer one.

        The common case is one read of the tail. A tail that is not an entry
        costs a scan: damage after the newest intact entry, or a version
        index that records versions the log no longer holds (acknowledged
        bytes were cut off), means the newest version is unknown.

        Raises:
            CorruptionError: the newest version is unknown (FORMAT.md §7).
        """
        size = os.fstat(fd).st_size if size < 0 else size
        return self.settle(fd, path, what, reflog.read_tail(fd, size))

    def settle(self, fd: int, path: str, what: str, tail: reflog.Tail | None) -> reflog.Tail:
        """:meth:`settled_tail` given the tail already read (None: not an intact frame).

        Raises:
            CorruptionError: the newest version is unknown (FORMAT.md §7).
        """
        if tail is not None and tail.entry is not None:
            return tail
        if tail is None:
            tail, log = reflog.scan(fd)
            bad = reflog.damage_after(log, tail)
            if bad is not None:
                raise damaged_error(path, *bad, what)
        newest = tail.entry.version if tail.entry is not None else 0
        cut = self._cut_evidence(path, fd, newest)
        if cut:
            raise CorruptionError(
                f"{what}: {path} no longer holds versions up to {cut}, which its version "
                f"index records (acknowledged bytes were cut off); {REPAIR_HINT}"
            )
        return tail

    def _cut_evidence(self, path: str, fd: int, newest: int) -> int:
        """The highest version the version index records above ``newest`` (0 if none).

        The index is built from the log only, so such a version was in the log;
        versions a compaction dropped (its ``C`` frame) do not count.
        """
        try:
            data = self.fs.read_file(versionindex.vix_path(path))
        except (FileNotFoundError, UnsafePathError):
            return 0
        top = versionindex.highest_recorded(data)
        if top <= newest:
            return 0
        done = self.compaction_of(fd)
        if done is not None and top <= max((high for _, high in done.versions), default=0):
            return 0
        return top

    def _vix(self, ref: Ref, fd: int, want: int) -> int:
        """The version index of ``ref``'s log covering version ``want``; -1 if unusable."""
        vix = versionindex.vix_path(self.log_path(ref))
        try:
            return versionindex.open_caught_up(self.fs, vix, fd, want)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise  # a read-only store falls back to scans; real I/O errors surface
        try:
            return self.fs.open(vix, os.O_RDONLY)
        except FileNotFoundError:
            return -1

    def _entry_at(self, ref: Ref, fd: int, version: int) -> Entry | None:
        """Entry of ``version`` in the log open on ``fd``: via the version index, else a scan.

        Raises:
            NotFoundError: the version was dropped by compaction (names the policy).
        """
        vfd = self._vix(ref, fd, version)
        offset = None
        if vfd >= 0:
            try:
                offset = versionindex.lookup(vfd, version)
            finally:
                os.close(vfd)
        # Markers (compacted, absent) come from derived data: the scan below confirms them.
        if offset is not None and offset not in (versionindex.COMPACTED, versionindex.ABSENT):
            found = reflog.entry_at(fd, offset)
            if found is not None and found[0].version == version:
                return found[0]
        log = reflog.scan(fd)[1]
        for frame in log.frames:
            if frame.kind == KIND_ENTRY:
                entry = decode_entry(frame.payload)
                if entry.first <= version <= entry.version:
                    return entry  # a damaged range raises when its value is read
            elif frame.kind == KIND_COMPACTED:
                done = decode_compaction(frame.payload)
                if any(low <= version <= high for low, high in done.versions):
                    raise NotFoundError(
                        f"{ref} version {version} was compacted ({done.policy}, "
                        f"{rfc3339(done.time_ns)})"
                    )
        for window in damage_windows(log):
            if window.low <= version and (window.high is None or version <= window.high):
                where = f"{ref} version {version}"
                raise damaged_error(self.log_path(ref), window.start, window.end, where)
        return None

    def version(self, ref: Ref, version: int) -> tuple[Entry | None, bytes | None]:
        """The entry of ``version`` and its value (None for a tombstone); (None, None) if absent.

        Raises:
            NotFoundError: the version was dropped by compaction.
            CorruptionError: the value fails verification.
        """
        try:
            fd = self.fs.open(self.log_path(ref), os.O_RDONLY)
        except FileNotFoundError:
            fd = -1
        try:
            entry = self._entry_at(ref, fd, version) if fd >= 0 else None
            if entry is None and version <= self.graveyard(ref.scope, ref.namespace).version_of(
                ref.key
            ):
                raise NotFoundError(
                    f"{ref} version {version} was compacted (the key was removed as deleted)"
                )
            return entry, self.blob_reader.value_of(ref, entry, None, fd)
        finally:
            if fd >= 0:
                os.close(fd)

    def history(self, ref: Ref, before: int, limit: int) -> list[Entry]:
        """Entries with version < ``before``, newest first, at most ``limit`` (0 = all).

        Compacted versions are skipped. Cost is proportional to the page, not
        to the length of the history, once the version index has caught up
        with the log (FORMAT.md §5); otherwise the log is scanned.
        """
        path = self.log_path(ref)
        try:
            fd = self.fs.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        vfd = -1
        try:
            newest = self.settled_tail(fd, path, str(ref)).entry  # current() reads the value
            if newest is None:
                return []
            vfd = self._vix(ref, fd, min(before - 1, newest.version))
            if vfd < 0:
                return self._history_by_scan(fd, before, limit)
            out: list[Entry] = []
            high = min(before - 1, newest.version)
            compacted: set[int] | None = None
            while high >= 1 and not (limit and len(out) >= limit):
                low = max(1, high - max(limit, 64) + 1)
                offsets = versionindex.lookup_range(vfd, low, high)
                for version in range(high, low - 1, -1):
                    offset = offsets.get(version)
                    if offset == versionindex.COMPACTED:
                        if compacted is None:
                            compacted = self._compacted(fd)
                        if version in compacted:  # confirmed by the log's C frame
                            continue
                        return self._history_by_scan(fd, before, limit)
                    if offset == versionindex.ABSENT:  # rare (imports): let the log decide
                        return self._history_by_scan(fd, before, limit)
                    found = reflog.entry_at(fd, offset) if offset is not None else None
                    if found is None or found[0].version != version:
                        return self._history_by_scan(fd, before, limit)
                    out.append(found[0])
                    if limit and len(out) >= limit:
                        break
                high = low - 1
            return out
        finally:
            os.close(fd)
            if vfd >= 0:
                os.close(vfd)

    @staticmethod
    def compaction_of(fd: int) -> Compaction | None:
        """The log's compaction frame (it follows the header), if it has an intact one."""
        head = fileio.read_at(fd, 0, reflog.TAIL_READ_BYTES)
        header = frame_at(head, 0)
        if header is None:
            return None
        frame = frame_at(head, header.end)
        if frame is None:  # longer than the first read
            length = int.from_bytes(head[header.end : header.end + 4], "little")
            frame = frame_at(fileio.read_at(fd, header.end, length + FRAME_OVERHEAD), 0, header.end)
        if frame is None or frame.kind != KIND_COMPACTED:
            return None
        return decode_compaction(frame.payload)

    def _compacted(self, fd: int) -> set[int]:
        """Versions named by the log's compaction frame."""
        done = self.compaction_of(fd)
        if done is None:
            return set()
        return {v for low, high in done.versions for v in range(low, high + 1)}

    def _history_by_scan(self, fd: int, before: int, limit: int) -> list[Entry]:
        """History from a full scan; a damaged range becomes an ``OP_DAMAGED`` marker."""
        log = reflog.scan(fd)[1]
        entries = [decode_entry(f.payload) for f in log.frames if f.kind == KIND_ENTRY]
        for window in damage_windows(log):
            if window.high is not None:
                size = window.end - window.start
                reason = f"damaged bytes at offset {window.start} ({size} bytes); {REPAIR_HINT}"
                entries.append(marker(window.low, window.high, 0, reason))
        entries.sort(key=lambda e: e.version)
        newest_first = [e for e in reversed(entries) if e.version < before]
        return newest_first[:limit] if limit else newest_first
