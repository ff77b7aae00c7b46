"""Import a Dagu dag-state directory (``v1/<scope>/<hex ns>/<hex key>.json``) into castore.

Each Dagu record becomes one castore version with Dagu's version number,
hash (verified by re-normalizing the value and re-hashing it), created and
updated times and ``updated_by`` audit fields, so workflows that pass
``expected_version`` keep working after the move. The source is only read.
Files that cannot be imported are reported with a reason, never guessed at.

The source is treated as hostile. Only regular files are read: an entry is
typed with ``lstat`` before it is opened, opened with ``O_NOFOLLOW |
O_NONBLOCK`` (so a FIFO swapped in meanwhile cannot block the import) and
typed again with ``fstat``. Symbolic links, to files or to directories, are
never followed, so nothing outside the source directory is read. A record
file over :data:`MAX_RECORD_BYTES` is skipped without being read, and no
more than that is ever read of one file: memory holds one record at a time.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import Final, NamedTuple

from castore import codec, exits
from castore.backend import Decide, LogView, NewVersion
from castore.dagurecord import decode_record
from castore.errors import (
    CastoreError,
    ConflictError,
    CorruptionError,
    InvalidValueError,
    NotFoundError,
)
from castore.identity import check_audit
from castore.keys import SCOPES, Ref, validate_key, validate_namespace
from castore.records import OP_SET, Audit, Entry
from castore.results import PlainResult
from castore.store import Store, check_store

__all__ = ["MAX_RECORD_BYTES", "DaguImport", "import_dagu"]

# One record file: the value counts against MAX_VALUE_BYTES on its raw bytes
# (codec.normalize_json), the same again covers the other fields (names,
# hash, times, updated_by) and 64 KiB the JSON around them: 2 MiB + 64 KiB.
MAX_RECORD_BYTES: Final = 2 * codec.MAX_VALUE_BYTES + (64 << 10)

_SYMLINK = "symbolic link, not followed"
_TEMPORARY = "temporary file left by an interrupted Dagu write"
_NOT_A_RECORD = "not a Dagu state record (*.json)"
_KEY_EXISTS = "castore holds this record's version"
_WRITTEN_ON = "castore wrote on past this record's version, which compaction dropped since"
_NOT_DAGUS_NAME = "not a file name Dagu writes (its get never reads it)"
# Skips that lose nothing: every other skip is a record castore could not import.
_HARMLESS: Final = frozenset({_TEMPORARY, _NOT_A_RECORD, _KEY_EXISTS, _WRITTEN_ON})
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {
    stat.S_IFDIR: "directory",
    stat.S_IFIFO: "named pipe",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


class DaguImport(PlainResult, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """The outcome for one file: imported (with the ref and version) or skipped (with why)."""

    file: str
    status: str
    reason: str = ""
    scope: str = ""
    namespace: str = ""
    key: str = ""
    version: int = 0

    @property
    def problem(self) -> bool:
        """True for a skipped record that was not imported (corrupt, unreadable, a link...).

        Not for a temporary file, a file that is no record, a name Dagu never
        writes (uppercase hex, not hex, not UTF-8), or a key castore already has.
        """
        return self.status == "skipped" and not _harmless(self.reason)


def _harmless(reason: str) -> bool:
    """True for a skip that loses nothing of Dagu's state."""
    return reason in _HARMLESS or reason.startswith(_NOT_DAGUS_NAME)


class _Found(NamedTuple):
    """A directory entry in a namespace directory, with the open directory it is in."""

    rel: str  # path relative to the source directory, as reported
    scope: str
    ns_hex: str
    entry: os.DirEntry[str]
    dir_fd: int


def _shown(rel: str) -> str:
    """A path as reported: bytes that are not UTF-8 (surrogate-escaped) as backslash escapes."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _skip(rel: str, reason: str) -> DaguImport:
    return DaguImport(file=rel, status="skipped", reason=reason)


def _open_failure(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:  # replaced by a symbolic link since it was listed
        return _SYMLINK
    return f"cannot open: {exc.strerror or exc}"


def _entries(dir_fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(dir_fd) as it:
        return sorted(it, key=lambda entry: entry.name)


def _subdirs(dir_fd: int, rel: str) -> Iterator[tuple[str, int] | DaguImport]:
    """Each real subdirectory as (name, open fd), closed on resume; a skip for each symlink.

    Other entries are not scope or namespace directories and are passed over, as Dagu does.
    """
    for entry in _entries(dir_fd):
        path = _shown(os.path.join(rel, entry.name))
        if entry.is_symlink():
            yield _skip(path, _SYMLINK)
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            yield _skip(path, _open_failure(exc))
            continue
        try:
            yield entry.name, fd
        finally:
            os.close(fd)


@exits.contextmanager
def _base(root: str) -> Iterator[tuple[int, str]]:
    """The open directory holding the scopes (``root/v1`` if a real directory, else root)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            base_fd, prefix = os.open("v1", _DIR_FLAGS, dir_fd=root_fd), "v1"
        except OSError:  # absent, or not a directory we follow: root holds the scopes
            base_fd, prefix = os.dup(root_fd), ""
    finally:
        os.close(root_fd)
    try:
        yield base_fd, prefix
    finally:
        os.close(base_fd)


