"""The server's side of the backend protocol (:mod:`castore.wire`): the calls on the backend.

``POST /v1/backend/<call>`` decodes one request struct of
:data:`~castore.wire.CALLS` from MessagePack, checks its names as every
store call does (a hostile client gets ``invalid_ref``), runs the call on the
store's :class:`~castore.backend.Backend` and answers with the reply struct
(what a worker sends is checked first: :mod:`castore.server.checks`).
``append`` is the write: a decision made by the client, applied only if the
ref's newest entry is still the one it decided on, and never twice for one
request id.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

import msgspec

from castore.backend import LogView, NewVersion
from castore.decisions import as_it_is
from castore.errors import CorruptionError, InvalidRefError, InvalidValueError, NotFoundError
from castore.keys import validate_key, validate_prefix, validate_scope
from castore.records import OP_DAMAGED, OP_SET, Entry
from castore.reports import GCReport, check_seconds
from castore.server.checks import (
    check_limit,
    checked_versions,
    namespace_of,
    ref_of,
    request_id_of,
)
from castore.server.errors import api_error, error_body
from castore.store import Store
from castore.wire import (
    APPLIED,
    CALLS,
    FRAME_END,
    FRAME_ERROR,
    FRAME_ITEM,
    RETRY_WINDOW,
    STALE,
    UNKNOWN,
    WRITTEN,
    Append,
    AppendReply,
    EntryValue,
    GCCall,
    HistoryCall,
    NamespaceCall,
    RefCall,
    Replace,
    VersionCall,
    frame,
)

__all__ = ["BACKEND_CALLS", "BackendCall", "decode_call", "framed", "keyspace_of"]


def _applied(
    previous: Entry, view: LogView, request_id: str, since: int, count: int
) -> tuple[list[Entry], bool]:
    """The versions of ``request_id`` (``count`` of them) among the newest, oldest first.

    The newest :data:`RETRY_WINDOW` + ``count`` versions are searched, down to
    ``since``, the version the request expected to write after. Returns the
    versions found and whether every version above ``since`` was searched
    (else they may be incomplete, or the request applied below the window).
    A version that cannot be read (damaged, lost to damage, compacted since)
    ends the search: what it was is not known.
    """
    found: list[Entry] = []
    low = max(previous.version - RETRY_WINDOW - count, since, 0)
    for version in range(previous.version, low, -1):
        try:
            entry = previous if version == previous.version else view.entry_at(version)
        except (CorruptionError, NotFoundError):  # damaged, or compacted since
            return found[::-1], False
        if entry is not None and entry.op == OP_DAMAGED:
            return found[::-1], False  # a version lost to damage (a repair's marker)
        if entry is not None and entry.audit.request_id == request_id:
            found.append(entry)
        elif found:
            break  # one request's versions are contiguous
    return found[::-1], low <= since


def _before(view: LogView, first: Entry) -> Entry | None:
    """The newest entry before a retried request's versions, as when they were appended.

    Compaction (or damage) may have dropped it since; then the first appended entry
    tells: it started the key's life (nothing live before it) iff it carries its own
    time as the key's creation time (``created_ns``).
    """
    try:
        before = view.entry_at(first.version - 1) if first.version > 1 else None
    except (CorruptionError, NotFoundError):
        before = None
    if before is None and first.version > 1 and first.created_ns != first.time_ns:
        before = Entry(version=first.version - 1, op=OP_SET, time_ns=first.created_ns)
    return before


def _same_write(done: list[Entry], versions: list[NewVersion]) -> bool:
    """True if ``done``, a request id's entries, are what ``versions`` asked to append.

    A client never sends one id for two writes; one that does (a bug, or hostile)
    must not be told that its other write was applied.
    """
    return len(done) == len(versions) and all(
        e.op == v.op and e.hash == v.digest_hex and v.version in (0, e.version)
        for e, v in zip(done, versions, strict=True)
    )


def _identity(entry: Entry | None) -> tuple[int, int, str]:
    """The newest entry as an append names it: version, time and hash (0, 0, "": none)."""
    return (entry.version, entry.time_ns, entry.hash) if entry is not None else (0, 0, "")


def _as_it_is(store: Store, call: Append) -> AppendReply:
    """An append of no versions: the worker answers from the entry it names, writing nothing.

    The store's write runs a decision that writes nothing, so a durable store makes
    the key durable as it is (docs/FORMAT.md §6 step 3), as a local call answering
    from it would; ``written`` if the named entry is still the newest, else ``stale``.
    """
    request_id_of(call.request_id)
    if not call.expect:  # no entry named: nothing to make durable, and nothing may be made
        raise InvalidValueError("nothing to append")
    expected = (call.expect, call.expect_time_ns, call.expect_hash)
    previous, _ = store.backend.write(ref_of(call), as_it_is)
    return AppendReply(
        status=WRITTEN if _identity(previous) == expected else STALE, previous=previous
    )


def _append(store: Store, call: Append) -> AppendReply:
    """Append ``call.versions`` if the newest entry is the one named; once per request id.

    No versions: :func:`_as_it_is`.
    """
    if not call.versions:
        return _as_it_is(store, call)
    ref = ref_of(call)
    request_id = request_id_of(call.request_id)
    explicit = call.expect == 0  # an import-style append may give versions and times
    versions = checked_versions(call.versions, explicit=explicit, request_id=request_id)
    expected = (call.expect, call.expect_time_ns, call.expect_hash)
    outcome: list[AppendReply] = []

    def decide(previous: Entry | None, view: LogView) -> list[NewVersion] | None:
        outcome.clear()  # a backend may run a decision more than once
        searched = True
        if call.retry and previous is not None:
            done, searched = _applied(previous, view, request_id, call.expect, len(versions))
            if done and not _same_write(done, versions):
                if not searched:  # perhaps its versions below, or a damaged one among them
                    outcome.append(AppendReply(status=UNKNOWN, previous=previous))
                return None  # else outcome left empty: refused below
            if done:
                before = _before(view, done[0])
                outcome.append(AppendReply(status=APPLIED, previous=before, written=done))
                return None
        if _identity(previous) != expected:
            status = STALE if searched else UNKNOWN  # unknown: the client must not decide again
            outcome.append(AppendReply(status=status, previous=previous))
            return None
        return versions

    previous, written = store.backend.write(ref, decide)
    if written:
        return AppendReply(status=WRITTEN, previous=previous, written=written)
    if not outcome:
        raise InvalidValueError(
            f"the request's id was used by another write to {ref}: nothing written"
        )
    return outcome[0]  # a backend that writes nothing ran the decision, which said why


def _replace(store: Store, call: Replace) -> list[Entry]:
    versions = checked_versions(call.versions, explicit=True)
    return store.backend.replace(ref_of(call), versions, call.seen)


def _current(store: Store, call: RefCall) -> EntryValue:
    current = store.backend.current(ref_of(call))
    return EntryValue(current.entry, current.value)


def _version(store: Store, call: VersionCall) -> EntryValue:
    check_limit(call.version, "version")
    return EntryValue(*store.backend.version(ref_of(call), call.version))


def _history(store: Store, call: HistoryCall) -> list[Entry]:
    check_limit(call.before - 1, "before")  # "below 2**63": every version
    check_limit(call.limit, "limit")
    return store.backend.history(ref_of(call), call.before, call.limit)


def _iter_versions(store: Store, call: RefCall) -> Iterator[EntryValue]:
    return (EntryValue(e, v) for e, v in store.backend.iter_versions(ref_of(call)))


def _keys(store: Store, call: NamespaceCall) -> list[str]:
    validate_prefix(call.prefix)
    return store.backend.keys(*namespace_of(call), call.prefix, verify=call.verify)


def _listing(store: Store, call: NamespaceCall) -> dict[str, Any]:
    validate_prefix(call.prefix)
    return dict(store.backend.listing(*namespace_of(call), call.prefix))


def _remember(store: Store, call: NamespaceCall) -> None:
    scope, namespace = namespace_of(call)
    for key in call.keys:
        validate_key(key)
    store.backend.remember(scope, namespace, call.keys)


def _collect_garbage(store: Store, call: GCCall) -> GCReport:
    check_seconds(call.grace_seconds, "grace_seconds")  # the library's bound: 292 years
    return store.backend.collect_garbage(
        grace_seconds=call.grace_seconds, dry_run=call.dry_run, progress=None
    )


class BackendCall(NamedTuple):
    """How the server runs one call; ``stream``: its reply is an iterator (frames)."""

    run: Callable[[Store, Any], Any]
    stream: bool = False
    loop_safe: bool = False  # a short read: on the event loop if the backend allows it


BACKEND_CALLS: Final[dict[str, BackendCall]] = {
    "current": BackendCall(_current, loop_safe=True),
    "append": BackendCall(_append),
    "replace": BackendCall(_replace),
    "exists": BackendCall(lambda s, c: s.backend.exists(ref_of(c)), loop_safe=True),
    "keys": BackendCall(_keys),
    "namespaces": BackendCall(lambda s, c: s.backend.namespaces(validate_scope(c.scope))),
    "removed": BackendCall(lambda s, c: s.backend.removed(validate_scope(c.scope))),
    "listing": BackendCall(_listing),
    "remember": BackendCall(_remember),
    "version": BackendCall(_version, loop_safe=True),
    "history": BackendCall(_history),
    "iter_versions": BackendCall(_iter_versions, stream=True),
    "check": BackendCall(lambda s, c: s.backend.check(repair=c.repair, progress=None)),
    "collect_garbage": BackendCall(_collect_garbage),
    "compact": BackendCall(
        lambda s, c: s.backend.compact(c.retention, dry_run=c.dry_run, progress=None)
    ),
    "stats": BackendCall(lambda s, c: s.backend.stats()),
}
assert BACKEND_CALLS.keys() == CALLS.keys()  # noqa: S101  # one table each side, same calls

_log = logging.getLogger("castore.server")
_LOGGED: Final = frozenset({"damaged", "io_error"})  # a stream's errors the server logs
_BATCH_BYTES: Final = 256 * 1024  # a streamed batch ends at the item that reaches this
_DECODERS: Final = {name: msgspec.msgpack.Decoder(CALLS[name].request) for name in CALLS}


def decode_call(name: str, body: bytes) -> Any:
    """The request of backend call ``name``, from its MessagePack body.

    Raises:
        msgspec.DecodeError: not MessagePack, or not this call's request.
    """
    return _DECODERS[name].decode(body)


def keyspace_of(call: Any) -> tuple[str, str] | None:
    """The (scope, namespace) a call reads or writes, resolved as the call resolves it.

    None for a store-wide call, or for names the call itself refuses (``invalid_ref``).
    """
    if not isinstance(call, RefCall | NamespaceCall):
        return None
    try:
        return namespace_of(call)
    except InvalidRefError:
        return None


def framed(items: Iterator[Any], batch: int = 64, *, root: str = "") -> Iterator[bytes]:
    """A streamed reply: batches of item frames, then the end frame, or an error frame.

    A batch holds ``batch`` items, or fewer that reach :data:`_BATCH_BYTES` (a
    key's versions of 1 MiB each): a client that reads slowly holds back the
    reading, instead of a whole history waiting in the connection's buffer.

    Raises nothing: an exception while reading becomes the last frame, so a
    client raises it where a local store would (:func:`castore.wire.frame`).
    """
    while True:
        out: list[bytes] = []
        size = 0
        try:
            for item in itertools.islice(items, batch):
                out.append(frame(FRAME_ITEM, msgspec.msgpack.encode(item)))
                size += len(out[-1])
                if size >= _BATCH_BYTES:
                    break
        except Exception as exc:  # noqa: BLE001  # sent to the client, which raises it
            err = api_error(exc, exception=True, root=root)
            if err.code == "internal":  # the client learns nothing of it: the log must
                _log.error("internal error in a streamed reply", exc_info=exc)
            elif err.code in _LOGGED:  # the store's trouble: the operator learns of it too
                _log.error("a streamed reply ended with an error: %s: %s", err.code, err.message)
            out.append(frame(FRAME_ERROR, error_body(err)))
            yield b"".join(out)
            return
        if len(out) < batch and size < _BATCH_BYTES:
            yield b"".join([*out, frame(FRAME_END, b"")])
            return
        yield b"".join(out)
