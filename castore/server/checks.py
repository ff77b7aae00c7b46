"""What a worker sends over the backend protocol, checked before the store sees it.

A worker builds the versions it appends (:mod:`castore.wire`); the server
trusts none of it: names are resolved without the server's own DAG names,
each version is what its operation allows (the rules an import's lines
follow, castore.transfer), values are normalized JSON that hash to their
digest, numbers fit, and explicit versions and times come only with an
import-style append (to a key with no entry).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Final

import msgspec

from castore import codec
from castore.backend import NewVersion
from castore.errors import InvalidValueError
from castore.identity import check_audit
from castore.jsonparse import check_depth, with_deep_members, without_lone_surrogates
from castore.jsonrules import MAX_DEPTH
from castore.keys import Ref, resolve_namespace, validate_key
from castore.records import OP_DAMAGED, OP_DELETE, OP_ROLLBACK, OP_SET
from castore.wire import NamespaceCall, RefCall, WireVersion, from_wire

__all__ = [
    "check_limit",
    "checked_versions",
    "decode_body",
    "namespace_of",
    "ref_of",
    "request_id_of",
]

_OPS: Final = frozenset({OP_SET, OP_DELETE, OP_ROLLBACK, OP_DAMAGED})
_MAX_NUMBER: Final = 2**63 - 1  # versions and nanosecond times: what every backend stores
_REQUEST_ID: Final = re.compile(r"[0-9a-f]{16,64}")


def namespace_of(call: RefCall | NamespaceCall) -> tuple[str, str]:
    """The call's scope and namespace, resolved without any DAG name (never the server's).

    Raises:
        InvalidRefError: a bad scope or namespace (an empty one of ``dag`` or ``root_dag``).
    """
    return call.scope, resolve_namespace(call.scope, call.namespace, dag=None, root_dag=None)


def ref_of(call: RefCall) -> Ref:
    """The call's ref, validated as every store call validates one.

    Raises:
        InvalidRefError: a bad scope, namespace or key.
    """
    scope, namespace = namespace_of(call)
    return Ref(scope, namespace, validate_key(call.key))


def check_limit(value: float, what: str) -> None:
    """A count or version that must be a finite number from 0 to 2**63 - 1.

    Raises:
        InvalidValueError: it is not.
    """
    if not (math.isfinite(value) and 0 <= value <= _MAX_NUMBER):
        raise InvalidValueError(f"{what} {value} is out of range")


def request_id_of(text: str) -> str:
    """A request id: 16 to 64 lowercase hex digits.

    Raises:
        InvalidValueError: it is not.
    """
    if not _REQUEST_ID.fullmatch(text):
        raise InvalidValueError("a request id is 16 to 64 lowercase hex digits")
    return text


def _checked(version: WireVersion, explicit: bool) -> NewVersion:
    """One version, once it is what its operation allows (the rules of an import's lines)."""
    if version.op not in _OPS:
        raise InvalidValueError(f"unknown operation {version.op!r}")
    numbers = (version.version, version.time_ns, version.created_ns, version.damaged_from)
    for number in numbers:
        check_limit(number, "a version or time")
    if any(numbers[:3]) and not explicit:
        raise InvalidValueError("explicit versions and times only in an import (expect 0)")
    # Bounded as the library bounds a write's, an import's too (every export line fits).
    check_audit(version.audit, sources=not version.version)
    if version.version and not version.time_ns:
        raise InvalidValueError("an explicit version comes with its time (time_ns 1 or more)")
    if version.digest_hex and not codec.is_digest(version.digest_hex):
        raise InvalidValueError("a digest is 64 lowercase hex characters")
    if version.op == OP_DAMAGED:
        if not explicit or version.normalized is not None:
            raise InvalidValueError("a damaged entry comes only from an import, with no value")
        if version.damaged_from > version.version:
            raise InvalidValueError("a damaged range ends before it starts")
        return from_wire(version)
    if version.damaged_from:
        raise InvalidValueError("only a damaged entry has a damaged range")
    if version.op == OP_DELETE:
        if version.normalized is not None or version.digest_hex:
            raise InvalidValueError("a delete carries no value")
        return from_wire(version)
    if version.normalized is None:
        raise InvalidValueError(f"a {version.op} without a value")
    if codec.normalize(version.normalized) != version.normalized:
        raise InvalidValueError("the value is not normalized JSON")
    if codec.hexdigest(version.normalized) != version.digest_hex:
        raise InvalidValueError("the value does not hash to its digest")
    return from_wire(version)


def checked_versions(
    versions: list[WireVersion], *, explicit: bool, request_id: str = ""
) -> list[NewVersion]:
    """The versions a worker asks to append, checked; ``request_id`` put in their audit records.

    An import's version that already names the request that first wrote it keeps that id.

    ``explicit``: the append may give versions and times (an import, to a key with
    no entry), each for every version or for none; they must then increase, and
    times never go back.

    Raises:
        InvalidValueError: no versions, or one that breaks a rule.
    """
    if not versions:
        raise InvalidValueError("nothing to append")
    out = [_checked(version, explicit) for version in versions]
    for given in ("version", "time_ns"):  # the ones not given are the next, and now
        if len({bool(getattr(new, given)) for new in out}) > 1:
            raise InvalidValueError(f"{given} is given for some versions of an append, not all")
    for before, after in itertools.pairwise(out):
        if after.version and after.version <= before.version:
            raise InvalidValueError(f"version {after.version} after {before.version}")
        if after.time_ns and after.time_ns < before.time_ns:
            raise InvalidValueError("times go back within one append")
    if request_id:  # an import keeps the ids its history was written with
        audit = msgspec.structs.replace
        out = [
            new
            if explicit and new.audit.request_id
            else new._replace(audit=audit(new.audit, request_id=request_id))
            for new in out
        ]
    return out


_JSON_TEXT_MEMBERS: Final = ("value", "default", "patch", "by")  # msgspec.Raw: any depth


def decode_body(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """A JSON API request's body, read as the CLI reads its arguments.

    A lone surrogate escape reads as U+FFFD (msgspec refuses it; Go does not), and a
    value nested deeper than msgspec recurses (about 1,000; the CLI takes Go's 10,000)
    is read without recursion.

    Raises:
        msgspec.DecodeError: not JSON (``msgspec.ValidationError``: not this request).
    """
    try:
        return decoder.decode(body)
    except msgspec.DecodeError:
        repaired = without_lone_surrogates(body)
        if repaired is None:
            raise
        return decode_body(decoder, repaired)
    except RecursionError:
        pass
    check_depth(body, MAX_DEPTH + 1)  # a value's depth, in the request's object (C speed)
    try:
        return with_deep_members(body, decoder.decode, _JSON_TEXT_MEMBERS)
    except ValueError as exc:
        raise msgspec.DecodeError(str(exc)) from None
