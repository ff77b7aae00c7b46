"""The server's operations: each one a request struct, a :class:`~castore.store.Store` call, a line.

``POST /v1/<name>`` takes a JSON object whose members are the keyword
parameters of the Store method, with the same snake_case names (``get``:
``key``, ``scope``, ``namespace``, ``version``, ``required``, ``default``),
plus who is asking: ``dag`` and ``root_dag`` (the namespaces of the ``dag``
and ``root_dag`` scopes, as ``--dag`` and ``--root-dag``) and ``caller`` (the
worker's audit fields, recorded in the audit record of its writes). Values
(``value``, ``default``, ``patch``, ``by``) are JSON values taken as their raw
text, so number literals stay exact, as on the command line.

The answer is the result's line (:meth:`~castore.results.SetResult.to_json`),
the bytes ``castore`` prints for the same command; ``audit`` streams one line
per record (JSON lines). :data:`OPERATIONS` is the one table: the app's
routes and the OpenAPI document are made from it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Final, NamedTuple

import msgspec

from castore.audit import AuditRecord, audit, dag_filter
from castore.edits import parse_number
from castore.errors import InvalidRefError
from castore.keys import resolve_namespace
from castore.lines import encode_line
from castore.records import Audit
from castore.results import (
    DeleteLine,
    DiffLine,
    GetLine,
    HistoryLine,
    IncrLine,
    ListLine,
    PatchLine,
    RollbackLine,
    SetLine,
    VersionDiffLine,
)
from castore.server.checks import decode_body
from castore.store import Store

__all__ = [
    "OPERATIONS",
    "Caller",
    "Operation",
    "Request",
    "decode_request",
    "handle_for",
    "keyspace",
    "spans",
]


class Caller(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who asks: the audit fields of the worker's writes (empty ones are not recorded)."""

    dag_name: str = ""
    run_id: str = ""
    step_name: str = ""
    attempt: str = ""
    user: str = ""
    host: str = ""
    pid: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)] = 0  # msgpack's range, and more
    actor: str = ""


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every request may carry: the DAG names and the caller."""

    dag: str | None = None
    root_dag: str | None = None
    caller: Caller | None = None


class _Key(Request, frozen=True, kw_only=True):
    key: str
    scope: str = "dag"
    namespace: str | None = None


class GetRequest(_Key, frozen=True, kw_only=True):
    """``get``: the latest version, or ``version``; ``default`` when absent."""

    version: int | None = None
    required: bool = False
    default: msgspec.Raw = msgspec.Raw()


class SetRequest(_Key, frozen=True, kw_only=True):
    """``set``: write ``value`` as a new version."""

    value: msgspec.Raw
    expected_version: int | None = None
    create_only: bool = False
    reason: str = ""


class DiffRequest(_Key, frozen=True, kw_only=True):
    """``diff``: compare ``value`` with the stored one; write it if changed and ``update``."""

    value: msgspec.Raw
    update: bool = True
    expected_version: int | None = None
    reason: str = ""


class DeleteRequest(_Key, frozen=True, kw_only=True):
    """``delete``: append a tombstone."""

    reason: str = ""


class ListRequest(Request, frozen=True, kw_only=True):
    """``list``: the live keys of one namespace starting with ``prefix``."""

    prefix: str = ""
    scope: str = "dag"
    namespace: str | None = None
    limit: int = 0
    include_values: bool = False


class HistoryRequest(_Key, frozen=True, kw_only=True):
    """``history``: versions newest first, paged by ``limit`` and ``before_version``."""

    limit: int = 0
    before_version: int | None = None


class RollbackRequest(_Key, frozen=True, kw_only=True):
    """``rollback``: a new version with version ``to_version``'s value."""

    to_version: int
    expected_version: int | None = None
    reason: str = ""


class DiffVersionsRequest(_Key, frozen=True, kw_only=True):
    """``diff-versions``: an RFC 6902 JSON Patch between two stored versions."""

    from_version: int
    to_version: int | None = None


