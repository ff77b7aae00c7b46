"""A store's namespaces: each one's ``KEYS`` and ``GRAVES``, and the keys they list.

:class:`Namespaces` keeps one :class:`~castore.file.keyindex.KeyIndex` and one
:class:`~castore.file.graves.Graveyard` per namespace directory (cached per handle) and
answers which keys and namespaces exist. Damage to ``KEYS`` never hides a key: the
logs' headers are read instead (docs/FORMAT.md §5).
"""

from __future__ import annotations

import contextlib
import os

from castore.backend import Current
from castore.errors import CastoreError, CorruptionError, NotFoundError
from castore.file import fileio, logread, versionindex
from castore.file.behind import refuse_behind_state
from castore.file.damage import REPAIR_HINT, gone_error
from castore.file.graves import Graveyard
from castore.file.keyindex import KeyIndex, namespace_of
from castore.file.layout import Layout
from castore.file.logkeys import keys_from_logs, keys_lost, namespace_from_logs
from castore.file.putback import newest_in, refuse_put_back
from castore.file.statefile import StateIndex
from castore.file.staterecords import STATE_NAME, Known
from castore.keys import Ref, file_id
from castore.records import Entry

__all__ = ["NAMESPACES_CACHED", "STATES_KEPT", "Namespaces"]

STATES_KEPT = 256  # namespaces whose STATE (and its two descriptors) a handle keeps, at most
# namespaces whose KEYS and GRAVES (about 2 KB of memory each) a handle keeps, at most: past
# that it forgets them all and starts over (a server's handle asked for new namespaces for
# days grew without end: a get of a namespace that does not exist kept one too)
NAMESPACES_CACHED = 4096


