"""The OpenAPI 3.1 description of the server, made from the code itself.

Each path comes from the operation table (:data:`~castore.server.operations.OPERATIONS`):
the request schema from its request struct, the response schema from the
line the CLI prints (:mod:`castore.results`), field names and order as
written, and the error responses from :data:`~castore.server.errors.CODES`.
``castore serve --openapi`` prints :func:`openapi_json`; docs/openapi.json
holds it, and a test checks that the file and the app's routes agree with it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

import castore
from castore.defaults import MAX_LOCK_TIMEOUT_SECONDS
from castore.lines import GoString, RawJSON
from castore.server.errors import CODES
from castore.server.operations import OPERATIONS
from castore.server.rpc import BACKEND_CALLS
from castore.wire import CALLS, LOCK_TIMEOUT_HEADER

__all__ = ["openapi", "openapi_json"]

_ANY: Final[dict[str, Any]] = {"description": "any JSON value (its number literals kept exactly)"}
_SIMPLE: Final[dict[type, str]] = {
    mi.IntType: "integer",
    mi.FloatType: "number",
    mi.BoolType: "boolean",
    mi.StrType: "string",
    mi.NoneType: "null",
}
_ERROR_STATUSES: Final = (400, 401, 404, 405, 409, 413, 421, 500, 503)


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph as one line of Markdown (reST roles made plain)."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text).replace("``", "`")


class _Schemas:
    """JSON Schemas of msgspec types; each struct once, as a component."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, kind: mi.Type) -> dict[str, Any]:
        """The schema of one type (a ``$ref`` for a struct)."""
        if type(kind) in _SIMPLE:
            return {"type": _SIMPLE[type(kind)]}
        if isinstance(kind, mi.Metadata):  # a type with documentation of its own
            return {**self.of(kind.type), **(kind.extra_json_schema or {})}
        if isinstance(kind, mi.BytesType):
            return {"type": "string", "contentMediaType": "application/octet-stream"}
        if isinstance(kind, mi.CustomType) and kind.cls is GoString:
            return {"type": "string"}
        if isinstance(kind, mi.AnyType | mi.RawType) or (
            isinstance(kind, mi.CustomType) and kind.cls is RawJSON
        ):
            return dict(_ANY)
        if isinstance(kind, mi.UnionType):
            parts = [self.of(part) for part in kind.types]
            if _ANY in parts:  # a value or null: any JSON value
                return dict(_ANY)
            if all(set(part) == {"type"} for part in parts):
                return {"type": [part["type"] for part in parts]}
            return {"anyOf": parts}
        if isinstance(kind, mi.ListType):
            return {"type": "array", "items": self.of(kind.item_type)}
        if isinstance(kind, mi.TupleType):  # a fixed-length array (OpenAPI 3.1)
            n = len(kind.item_types)
            items = [self.of(part) for part in kind.item_types]
            return {"type": "array", "prefixItems": items, "minItems": n, "maxItems": n}
        if isinstance(kind, mi.DictType):
            return {"type": "object", "additionalProperties": self.of(kind.value_type)}
        if isinstance(kind, mi.StructType):
            return self.struct(kind.cls)
        raise NotImplementedError(kind)

    def struct(self, cls: type[msgspec.Struct]) -> dict[str, Any]:
        """A ``$ref`` to the component of struct ``cls``, made on first use."""
        name = cls.__name__
        if name not in self.components:
            self.components[name] = {}  # taken: a struct that holds itself refers to it
            self.components[name] = self._object(mi.type_info(cls))
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, info: mi.Type) -> dict[str, Any]:
        assert isinstance(info, mi.StructType)  # noqa: S101  # type_info of a struct
        if info.array_like:  # its fields in order, as an array
            items = [self.of(field.type) for field in info.fields]
            return {
                "type": "array",
                "prefixItems": items,
                "description": _summary(info.cls.__doc__),
            }
        request = info.forbid_unknown_fields  # requests refuse unknown fields, lines do not
        properties: dict[str, Any] = {}
        required: list[str] = []
        if info.tag_field is not None:
            properties[info.tag_field] = {"const": info.tag}
            required.append(info.tag_field)
        for field in info.fields:
            schema = self.of(field.type)
            default = field.default
            if request and isinstance(default, int | str | None):  # not NODEFAULT, not Raw
                schema["default"] = default
            properties[field.encode_name] = schema
            if field.required:
                required.append(field.encode_name)
        out: dict[str, Any] = {"type": "object", "description": _summary(info.cls.__doc__)}
        out["properties"] = properties
        if required:
            out["required"] = required
        if request:
            out["additionalProperties"] = False
        return out