def _files(root: str) -> Iterator[_Found | DaguImport]:
    """Every entry of every namespace directory under v1/, or a skip for a symlinked directory."""
    with _base(root) as (base_fd, prefix):
        for scope_dir in _subdirs(base_fd, prefix):
            if isinstance(scope_dir, DaguImport):
                yield scope_dir
                continue
            scope, scope_fd = scope_dir
            scope_rel = os.path.join(prefix, scope)
            for ns_dir in _subdirs(scope_fd, scope_rel):
                if isinstance(ns_dir, DaguImport):
                    yield ns_dir
                    continue
                ns_hex, ns_fd = ns_dir
                for entry in _entries(ns_fd):
                    rel = _shown(os.path.join(scope_rel, ns_hex, entry.name))
                    yield _Found(rel, scope, ns_hex, entry, ns_fd)


def _only_if_absent(new: NewVersion) -> Decide:
    def decide(previous: Entry | None, _view: LogView) -> NewVersion | None:
        return new if previous is None else None

    return decide


def _kept(store: Store, ref: Ref, new: NewVersion, newest: Entry) -> str:
    """Why a record of a key castore has was not imported: harmless if castore holds it.

    Castore holds it when its version of the record's number has the record's
    hash (a rerun of a finished import, or castore written on since); else the
    two differ (Dagu wrote on since, or castore's key is another's), which is
    a record not imported. A version compaction dropped since castore wrote
    on past it cannot be compared: castore went on from it, harmless too.

    Raises:
        CorruptionError: castore's version of that number is damaged.
    """
    entry: Entry | None = newest
    if newest.version > new.version:
        try:
            entry = store.backend.version(ref, new.version)[0]
        except NotFoundError:  # compacted away: castore wrote on past it
            return _WRITTEN_ON
    if entry is not None and entry.version == new.version and entry.hash == new.digest_hex:
        return _KEY_EXISTS
    return (
        f"castore's key (newest version {newest.version}) does not hold this record "
        f"(version {new.version}, hash {new.digest_hex[:12]}...): castore and Dagu differ"
    )


def _not_regular(mode: int) -> str:
    """Why an entry of this ``st_mode`` is not read, or "" for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISLNK(mode):
        return _SYMLINK
    return f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'unknown type')})"


def _too_large(size: int) -> str:
    return f"record file is {size} bytes, over the {MAX_RECORD_BYTES}-byte limit"


def _read_record(dir_fd: int, name: str) -> bytes | str:
    """The bytes of a regular record file of at most MAX_RECORD_BYTES, or why it is skipped.

    Never blocks and never follows a link, even if the entry changed since it
    was listed: the open does not follow or wait, and fstat types what was opened.
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        return _open_failure(exc)
    try:
        info = os.fstat(fd)
        why = _not_regular(info.st_mode)
        if why or info.st_size > MAX_RECORD_BYTES:
            return why or _too_large(info.st_size)
        chunks: list[bytes] = []
        left = MAX_RECORD_BYTES + 1  # one byte more shows that the file grew past the limit
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    finally:
        os.close(fd)
    if left <= 0:
        return f"record file grew past the {MAX_RECORD_BYTES}-byte limit while read"
    return b"".join(chunks)


def _ref(scope: str, ns_hex: str, name: str) -> Ref | str:
    """The ref a record file name encodes, or why the file is not a record."""
    if ".json.tmp." in name or name.endswith(".tmp"):
        return _TEMPORARY
    if not name.endswith(".json"):
        return _NOT_A_RECORD
    if scope not in SCOPES:
        return f"unknown scope {scope!r}"
    try:
        namespace, key = _unhex(ns_hex), _unhex(name[: -len(".json")])
    except ValueError as exc:  # no name Dagu writes: its get never reads the file
        return f"{_NOT_DAGUS_NAME}: {exc}"
    try:
        validate_namespace(namespace)
        validate_key(key)
    except CastoreError as exc:  # a name Dagu's encoding gives: a record castore refuses
        return f"file name does not encode a valid namespace and key: {exc}"
    return Ref(scope, namespace, key)