class AuditRequest(Request, frozen=True, kw_only=True):
    """``audit``: writes and deletes across keys, newest first; each filter given must match."""

    scope: str | None = None
    namespace: str | None = None
    run_id: str | None = None
    actor: str | None = None
    step: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None


class IncrRequest(_Key, frozen=True, kw_only=True):
    """``incr``: add ``by`` (default 1) to the number at ``path`` (default: the value)."""

    by: Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"default": 1})] = msgspec.Raw()
    path: str | None = None
    expected_version: int | None = None
    reason: str = ""


class PatchRequest(_Key, frozen=True, kw_only=True):
    """``patch``: apply a JSON Patch, or with ``merge`` a merge patch, atomically."""

    patch: msgspec.Raw
    merge: bool = False
    expected_version: int | None = None
    create_only: bool = False
    reason: str = ""
    include_value: bool = False


def handle_for(store: Store, req: Request) -> Store:
    """A handle on ``store`` that resolves the request's DAG names and writes as its caller.

    The caller's ``dag_name`` defaults to ``dag``, as ``--dag`` is recorded by the CLI.
    """
    fields = msgspec.structs.asdict(req.caller or Caller())
    dag = req.dag or ""
    if not fields["dag_name"]:
        fields["dag_name"] = dag
    return store.for_caller(Audit(**fields), dag=dag, root_dag=req.root_dag or "")


def keyspace(req: Request) -> tuple[str, str] | None:
    """The (scope, namespace) a request is about; None: an audit of several, or invalid names.

    Invalid names are refused by the call itself (``invalid_ref``).
    """
    dag = req.dag or None
    try:
        if isinstance(req, AuditRequest):
            scope, namespace = dag_filter(req.scope, req.namespace, dag, req.root_dag or None)
            return None if scope is None or namespace is None else (scope, namespace)
        if isinstance(req, _Key | ListRequest):
            dags = {"dag": dag, "root_dag": req.root_dag or dag}
            return req.scope, resolve_namespace(req.scope, req.namespace, **dags)
    except InvalidRefError:
        pass
    return None


def spans(req: Request) -> bool:
    """True for an ``audit`` of several namespaces (valid filters): several members hold them."""
    with contextlib.suppress(InvalidRefError):
        dags = (req.dag or None, req.root_dag or None)
        return isinstance(req, AuditRequest) and None in dag_filter(req.scope, req.namespace, *dags)
    return False


def _get(s: Store, r: GetRequest) -> bytes:
    get = functools.partial(
        s.get, r.key, scope=r.scope, namespace=r.namespace, required=r.required, version=r.version
    )
    return (get(default=bytes(r.default)) if len(r.default) else get()).to_json()


def _set(s: Store, r: SetRequest) -> bytes:
    return s.set(
        r.key,
        bytes(r.value),
        scope=r.scope,
        namespace=r.namespace,
        expected_version=r.expected_version,
        create_only=r.create_only,
        reason=r.reason,
    ).to_json()


def _diff(s: Store, r: DiffRequest) -> bytes:
    return s.diff(
        r.key,
        bytes(r.value),
        scope=r.scope,
        namespace=r.namespace,
        update=r.update,
        expected_version=r.expected_version,
        reason=r.reason,
    ).to_json()


def _delete(s: Store, r: DeleteRequest) -> bytes:
    return s.delete(r.key, scope=r.scope, namespace=r.namespace, reason=r.reason).to_json()


def _list(s: Store, r: ListRequest) -> bytes:
    return s.list(
        r.prefix,
        scope=r.scope,
        namespace=r.namespace,
        limit=r.limit,
        include_values=r.include_values,
    ).to_json()


def _history(s: Store, r: HistoryRequest) -> bytes:
    return s.history(
        r.key,
        scope=r.scope,
        namespace=r.namespace,
        limit=r.limit,
        before_version=r.before_version,
    ).to_json()


def _rollback(s: Store, r: RollbackRequest) -> bytes:
    return s.rollback(
        r.key,
        to_version=r.to_version,
        scope=r.scope,
        namespace=r.namespace,
        expected_version=r.expected_version,
        reason=r.reason,
    ).to_json()


