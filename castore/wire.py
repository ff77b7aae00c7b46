"""The backend protocol over HTTP: the messages between an ``http://`` store and ``castore serve``.

A store whose location is a coordinator's URL talks to it through the
:class:`~castore.backend.Backend` contract, one call per request:
``POST /v1/backend/<call>`` with a MessagePack body (one struct of
:data:`CALLS`), answered with MessagePack (the call's reply type). Entries,
audit records and reports travel as the structs every backend returns, so a
remote store answers exactly as a local one (docs/SERVER.md, "The backend
protocol").

A write is optimistic: the client reads the newest entry, runs the write's
decision itself and sends what it appends, with the version it decided on
(:class:`Append`); the server appends only if that is still the newest
version, under the ref's lock, else answers :data:`STALE` with the new
newest entry. Every append carries a request id, stored in the audit record
of the versions it writes, so a retried append whose first attempt was
applied is recognized and answered as :data:`APPLIED` (never written twice).

Errors are JSON bodies, as for every endpoint, with the exception's class and
constructor arguments, so the client raises the same exception
(:func:`exception_of`).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import msgspec

from castore import errors
from castore.backend import NewVersion
from castore.records import Audit, BlobLoc, Entry
from castore.reports import CheckReport, CompactReport, GCReport, Retention, StoreStats
from castore.results import ListEntry

__all__ = [
    "APPLIED",
    "CALLS",
    "CALL_BODY_MAX",
    "CLUSTER_HEADER",
    "FRAME_END",
    "FRAME_ERROR",
    "FRAME_ITEM",
    "LOCK_TIMEOUT_HEADER",
    "MEMBERS_HEADER",
    "PEER_HEADER",
    "RETRY_WINDOW",
    "STALE",
    "UNKNOWN",
    "WRITTEN",
    "Append",
    "AppendReply",
    "Call",
    "Misdirected",
    "WireError",
    "WireVersion",
    "exception_args",
    "exception_of",
    "frame",
    "from_wire",
    "retry_soon",
    "to_wire",
]

CLUSTER_HEADER: Final = "castore-cluster"  # the digest of the client's member list
MEMBERS_HEADER: Final = "castore-members"  # how many members the client's list has
LOCK_TIMEOUT_HEADER: Final = "castore-lock-timeout"  # the client's lock timeout, in seconds
PEER_HEADER: Final = "castore-peer"  # a cluster member's look at another's list: not logged
RETRY_WINDOW: Final = 64  # a retried append is found among this many newest versions
# The largest body of a backend call a server reads: an import sends a key's whole history
# in one call (``append`` for a new key, ``replace`` for an overwrite).
CALL_BODY_MAX: Final = 64 * 1024 * 1024

# A streamed reply is a sequence of frames: kind (1 byte), length (4 bytes, big-endian), payload.
FRAME_ITEM: Final = b"i"  # one item, MessagePack
FRAME_ERROR: Final = b"e"  # the error that ended the stream, a JSON error body
FRAME_END: Final = b"z"  # the stream is complete (without it, it was cut)

WRITTEN: Final = "written"  # appended now
APPLIED: Final = "applied"  # a retry of an append that was applied before: not appended again
STALE: Final = "stale"  # the newest version is not the one the decision saw: decide again
# A retry whose id is not among the versions searched, where they do not reach back to its
# expected version (more than RETRY_WINDOW since, or a version unreadable): it may be applied.
UNKNOWN: Final = "unknown"


class _Msg(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request of the backend protocol."""


class RefCall(_Msg, frozen=True, kw_only=True):
    """A call about one ref: ``current``, ``exists``, ``iter_versions``."""

    scope: str
    namespace: str
    key: str


