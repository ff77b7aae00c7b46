"""A ``set`` of a small value on a live key, with the standard library and blake3 alone.

A ``castore set`` is a new process, and loading the library (msgspec above all)
costs several times the write (docs/PERFORMANCE.md, "CLI start-up"). So the CLI
asks :func:`quick_set` first. It writes only in the common case, and then
exactly what :class:`castore.file.writer.Writer` would write (the same frames,
bytes for bytes, but for the time and the audit of this process), by the same
protocol (FORMAT.md §6):

- the directory holds a store of the current format, and the key's log exists, not
  marked when the write is durable (:mod:`castore.file.namesync`);
- with the log's exclusive lock (on the file its path still names), the log
  ends with an intact ``E`` frame of a ``set`` or ``rollback`` written as
  castore writes entries (:func:`castore.file.peek.newest_entry`), so no torn
  tail is to be cut and the key is live, and the namespace's ``GRAVES`` does
  not name the key (:func:`castore.file.peek.buried`: else the log may be an
  older copy put back after compaction removed it);
- the guards (``expected_version``, ``create_only``) hold;
- the value is shorter than :data:`~castore.file.encode.DEDUP_MIN_BYTES` (no
  blob index to consult or extend), and when it repeats the newest value,
  that value's ``B`` frame is intact in this log (the entry points at it).

Then it appends ``P`` to the namespace's ``STATE`` (if there is one), appends
``[B] E`` in one write and fdatasyncs it (the commit point, shared with the
writer: :func:`castore.file.fileio.commit`). Anything else returns None with
nothing written but, at most, a ``P`` (which only makes ``list`` read the
key's log), and the CLI runs the command through the store, which applies every
rule and words every error. tests/integration/test_quick_set.py compares both.
"""

from __future__ import annotations

import json
import os
import time

from castore import valuecodec
from castore.defaults import LOCK_TIMEOUT_SECONDS
from castore.errors import CastoreError, LockTimeoutError
from castore.file import fileio
from castore.file.frames import encode_frame
from castore.file.modes import DATA_UNSYNCED, UNSYNCED
from castore.file.peek import (
    behind_state,
    blob_value,
    buried,
    indexes_beyond,
    is_store,
    names_ref,
    newest_entry,
)
from castore.file.stateappend import KIND_PENDING, STATE_NAME, append_frame
from castore.file.tree import Tree
from castore.identity import MAX_AUDIT_TEXT
from castore.keys import Ref, log_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up)
if TYPE_CHECKING:
    from typing import Any, Final

    from castore.file.peek import Tail

__all__ = ["QUICK_MAX_BYTES", "quick_set"]

QUICK_MAX_BYTES: Final = 256  # castore.file.encode.DEDUP_MIN_BYTES (that module loads msgspec)
_KIND_BLOB = ord("B")  # as castore.file.records names them (that module loads msgspec)
_KIND_ENTRY = ord("E")
_OPS: Final = frozenset(("set", "rollback"))  # a live version: KEYS lists the key
_SEPARATORS: Final = (",", ":")  # compact, as msgspec writes records
_FLAGS: Final = os.O_RDWR | os.O_APPEND  # never O_CREAT: a new key is the store's to make
_LAST: Final = (1 << 63) - 1  # the highest version and time a backend stores


class _DeclinedError(Exception):
    """Not the common case: the store does this write."""


def quick_set(
    root: str,
    ref: Ref,
    normalized: bytes,
    digest: str,
    audit: dict[str, str | int],
    *,
    durable: bool,
    expected_version: int | None = None,
    create_only: bool = False,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
) -> int | None:
    """Append a version holding ``normalized`` to ``ref``'s log in the store at ``root``.

    Args:
        root: the store directory (absolute).
        ref: the key (validated, its names printable ASCII).
        normalized: the value, normalized, shorter than :data:`QUICK_MAX_BYTES`.
        digest: its sha256, lowercase hex.
        audit: the audit record's fields in :class:`~castore.records.Audit`'s
            order (:func:`castore.identity.audit_fields`); every string printable ASCII.
        durable: fdatasync the append.
        expected_version: the set's guard (None: none).
        create_only: the set's guard.
        lock_timeout: seconds to wait for the key's lock.

    Returns:
        The new version (the key was live); None: nothing was written, the store writes it.

    Raises:
        OSError: the append failed (it was cut again: nothing was written).
        LockTimeoutError: the key stayed locked for ``lock_timeout`` seconds.
    """
    if len(normalized) >= QUICK_MAX_BYTES or not all(map(_plain, audit.values())):
        return None
    fs, committing = Tree(root), False
    try:
        if not is_store(fs, root):
            return None
        path = os.path.join(root, "refs", log_name(ref))
        with fs.open_locked(path, _FLAGS, timeout=lock_timeout, pauses=fileio.WRITER_PAUSES) as fd:
            size = _size(fd, durable)
            tail = newest_entry(fd, size)
            if tail is None or not _plain_log(fs, path, fd, ref, tail[1]["version"]):
                return None
            guards = (normalized, digest, audit, expected_version, create_only)
            data, version = _frames(fd, tail, size, *guards)
            _pending(fs, os.path.join(os.path.dirname(path), STATE_NAME), ref.key)
            committing = True
            vix = path[: -len(".log")] + ".vix"  # a reader may have indexed the append
            fileio.commit(fd, data, size, durable=durable, forget=lambda: fs.unlink(vix))
            return version
    except LockTimeoutError:
        raise
    except (_DeclinedError, OSError, CastoreError, ValueError, RecursionError):
        if committing:
            raise
        return None  # before the commit point: the store writes, or words the error
    finally:
        fs.close()


