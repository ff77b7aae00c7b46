"""The server's side of the backend protocol (:mod:`castore.wire`): the calls on the backend.

``POST /v1/backend/<call>`` decodes one request struct of
:data:`~castore.wire.CALLS` from MessagePack, checks its names as every
store call does (a hostile client gets ``invalid_ref``), runs the call on the
store's :class:`~castore.backend.Backend` and answers with the reply struct.
:func:`append` is the write: a decision made by the client, applied only if
the ref's newest version is still the one it decided on, and never twice for
one request id.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

import msgspec

from castore import codec
from castore.backend import LogView, NewVersion
from castore.errors import InvalidRefError, InvalidValueError
from castore.keys import Ref, resolve_namespace, validate_prefix, validate_scope
from castore.records import OP_DAMAGED, OP_DELETE, OP_ROLLBACK, OP_SET, Entry
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
    WRITTEN,
    Append,
    AppendReply,
    EntryValue,
    HistoryCall,
    NamespaceCall,
    RefCall,
    Replace,
    VersionCall,
    WireVersion,
    frame,
    from_wire,
)

__all__ = ["BACKEND_CALLS", "BackendCall", "decode_call", "framed", "keyspace_of"]

_OPS: Final = frozenset({OP_SET, OP_DELETE, OP_ROLLBACK, OP_DAMAGED})


def _ref(store: Store, call: RefCall) -> Ref:
    """The call's ref, validated as every store call validates one."""
    return store.ref(call.key, call.scope, call.namespace)


def _namespace(call: NamespaceCall) -> tuple[str, str]:
    """The call's scope and namespace, validated as every store call validates them."""
    return call.scope, resolve_namespace(call.scope, call.namespace, dag=None, root_dag=None)


def _checked(version: WireVersion) -> NewVersion:
    """A version a client sent, once its value is what its digest and op say.

    Raises:
        InvalidValueError: an unknown op, a value that is not normalized JSON
            or does not hash to its digest.
    """
    if version.op not in _OPS:
        raise InvalidValueError(f"unknown operation {version.op!r}")
    if version.normalized is not None:
        if codec.normalize(version.normalized) != version.normalized:
            raise InvalidValueError("the value is not normalized JSON")
        if codec.hexdigest(version.normalized) != version.digest_hex:
            raise InvalidValueError("the value does not hash to its digest")
    elif version.op not in (OP_DELETE, OP_DAMAGED):
        raise InvalidValueError(f"a {version.op} without a value")
    return from_wire(version)


def _stamped(new: NewVersion, request_id: str) -> NewVersion:
    """``new`` with ``request_id`` in its audit record (how a resend is recognized)."""
    return new._replace(audit=msgspec.structs.replace(new.audit, request_id=request_id))


def _applied(previous: Entry, view: LogView, request_id: str) -> list[Entry]:
    """The versions of ``request_id`` among the newest :data:`RETRY_WINDOW`, oldest first."""
    found: list[Entry] = []
    for version in range(previous.version, max(previous.version - RETRY_WINDOW, 0), -1):
        entry = previous if version == previous.version else view.entry_at(version)
        if entry is not None and entry.audit.request_id == request_id:
            found.append(entry)
        elif found:
            break  # one request's versions are contiguous
    return found[::-1]


def append(store: Store, call: Append) -> AppendReply:
    """Append ``call.versions`` if the newest version is ``call.expect``; once per request id."""
    ref = _ref(store, call)
    # The request id goes into each version's audit record, whatever the client put there.
    versions = [_stamped(_checked(v), call.request_id) for v in call.versions]
    if not versions or not call.request_id:
        raise InvalidValueError("an append needs versions and a request id")
    outcome: list[AppendReply] = []

    def decide(previous: Entry | None, view: LogView) -> list[NewVersion] | None:
        outcome.clear()  # a backend may run a decision more than once
        if call.retry and previous is not None:
            done = _applied(previous, view, call.request_id)
            if done:
                before = view.entry_at(done[0].version - 1)
                outcome.append(AppendReply(status=APPLIED, previous=before, written=done))
                return None
        if (previous.version if previous is not None else 0) != call.expect:
            value = view.value() if previous is not None and previous.live else None
            outcome.append(AppendReply(status=STALE, previous=previous, value=value))
            return None
        return versions

    previous, written = store.backend.write(ref, decide)
    if written:
        return AppendReply(status=WRITTEN, previous=previous, written=written)
    if outcome:
        return outcome[0]
    return AppendReply(status=STALE, previous=previous)  # the store does not exist