class WireVersion(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A :class:`~castore.backend.NewVersion` as it travels.

    ``hint`` is a location the server sent in an entry (a rollback's target, the
    previous version's blob): the server verifies the frame there by its digest
    before it points at it, and only a log of its own store is ever opened.
    Fields at their defaults are left out, so a server of an earlier release
    (which knows no ``hint``) still takes every version that carries none.
    """

    op: str
    normalized: bytes | None
    digest_hex: str
    audit: Audit
    hint: BlobLoc | None = None
    version: int = 0
    time_ns: int = 0
    created_ns: int = 0
    damaged_from: int = 0


class Append(RefCall, frozen=True, kw_only=True):
    """Append ``versions`` if the newest entry is still the one the decision saw.

    The newest entry is named by its version, time and hash (``expect`` 0: no
    entry), so an entry of the same number with other content (an import's
    overwrite, another store's copy) never passes for it. No ``versions``: a
    decision that writes nothing; the server makes that entry durable as it is.
    """

    expect: int
    expect_time_ns: int = 0
    expect_hash: str = ""
    versions: list[WireVersion]
    request_id: str
    retry: bool = False  # a resend: look for ``request_id`` first


class Replace(RefCall, frozen=True, kw_only=True):
    """Replace the ref's whole history (an import's overwrite) if its newest entry is ``seen``.

    ``seen`` is what the import's first pass read (None: not checked, as before it was sent).
    """

    versions: list[WireVersion]
    seen: Entry | None = None


class VersionCall(RefCall, frozen=True, kw_only=True):
    """``version``: one version's entry and value."""

    version: int


class HistoryCall(RefCall, frozen=True, kw_only=True):
    """``history``: entries below ``before``, newest first, at most ``limit`` (0: all)."""

    before: int
    limit: int


class NamespaceCall(_Msg, frozen=True, kw_only=True):
    """A call about one namespace: ``keys``, ``listing``, ``remember``."""

    scope: str
    namespace: str
    prefix: str = ""
    verify: bool = False
    keys: list[str] = []


class ScopeCall(_Msg, frozen=True, kw_only=True):
    """``namespaces``, ``removed``: the namespaces of a scope, its removed keys."""

    scope: str


class CheckCall(_Msg, frozen=True, kw_only=True):
    """``check``: verify everything; ``repair`` what can be repaired."""

    repair: bool = False


class GCCall(_Msg, frozen=True, kw_only=True):
    """``collect_garbage``."""

    grace_seconds: float
    dry_run: bool = False


class CompactCall(_Msg, frozen=True, kw_only=True):
    """``compact`` by ``retention``."""

    retention: Retention
    dry_run: bool = False


class NoArgs(_Msg, frozen=True, kw_only=True):
    """A call without arguments (``stats``)."""


class EntryValue(msgspec.Struct, frozen=True, array_like=True):
    """An entry and its value (``current``, ``version``, a stream of ``iter_versions``)."""

    entry: Entry | None
    value: bytes | None


class AppendReply(msgspec.Struct, frozen=True, kw_only=True):
    """What an :class:`Append` did: ``written``, ``applied``, ``stale`` or ``unknown``.

    ``previous`` is the newest entry before the write (for :data:`STALE`: the
    newest entry now); ``written`` what the write appended.
    """

    status: str
    previous: Entry | None
    written: list[Entry] = []


class Misdirected(msgspec.Struct, frozen=True, kw_only=True):
    """A 421 answer: the server's member list and the keyspace's owner under it."""

    code: str
    message: str
    cluster: list[str]
    owner: str = ""


class WireError(msgspec.Struct, frozen=True, kw_only=True):
    """The ``error`` member of an error body: the stable code, and the exception to raise."""

    code: str
    message: str
    exception: str = ""
    args: list[Any] = []
    errno: str = ""  # an io_error's errno, by name (numbers differ between systems)


class Call(NamedTuple):
    """One call of the protocol: its request and reply types, and how it may be sent.

    ``resend``: safe to send again when its answer was lost (a read, or an
    append, which the server recognizes). ``writes``: it may change the store (a
    lost answer means it may or may not have been applied). ``maintenance``: about
    the whole store, with no time limit. ``survey``: asked of every member of a
    cluster, whose answers the client keeps by who owns them under its list (so
    only a member with the client's list answers). ``resend_unless``: a flag of the request
    that, when set, makes it a call not to send again (``check``'s ``repair``: a
    second run would report only what the first one left).
    """

    request: type[_Msg]
    reply: Any
    resend: bool = True
    writes: bool = False
    maintenance: bool = False
    survey: bool = False
    resend_unless: str = ""

    def resendable(self, request: Any) -> bool:
        """True if ``request`` may be sent again when its answer was lost."""
        return self.resend and not (self.resend_unless and getattr(request, self.resend_unless))


# call name -> its Call; the server's routes and the client's calls.
CALLS: Final[dict[str, Call]] = {
    "current": Call(RefCall, EntryValue),
    "append": Call(Append, AppendReply, writes=True),
    "replace": Call(Replace, list[Entry], resend=False, writes=True),
    "exists": Call(RefCall, bool),
    "keys": Call(NamespaceCall, list[str]),
    "namespaces": Call(ScopeCall, list[str], survey=True),
    "removed": Call(ScopeCall, list[tuple[str, str, int]], survey=True),
    "listing": Call(NamespaceCall, dict[str, ListEntry | None]),
    "remember": Call(NamespaceCall, None),
    "version": Call(VersionCall, EntryValue),
    "history": Call(HistoryCall, list[Entry]),
    "iter_versions": Call(RefCall, list[EntryValue]),  # streamed: one EntryValue per frame
    "check": Call(CheckCall, CheckReport, writes=True, maintenance=True, resend_unless="repair"),
    "collect_garbage": Call(GCCall, GCReport, resend=False, writes=True, maintenance=True),
    "compact": Call(CompactCall, CompactReport, resend=False, writes=True, maintenance=True),
    "stats": Call(NoArgs, StoreStats, maintenance=True),
}


def to_wire(new: NewVersion) -> WireVersion:
    """``new`` as it travels (its hint is one of the server's locations: it came from there)."""
    return WireVersion(
        op=new.op,
        normalized=new.normalized,
        digest_hex=new.digest_hex,
        audit=new.audit,
        hint=new.hint,
        version=new.version,
        time_ns=new.time_ns,
        created_ns=new.created_ns,
        damaged_from=new.damaged_from,
    )


def from_wire(version: WireVersion) -> NewVersion:
    """The :class:`~castore.backend.NewVersion` a :class:`WireVersion` stands for."""
    return NewVersion(
        version.op,
        version.normalized,
        version.digest_hex,
        version.audit,
        version.hint,
        version.version,
        version.time_ns,
        version.created_ns,
        version.damaged_from,
    )


# The exceptions a server may send back by name, rebuilt from their arguments.
_EXCEPTIONS: Final[dict[str, type[errors.CastoreError]]] = {
    name: getattr(errors, name)
    for name in errors.__all__
    if name not in ("CastoreError", "BackendUnavailableError")
}
_PLAIN: Final = (str, int, float, bool, type(None))


def exception_args(exc: BaseException) -> tuple[str, list[Any]]:
    """The class name and constructor arguments of one of castore's exceptions ("" otherwise).

    They are the arguments pickling rebuilds it from (``__reduce__``: every
    castore exception survives pickling, castore.errors), so the client
    raises the same exception with the same message.
    """
    name = type(exc).__name__
    if _EXCEPTIONS.get(name) is not type(exc):
        return "", []
    args = exc.__reduce__()[1]
    if isinstance(args, tuple) and all(isinstance(a, _PLAIN) for a in args):
        return name, list(args)
    return "", []


def exception_of(error: WireError) -> errors.CastoreError | None:
    """The exception an error body names, rebuilt; None if it names none (or a bad one)."""
    kind = _EXCEPTIONS.get(error.exception)
    if kind is None:
        return None
    try:
        exc = kind(*error.args)
        str(exc)  # a message that cannot be made is no exception to raise
    except Exception:  # noqa: BLE001  # arguments from the network: any failure means "none"
        return None
    return exc


def retry_soon(body: bytes) -> bool:
    """Whether an error body says to try again shortly (cluster members settling their lists).

    Such a refusal wrote nothing (docs/SERVER.md, "A cluster"): the error's ``retry`` member.
    """
    try:
        found = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # msgspec recurses per level of nesting
        return False
    error = found.get("error") if isinstance(found, dict) else None
    return isinstance(error, dict) and error.get("retry") is True


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame of a streamed reply."""
    return kind + len(payload).to_bytes(4, "big") + payload