class Namespaces:
    """The per-namespace files of one store directory (cached per handle)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._keys: dict[str, KeyIndex] = {}
        self._graves: dict[tuple[str, str], Graveyard] = {}
        self._states: dict[tuple[str, str], StateIndex] = {}

    def close(self) -> None:
        """Forget the cached files."""
        self._keys.clear()
        self._graves.clear()
        for state in self._states.values():
            state.close()
        self._states.clear()

    def key_index(self, scope: str, namespace: str) -> KeyIndex:
        """The key index of a namespace."""
        nsdir = self.layout.ns_dir(scope, namespace)
        index = self._keys.get(nsdir)
        if index is None:
            if len(self._keys) >= NAMESPACES_CACHED:
                self._keys = {}
            index = self._keys[nsdir] = KeyIndex(os.path.join(nsdir, "KEYS"), self.layout.fs)
        return index

    def list_key(self, ref: Ref, *, durable: bool) -> bool:
        """List ``ref``'s key in its namespace's ``KEYS`` unless it is; True if it was not.

        A ``KEYS`` lost or emptied (damage) in a namespace with logs gets the keys
        their headers name with it, in one atomic rewrite: a write must not leave it
        listing its own key alone, nor a kill or a reader see it half listed (§5).
        """
        index = self.key_index(ref.scope, ref.namespace)
        if ref.key in index:
            return False
        nsdir = self.layout.ns_dir(ref.scope, ref.namespace)
        if keys_lost(self.layout.fs, nsdir):
            logged = keys_from_logs(self.layout.fs, nsdir, ref.namespace, "") - {ref.key}
            if logged:
                every = (*sorted(logged), ref.key)
                index.rename_namespace(ref.namespace, durable=durable, add=every)
                return True
        index.add(ref.key, ref.namespace, durable=durable)
        return True

    def unlist(self, scope: str, namespace: str, keys: set[str], *, durable: bool) -> None:
        """Take ``keys`` out of their namespace's ``KEYS`` (compaction removed them, §8).

        A ``KEYS`` lost or emptied gets the other keys its logs' headers name, and
        the namespace, in the same rewrite: as after a write (:meth:`list_key`), it
        must not be left naming nothing, which no later write would mend (§5).
        """
        index = self.key_index(scope, namespace)
        nsdir = self.layout.ns_dir(scope, namespace)
        if keys_lost(self.layout.fs, nsdir):
            logged = tuple(sorted(keys_from_logs(self.layout.fs, nsdir, namespace, "") - keys))
            drop = tuple(sorted(keys))
            index.rename_namespace(namespace, durable=durable, add=logged, drop=drop)
        else:
            with contextlib.suppress(FileNotFoundError):  # lost since: the next write refills it
                index.remove(keys, durable=durable)

    def graveyard(self, scope: str, namespace: str) -> Graveyard:
        """The graveyard of a namespace (last versions of removed keys)."""
        graves = self._graves.get((scope, namespace))  # every read of a tail: no hashing
        if graves is None:
            if len(self._graves) >= NAMESPACES_CACHED:  # what it read of GRAVES is forgotten
                self._graves = {}
            path = os.path.join(self.layout.ns_dir(scope, namespace), "GRAVES")
            graves = self._graves[scope, namespace] = Graveyard(path, self.layout.fs)
        return graves

    def state(self, scope: str, namespace: str) -> StateIndex:
        """The state index of a namespace (each key's newest version, for list).

        A handle keeps those of at most :data:`STATES_KEPT` namespaces (1/32 of the soft
        limit of descriptors, :func:`~castore.file.fileio.descriptor_share`), each with its
        ``STATE`` open: past that, it closes them all and starts over (a server's handle
        would run out of descriptors). One still in use elsewhere reopens its file.
        """
        state = self._states.get((scope, namespace))  # every write: no hashing
        if state is None:
            if len(self._states) >= fileio.descriptor_share(32, STATES_KEPT):  # 2 fds each
                states, self._states = self._states, {}
                for old in states.values():
                    old.close()
            path = os.path.join(self.layout.ns_dir(scope, namespace), STATE_NAME)
            state = StateIndex(path, self.layout.fs, scope, namespace)
            self._states[scope, namespace] = state
        return state

    def known(self, scope: str, namespace: str) -> Known:
        """The newest version of each key a namespace's ``STATE`` knows (absent: read the log).

        An untrusted ``STATE`` (damaged, from another boot) is replaced with
        an empty one, a missing one created (in an existing namespace), and
        one with many appended records rewritten as a snapshot. Not in a
        namespace without ``KEYS``: nothing was written there, or ``KEYS`` was
        lost, and then ``STATE``'s rows are what tells ``check`` (checkkeys.py).
        """
        state = self.state(scope, namespace)
        known = state.known()
        if known is None:
            if keys_lost(self.layout.fs, self.layout.ns_dir(scope, namespace)):
                return {}
            state.reset()
            state.create()
            return {}
        if state.crowded():
            state.snapshot()
        return known

    def keys(self, scope: str, namespace: str, prefix: str, *, verify: bool = False) -> list[str]:
        """Keys ever created in a namespace that start with ``prefix``, byte-wise sorted.

        The key index answers; when it shows damage, or with ``verify`` (the
        caller found it inconsistent), the keys named by the logs' headers
        are added, so damage to ``KEYS`` never hides a key (FORMAT.md §5).
        """
        index = self.key_index(scope, namespace)
        found = index.keys(prefix)
        nsdir = self.layout.ns_dir(scope, namespace)
        if not found:
            self.layout.not_gone(nsdir)
        lost = not found and (
            keys_lost(self.layout.fs, nsdir) or self._unlogged(nsdir, index, prefix)
        )
        if not (verify or index.damaged or lost):
            return found
        from_logs = keys_from_logs(self.layout.fs, nsdir, namespace, prefix)
        return sorted(set(found) | from_logs, key=lambda k: k.encode("utf-8"))

    def _unlogged(self, nsdir: str, index: KeyIndex, prefix: str) -> bool:
        """Whether a key ``KEYS`` lists beside an empty prefix has no log.

        Damage (a line turned into another key's), or a first write between its
        line and its log: then the caller reads the directory once too many.
        """
        fs = self.layout.fs
        return bool(prefix) and any(
            not fs.exists(os.path.join(nsdir, file_id(key) + ".log"))
            for key in index.around(prefix)
        )

    def not_lost(self, ref: Ref, path: str, seen: tuple[int, int] | None = None) -> None:
        """For a key whose log (``path``) is missing (``seen`` None) or holds no entry.

        ``seen``: the inode and size of the log read without an entry.

        Raises:
            CorruptionError: the log's version index outlived it, or ``STATE``
                records a version of the key, above its grave, and the log is
                still as it was read (FORMAT.md §7). The grave is read after the
                log's ``stat``: compaction records a removed key there before it
                removes (or gc rewrites) the log.
        """
        self.layout.not_gone(path)
        fs = self.layout.fs
        by_index = 0
        if seen is None and fs.exists(versionindex.vix_path(path)):  # one stat, missing key
            by_index = versionindex.lost_log(fs, path, 0)
        state = self.state(ref.scope, ref.namespace)
        by_state = state.recorded().get(ref.key, 0)
        if not by_index and not by_state:
            return
        try:
            st = fs.stat(path)
            now: tuple[int, int] | None = (st.st_ino, st.st_size)
        except FileNotFoundError:
            now = None
        if now != seen:
            return  # changed since it was read (a writer, a rewrite)
        graves, known = self.graveyard(ref.scope, ref.namespace), state.known() or {}
        # An entry's offset in the index, or STATE's last record of a live version (a delete
        # appends P first), is a life of the key: its own grave covers it, never a floor.
        own = graves.recorded(ref.key)
        if by_state <= (own if known.get(ref.key) is not None else graves.version_of(ref.key)):
            by_state = 0
        if by_index > own and by_index >= by_state:
            raise CorruptionError(
                f"{ref}: {path} is missing, but its version index records versions "
                f"up to {by_index} (the log was lost); {REPAIR_HINT}"
            )
        if by_state:
            raise gone_error(str(ref), path, by_state, missing=seen is None)

    def not_below(
        self, ref: Ref, path: str, known: Current | None, tail: Entry | None, end: int, fd: int = -1
    ) -> None:
        """Refuse a log that ends below the version this handle last read or wrote there.

        ``known``: the log's newest entry as this handle's read cache holds it;
        ``tail``: the log's newest entry now (None: missing or without an
        entry); ``end``: where its intact frames end. A log's newest version
        only grows (rewrites keep it; a key compaction removed is in its grave
        and lives again above it), so a lower one means acknowledged bytes
        were cut off (FORMAT.md §7, "A cut a handle saw"). The evidence is
        recorded in the log's version index, for every other reader, writer
        and ``check``; where it cannot be written, this handle still refuses.
        So is an older copy (:meth:`not_put_back`, confirmed on ``fd``, the log
        read; -1: the caller holds its lock): every reader of a tail calls this.

        Raises:
            CorruptionError: the log ends below ``known`` or ``STATE``, or is an older copy.
        """
        self.not_put_back(ref, path, tail, fd)
        if known is None or known.entry is None:
            return
        top, newest = known.entry.version, tail.version if tail is not None else 0
        if top <= newest:
            return
        if not newest:  # removed by compaction? (its grave is recorded first)
            fd = -1
            with contextlib.suppress(OSError, CastoreError):
                fd = self.layout.fs.open(path, os.O_RDONLY)
            try:
                if top <= self.removed_at(ref, fd, own=True):  # a life it saw: no floor
                    return
            finally:
                if fd >= 0:
                    os.close(fd)
        with contextlib.suppress(OSError, CorruptionError):  # read-only, or a planted index
            at = max(known.entry_start, end, versionindex.ABSENT + 1)
            versionindex.record_cut(self.layout.fs, versionindex.vix_path(path), top, at)
        now = f"ends with version {newest}" if newest else "holds no version"
        if not self.layout.fs.exists(path):
            now = "is missing"
        raise CorruptionError(
            f"{ref}: {path} {now}, but this handle read or wrote version {top} there "
            f"(acknowledged bytes were cut off); {REPAIR_HINT}"
        )

    def not_put_back(self, ref: Ref, path: str, newest: Entry | None, fd: int = -1) -> None:
        """Refuse an older copy of a log ending with ``newest`` (:mod:`putback`, :mod:`behind`).

        At or below its key's grave, or below the version ``STATE`` records;
        ``fd``: the log read, to confirm evidence on (-1: the caller holds its lock).
        """
        graves, wait = self.graveyard(ref.scope, ref.namespace), self.layout.lock_timeout
        refuse_put_back(graves, self.layout.fs, ref, path, newest, fd, wait)
        state = self.state(ref.scope, ref.namespace)
        refuse_behind_state(state, graves, self.layout.fs, ref, path, newest, fd, wait)

    def not_put_back_in(self, ref: Ref, path: str, fd: int, version: int) -> None:
        """:meth:`not_put_back` for the log open on ``fd``, if ``version`` read there is old.

        For reads that do not read the log's tail (a version, a history page): only
        one at or below the key's grave or below what ``STATE`` records (0: absent) does.
        """
        grave = self.graveyard(ref.scope, ref.namespace).recorded(ref.key)
        top = self.state(ref.scope, ref.namespace).recorded().get(ref.key, 0)
        if (grave and version <= grave) or version < top or not version:  # 0: absent
            self.not_put_back(ref, path, newest_in(fd), fd)

    def judged(self, ref: Ref, path: str, fd: int) -> bool:
        """:meth:`not_put_back` on the log open on ``fd``; True: holds while the file is unchanged.

        False where a grave names the key and the log does not end above it (its
        tombstone, which a ``.vix`` that gains its mark makes a copy): judged again.
        """
        grave = self.graveyard(ref.scope, ref.namespace).recorded(ref.key)
        if not grave:
            return True
        newest = newest_in(fd)
        self.not_put_back(ref, path, newest, fd)
        return newest is not None and newest.version > grave

    def not_compacted(self, ref: Ref, version: int) -> None:
        """Raise NotFoundError if ``version``, absent, went with its key's removed life."""
        if version <= self.removed_at(ref, -1, own=True):  # not a floor: where keys start
            raise NotFoundError(
                f"{ref} version {version} was compacted (the key was removed as deleted)"
            )

    def removed_at(self, ref: Ref, fd: int, *, own: bool = False) -> int:
        """The version a key without entries continues after: its removed life's last, or 0.

        Its grave, or the ``C`` frame of its log open on ``fd`` (-1: none), which
        still names the versions when ``GRAVES`` was lost; ``own``: no repair's floor.

        Raises:
            CorruptionError: its ``GRAVES`` record is damaged beyond its twin.
        """
        graves = self.graveyard(ref.scope, ref.namespace)
        top = graves.version_of(ref.key)  # raises for damage, whichever is asked
        done = logread.compaction_of(fd) if fd >= 0 else None
        top = graves.recorded(ref.key) if own else top
        return max([top, *(high for _, high in done.versions)] if done else [top])

    def not_lost_in(self, ref: Ref, path: str, fd: int) -> None:
        """:meth:`not_lost` for the log open on ``fd`` if it holds no entry (else nothing)."""
        st = os.fstat(fd)
        tail = logread.read_tail(fd, st.st_size)
        if tail is not None and tail.entry is None:
            self.not_lost(ref, path, (st.st_ino, st.st_size))

    def drop_stale_index(self, ref: Ref, path: str) -> None:
        """Remove a new log's ``.vix`` if it records only versions the key's own grave covers.

        Such an index outlived a removed life (a reader rebuilt it from the
        removed log, or compaction stopped before removing it): it is no
        evidence of lost versions. One that records more is (FORMAT.md §7).
        """
        vix = versionindex.vix_path(path)
        try:
            data = self.layout.fs.read_file(vix)
        except FileNotFoundError:
            return
        grave = self.graveyard(ref.scope, ref.namespace).recorded(ref.key)  # not a floor
        if versionindex.highest_recorded(data) <= grave:
            with contextlib.suppress(FileNotFoundError):
                self.layout.fs.unlink(vix)

    def removed(self, scope: str, namespace: str) -> dict[str, int]:
        """Each key compaction removed -> its last version: ``GRAVES``, and logs left for gc.

        Such a log holds its header, a ``C`` frame naming every version and no
        entry; it still says so when ``GRAVES`` was lost (a full directory
        read, for ``export``).
        """
        found = self._removed_logs(scope, namespace)
        for key, top in self.graveyard(scope, namespace).records().items():
            found[key] = max(top, found.get(key, 0))
        return found

    def _removed_logs(self, scope: str, namespace: str) -> dict[str, int]:
        nsdir = self.layout.ns_dir(scope, namespace)
        listed = {file_id(key) + ".log" for key in self.keys(scope, namespace, "")}
        fs, out = self.layout.fs, {}
        names = fs.listdir(nsdir) if fs.isdir(nsdir) else []
        for name in (n for n in names if n.endswith(".log") and n not in listed):
            with contextlib.suppress(OSError, CastoreError):
                fd = fs.open(os.path.join(nsdir, name), os.O_RDONLY)
                try:
                    head, done = logread.header_of(fd), logread.compaction_of(fd)
                    tail = logread.read_tail(fd, os.fstat(fd).st_size) if done else None
                finally:
                    os.close(fd)
                if done is None or head is None or (tail is not None and tail.entry is not None):
                    continue  # not a log compaction emptied, or the key lives again
                if file_id(head.key) + ".log" == name and head.namespace == namespace:
                    out[head.key] = max((high for _, high in done.versions), default=0)
        return out

    def namespaces(self, scope: str) -> list[str]:
        """Namespaces of ``scope`` that hold at least one key, sorted byte-wise."""
        scope_dir = os.path.join(self.layout.refs, scope)
        try:
            names = self.layout.fs.listdir(scope_dir)
        except FileNotFoundError:
            self.layout.not_gone(scope_dir)
            return []
        found = []
        for name in names:
            nsdir = os.path.join(scope_dir, name)
            namespace = namespace_of(os.path.join(nsdir, "KEYS"), self.layout.fs)
            if namespace is None or file_id(namespace) != name:  # damage never hides one
                namespace = namespace_from_logs(self.layout.fs, nsdir)
            if namespace is not None and file_id(namespace) == name:
                found.append(namespace)
        return sorted(found, key=lambda n: n.encode("utf-8"))