def _unhex(name: str) -> str:
    """The text a namespace directory or key file name encodes as Dagu does (lowercase hex).

    Raises:
        ValueError: not exactly that: a name Dagu's get never reads (uppercase, spaces).
    """
    raw = bytes.fromhex(name)
    if raw.hex() != name:
        raise ValueError(f"{name!r} is not lowercase hex as Dagu writes it ({raw.hex()!r})")
    return raw.decode("utf-8")


def _new_version(data: bytes) -> NewVersion | str:
    """The new version for one record's bytes, or why the record is skipped."""
    try:
        record = decode_record(data)
    except (CastoreError, ValueError) as exc:
        return f"corrupt record: {exc}"
    digest = codec.hexdigest(record.normalized)
    if digest != record.hash:
        return f"hash mismatch: value hashes to {digest}, record says {record.hash}"
    by = record.updated_by
    audit = Audit(
        dag_name=by.dag_name,
        run_id=by.dag_run_id,
        attempt=by.attempt_id,
        step_name=by.step_name,
        reason="imported from Dagu",
    )
    try:
        check_audit(audit)  # as every write's: the store's export must import again
    except InvalidValueError as exc:
        return f"corrupt record: {exc.detail}"
    return NewVersion(
        OP_SET,
        record.normalized,
        digest,
        audit,
        None,
        record.version,
        record.updated_ns,
        record.created_ns,
    )


def _record(found: _Found) -> tuple[Ref, NewVersion] | str:
    """The ref and new version for one entry, or the reason it is skipped.

    A name that is no record's is skipped whatever it names (a link, a directory).
    """
    ref = _ref(found.scope, found.ns_hex, found.entry.name)
    if isinstance(ref, str) and _harmless(ref):
        return ref
    try:
        why = _not_regular(found.entry.stat(follow_symlinks=False).st_mode)
    except OSError as exc:  # removed since it was listed
        why = f"cannot stat: {exc.strerror or exc}"
    if why:
        return why
    if isinstance(ref, str):
        return ref
    data = _read_record(found.dir_fd, found.entry.name)
    if isinstance(data, str):
        return data
    new = _new_version(data)
    return new if isinstance(new, str) else (ref, new)


def import_dagu(store: Store, root: str | os.PathLike[str]) -> Iterator[DaguImport]:
    """Import every record under a Dagu dag-state directory; yield one outcome per file.

    A key that already has history in castore is skipped (never merged): a
    harmless skip when castore holds the record (its version with the record's
    hash), else a record not imported (castore and Dagu differ).
    The source directory is only read, and only its regular files: FIFOs,
    sockets, devices and symbolic links (to files or directories, which are
    reported as one skipped entry) are skipped without being opened for
    reading, and a file over :data:`MAX_RECORD_BYTES` without being read.
    Memory holds one record at a time.

    Raises (when called, before the first outcome):
        TypeError: ``store`` is not a Store, or ``root`` not a str, bytes or os.PathLike.
        NotADirectoryError: ``root`` is not a directory.
    """
    check_store(store)
    if not isinstance(root, (str, bytes, os.PathLike)):  # an int is a descriptor to isdir
        raise TypeError(f"root must be a str, bytes or os.PathLike, not {type(root).__name__}")
    if not os.path.isdir(root := os.fsdecode(root)):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", root)
    return _imports(store, root)


def _imports(store: Store, root: str) -> Iterator[DaguImport]:
    """:func:`import_dagu`'s outcomes, its arguments checked."""
    for found in _files(root):
        if isinstance(found, DaguImport):
            yield found
            continue
        made = _record(found)
        if isinstance(made, str):
            yield _skip(found.rel, made)
            continue
        ref, new = made
        try:
            newest, written = store.backend.write(ref, _only_if_absent(new))
            kept = "" if written or newest is None else _kept(store, ref, new, newest)
        except (ConflictError, CorruptionError) as exc:
            # A version at or below the key's removed life (GRAVES), or a damaged log.
            yield _skip(found.rel, str(exc))
            continue
        yield DaguImport(
            file=found.rel,
            status="imported" if written else "skipped",
            reason=kept,
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            version=new.version,
        )