def _diff_versions(s: Store, r: DiffVersionsRequest) -> bytes:
    return s.diff_versions(
        r.key,
        from_version=r.from_version,
        to_version=r.to_version,
        scope=r.scope,
        namespace=r.namespace,
    ).to_json()


def _audit(s: Store, r: AuditRequest) -> Iterator[bytes]:
    scope, namespace = dag_filter(r.scope, r.namespace, r.dag or None, r.root_dag or None)
    records = audit(
        s,
        scope=scope,
        namespace=namespace,
        run_id=r.run_id,
        actor=r.actor,
        step=r.step,
        since_ns=r.since_ns,
        until_ns=r.until_ns,
    )
    return (encode_line(record) + b"\n" for record in records)


def _incr(s: Store, r: IncrRequest) -> bytes:
    by = parse_number(bytes(r.by).decode("utf-8", "replace")) if len(r.by) else 1
    return s.incr(
        r.key,
        by,
        r.path,
        scope=r.scope,
        namespace=r.namespace,
        expected_version=r.expected_version,
        reason=r.reason,
    ).to_json()


def _patch(s: Store, r: PatchRequest) -> bytes:
    result = s.patch(
        r.key,
        bytes(r.patch),
        merge=r.merge,
        scope=r.scope,
        namespace=r.namespace,
        expected_version=r.expected_version,
        create_only=r.create_only,
        reason=r.reason,
    )
    if not r.include_value:
        result = msgspec.structs.replace(result, value_json=None)
    return result.to_json()


class Operation(NamedTuple):
    """One operation: its request struct, its call, what it does, the line it answers with.

    ``call`` gets a handle made by :func:`handle_for` and the decoded request;
    it returns the response body, or (``stream``) an iterator of JSON lines.
    """

    request: type[Request]
    call: Callable[[Store, Any], bytes | Iterator[bytes]]
    summary: str
    line: type[msgspec.Struct]
    stream: bool = False
    loop_safe: bool = False  # a short read: on the event loop if the backend allows it


OPERATIONS: Final[dict[str, Operation]] = {
    "get": Operation(
        GetRequest, _get, "Read the latest value of a key, or a version", GetLine, loop_safe=True
    ),
    "set": Operation(SetRequest, _set, "Write a new version of a key", SetLine),
    "diff": Operation(
        DiffRequest, _diff, "Compare a value with the stored one; write it if changed", DiffLine
    ),
    "delete": Operation(DeleteRequest, _delete, "Delete a key (keeps its history)", DeleteLine),
    "list": Operation(ListRequest, _list, "List the live keys of a namespace", ListLine),
    "history": Operation(HistoryRequest, _history, "Versions of a key, newest first", HistoryLine),
    "rollback": Operation(
        RollbackRequest, _rollback, "Restore an old version as a new one", RollbackLine
    ),
    "diff-versions": Operation(
        DiffVersionsRequest, _diff_versions, "JSON Patch between two versions", VersionDiffLine
    ),
    "audit": Operation(
        AuditRequest,
        _audit,
        "Writes and deletes across keys, newest first (JSON lines)",
        AuditRecord,
        stream=True,
    ),
    "incr": Operation(IncrRequest, _incr, "Add to a number atomically", IncrLine),
    "patch": Operation(
        PatchRequest, _patch, "Apply a JSON Patch or merge patch atomically", PatchLine
    ),
}


_DECODERS: Final = {name: msgspec.json.Decoder(op.request) for name, op in OPERATIONS.items()}


def decode_request(name: str, body: bytes, *, quick: bool = False) -> Any:
    """The request of operation ``name`` decoded from its JSON body (:func:`decode_body`).

    ``quick``: by msgspec alone (cheap enough for the event loop); any error then
    (``RecursionError`` too) leaves it to the full decode.

    Raises:
        msgspec.DecodeError: not JSON (``msgspec.ValidationError``: not this request).
    """
    return _DECODERS[name].decode(body) if quick else decode_body(_DECODERS[name], body)