def _replace(store: Store, call: Replace) -> list[Entry]:
    return store.backend.replace(_ref(store, call), [_checked(v) for v in call.versions])


def _current(store: Store, call: RefCall) -> EntryValue:
    current = store.backend.current(_ref(store, call))
    return EntryValue(current.entry, current.value)


def _version(store: Store, call: VersionCall) -> EntryValue:
    return EntryValue(*store.backend.version(_ref(store, call), call.version))


def _history(store: Store, call: HistoryCall) -> list[Entry]:
    return store.backend.history(_ref(store, call), call.before, call.limit)


def _iter_versions(store: Store, call: RefCall) -> Iterator[EntryValue]:
    return (EntryValue(e, v) for e, v in store.backend.iter_versions(_ref(store, call)))


def _keys(store: Store, call: NamespaceCall) -> list[str]:
    validate_prefix(call.prefix)
    return store.backend.keys(*_namespace(call), call.prefix, verify=call.verify)


def _listing(store: Store, call: NamespaceCall) -> dict[str, Any]:
    validate_prefix(call.prefix)
    return dict(store.backend.listing(*_namespace(call), call.prefix))


def _remember(store: Store, call: NamespaceCall) -> None:
    scope, namespace = _namespace(call)
    for key in call.keys:
        store.ref(key, scope, namespace)
    store.backend.remember(scope, namespace, call.keys)


class BackendCall(NamedTuple):
    """One call of the backend protocol: how it runs; ``stream``: its reply is an iterator."""

    run: Callable[[Store, Any], Any]
    stream: bool = False
    maintenance: bool = False  # store-wide: no keyspace, and no request time limit


BACKEND_CALLS: Final[dict[str, BackendCall]] = {
    "current": BackendCall(_current),
    "append": BackendCall(append),
    "replace": BackendCall(_replace),
    "exists": BackendCall(lambda s, c: s.backend.exists(_ref(s, c))),
    "keys": BackendCall(_keys),
    "namespaces": BackendCall(lambda s, c: s.backend.namespaces(validate_scope(c.scope))),
    "listing": BackendCall(_listing),
    "remember": BackendCall(_remember),
    "version": BackendCall(_version),
    "history": BackendCall(_history),
    "iter_versions": BackendCall(_iter_versions, stream=True),
    "check": BackendCall(
        lambda s, c: s.backend.check(repair=c.repair, progress=None), maintenance=True
    ),
    "collect_garbage": BackendCall(
        lambda s, c: s.backend.collect_garbage(
            grace_seconds=c.grace_seconds, dry_run=c.dry_run, progress=None
        ),
        maintenance=True,
    ),
    "compact": BackendCall(
        lambda s, c: s.backend.compact(c.retention, dry_run=c.dry_run, progress=None),
        maintenance=True,
    ),
    "stats": BackendCall(lambda s, c: s.backend.stats(), maintenance=True),
}
assert BACKEND_CALLS.keys() == CALLS.keys()  # noqa: S101  # one table each side, same calls

_DECODERS: Final = {name: msgspec.msgpack.Decoder(CALLS[name][0]) for name in CALLS}


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
        return call.scope, resolve_namespace(call.scope, call.namespace, dag=None, root_dag=None)
    except InvalidRefError:
        return None


def framed(items: Iterator[Any], batch: int = 64) -> Iterator[bytes]:
    """A streamed reply: batches of item frames, then the end frame, or an error frame.

    Raises nothing: an exception while reading becomes the last frame, so a
    client raises it where a local store would (:func:`castore.wire.frame`).
    """
    while True:
        out: list[bytes] = []
        try:
            out.extend(
                frame(FRAME_ITEM, msgspec.msgpack.encode(item))
                for item in itertools.islice(items, batch)
            )
        except Exception as exc:  # noqa: BLE001  # sent to the client, which raises it
            out.append(frame(FRAME_ERROR, error_body(api_error(exc, exception=True))))
            yield b"".join(out)
            return
        if len(out) < batch:
            yield b"".join([*out, frame(FRAME_END, b"")])
            return
        yield b"".join(out)