def _error_schema() -> dict[str, Any]:
    versions = {
        "expected_version": {
            "type": ["integer", "null"],
            "description": "409 only (conflict, patch_test_failed)",
        },
        "actual_version": {
            "type": "integer",
            "description": "409 only (conflict, patch_test_failed)",
        },
        "errno": {"type": "string", "description": "io_error: the OS's errno name (ENOSPC)"},
        "cluster": {"type": "array", "items": {"type": "string"}, "description": "421 only"},
        "owner": {"type": "string", "description": "421 only: the keyspace's owner"},
        "retry": {"type": "boolean", "description": "503: nothing written, try again shortly"},
        "exception": {"type": "string", "description": "backend protocol: the exception"},
        "args": {"type": "array", "description": "backend protocol: its arguments"},
    }
    detail = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"enum": list(CODES)},
            "message": {"type": "string"},
            **versions,
        },
    }
    return {"type": "object", "required": ["error"], "properties": {"error": detail}}


def _error_responses() -> dict[str, Any]:
    out = {}
    for status in _ERROR_STATUSES:
        codes = ", ".join(f"`{code}`" for code, value in CODES.items() if value == status)
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        out[f"Error{status}"] = {"description": f"error: {codes}", "content": content}
    return out


_LOCK_TIMEOUT: Final = {"$ref": "#/components/parameters/LockTimeout"}


def _lock_timeout_parameter() -> dict[str, Any]:
    return {
        "name": LOCK_TIMEOUT_HEADER,
        "in": "header",
        "required": False,
        "description": "seconds the store waits for each lock, at most the server's own "
        "lock timeout (`bad_request` if not a number from 0 to "
        f"{MAX_LOCK_TIMEOUT_SECONDS:g})",
        "schema": {"type": "number", "minimum": 0, "maximum": MAX_LOCK_TIMEOUT_SECONDS},
    }


def _operation(name: str, schemas: _Schemas) -> dict[str, Any]:
    op = OPERATIONS[name]
    media = "application/x-ndjson" if op.stream else "application/json"
    line = "one JSON line per record" if op.stream else "the line `castore` prints"
    guarded = "expected_version" in op.request.__struct_fields__  # may conflict
    statuses = [s for s in _ERROR_STATUSES if s != 409 or guarded]
    return {
        "operationId": name.replace("-", "_"),
        "summary": op.summary,
        "parameters": [_LOCK_TIMEOUT],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schemas.struct(op.request)}},
        },
        "responses": {
            "200": {"description": line, "content": {media: {"schema": schemas.struct(op.line)}}},
            **{str(s): {"$ref": f"#/components/responses/Error{s}"} for s in statuses},
        },
    }


def _backend_operation(name: str, schemas: _Schemas) -> dict[str, Any]:
    request, reply = CALLS[name].request, CALLS[name].reply
    stream = BACKEND_CALLS[name].stream
    what = "frames, each an item of this array (castore.wire)" if stream else "the reply"
    return {
        "operationId": f"backend_{name}",
        "summary": f"Backend protocol: `{name}` (an http:// store's call; MessagePack)",
        "parameters": [_LOCK_TIMEOUT],
        "requestBody": {
            "required": True,
            "content": {"application/msgpack": {"schema": schemas.struct(request)}},
        },
        "responses": {
            "200": {
                "description": what,
                "content": {"application/msgpack": {"schema": schemas.of(mi.type_info(reply))}},
            },
            **{str(s): {"$ref": f"#/components/responses/Error{s}"} for s in _ERROR_STATUSES},
        },
    }


def _plain_paths() -> dict[str, Any]:
    status = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"const": "ok"},
            "serving": {"type": "boolean", "description": "a clustered server: serves now"},
            "reason": {"type": "string", "description": "why it does not serve (serving false)"},
        },
    }
    ok = {"application/json": {"schema": status}}
    health = {
        "summary": "200 when the store answers a read (no token needed)",
        "operationId": "healthz",
        "security": [],
        "responses": {
            "200": {"description": "the store answers", "content": ok},
            "500": {"$ref": "#/components/responses/Error500"},
            "503": {"$ref": "#/components/responses/Error503"},
        },
    }
    text = {"text/plain": {"schema": {"type": "string"}}}
    metrics = {
        "summary": "Request counts and latencies per operation (Prometheus text format)",
        "operationId": "metrics",
        "responses": {
            "200": {"description": "the metrics", "content": text},
            "401": {"$ref": "#/components/responses/Error401"},
        },
    }
    return {"/healthz": {"get": health}, "/metrics": {"get": metrics}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the server's routes."""
    schemas = _Schemas()
    paths = {f"/v1/{name}": {"post": _operation(name, schemas)} for name in OPERATIONS}
    for name in CALLS:
        paths[f"/v1/backend/{name}"] = {"post": _backend_operation(name, schemas)}
    components = {
        "schemas": {**schemas.components, "Error": _error_schema()},
        "responses": _error_responses(),
        "parameters": {"LockTimeout": _lock_timeout_parameter()},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "castore",
            "version": castore.__version__,
            "description": "A versioned JSON state store over HTTP (docs/SERVER.md).",
        },
        "servers": [{"url": "http://127.0.0.1:7070"}],
        "security": [{"bearer": []}],
        "paths": {**paths, **_plain_paths()},
        "components": components,
    }


def openapi_json() -> str:
    """:func:`openapi` as docs/openapi.json holds it (without its final newline)."""
    return json.dumps(openapi(), indent=2, ensure_ascii=False)