def _size(fd: int, durable: bool) -> int:
    """The locked log's size; declined if a durable write must first settle what it needs."""
    st = os.fstat(fd)
    if durable and st.st_mode & (UNSYNCED | DATA_UNSYNCED):  # castore.file.namesync: the
        raise _DeclinedError  # store settles what the log depends on first
    return st.st_size


def _plain(item: str | int) -> bool:
    """An int, or a string json and msgspec write alike that a write may keep.

    Printable ASCII, at most :data:`~castore.identity.MAX_AUDIT_TEXT` characters
    (a longer one: the store words the refusal).
    """
    if type(item) is int:
        return True
    return (
        isinstance(item, str)
        and len(item) <= MAX_AUDIT_TEXT
        and item.isascii()
        and item.isprintable()
    )


def _frames(
    fd: int,
    tail: Tail,
    size: int,
    normalized: bytes,
    digest: str,
    audit: dict[str, str | int],
    expected_version: int | None,
    create_only: bool,
) -> tuple[bytes, int]:
    """The frames that append the new version after ``tail``, and its version.

    As :func:`castore.decisions.set_decision` and
    :func:`castore.file.encode.encode_versions` make them.

    Raises:
        _DeclinedError: a guard fails, or the newest entry is not a live version.
    """
    previous = tail[1]
    if previous["op"] not in _OPS:
        raise _DeclinedError  # a tombstone (the key must be in KEYS again) or a damaged range
    live = previous["version"]
    if create_only or (expected_version is not None and expected_version != live):
        raise _DeclinedError  # a conflict: the store words it
    if max(live, previous["time_ns"]) >= _LAST:
        raise _DeclinedError  # no version or time can follow: the store words it
    parts: list[bytes] = []
    blob = previous.get("blob")
    if previous.get("hash") != digest or blob is None:
        codec, packed = valuecodec.pack(normalized)
        parts.append(
            encode_frame(_KIND_BLOB, b"".join((bytes.fromhex(digest), bytes((codec,)), packed)))
        )
        blob = ["", size, len(parts[0])]
    elif blob[0] != "" or blob_value(fd, tail) != normalized:
        raise _DeclinedError  # the same value, but its frame is elsewhere or not intact
    # Never before the previous version, nor past what readers take (records.decode_entry).
    stamp = max(min(time.time_ns(), _LAST), previous["time_ns"] + 1)
    entry: dict[str, Any] = {
        "version": previous["version"] + 1,
        "op": "set",
        "time_ns": stamp,
        "hash": digest,
        "size": len(normalized),
        "blob": blob,
    }
    created_ns = previous.get("created_ns", 0)  # carried while the key stays live
    if created_ns:
        entry["created_ns"] = created_ns
    record = {name: item for name, item in audit.items() if item}  # msgspec omits defaults
    if record:
        entry["audit"] = record
    payload = json.dumps(entry, separators=_SEPARATORS).encode("ascii")
    parts.append(encode_frame(_KIND_ENTRY, payload))
    return b"".join(parts), entry["version"]


def _pending(fs: Tree, path: str, key: str) -> None:
    """Append ``P`` for ``key`` to the namespace's ``STATE``, if it has one (FORMAT.md §5).

    Raises:
        _DeclinedError: the file kept being replaced.
        OSError: it could not be appended (the store then fails the write).
    """
    frame = encode_frame(KIND_PENDING, key.encode("utf-8"))
    for _attempt in range(3):
        try:
            fd = fs.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            if append_frame(fd, path, frame):
                return
        finally:
            os.close(fd)
    raise _DeclinedError


def _plain_log(fs: Tree, path: str, fd: int, ref: Ref, version: int) -> bool:
    """True if the log is ``ref``'s own, with no evidence against its newest ``version``.

    No version index records beyond it, and no grave names the key.
    Else the store writes (or refuses: another key's log in its place, a cut, an
    older copy of a removed key's log).
    """
    return (
        not indexes_beyond(fs, path, version)
        and not buried(fs, path, ref.key)
        and not behind_state(fs, path, ref.key, version)
        and names_ref(fd, ref)
    )
