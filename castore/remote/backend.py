"""The ``http://`` backend: the :class:`~castore.backend.Backend` contract over ``castore serve``.

Each contract call is one backend-protocol call (:mod:`castore.wire`) to the
coordinator that owns the ref's keyspace. A write is optimistic: the newest
entry is read, the decision runs here (it reads more of the ref through
:class:`_RemoteView`), and what it appends is sent with the version it saw;
if another write came first the server says so and sends the new newest
entry, and the decision runs again, for at most the lock timeout. So every
decision of ``Store`` (guards, diff, rollback, patch, incr, imports) works
unchanged, and runs exactly once against the version it is applied to.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator, Mapping

import msgspec

from castore.backend import Current, Decide, NewVersion, Progress, newest_first
from castore.cluster import parse_members
from castore.errors import InvalidValueError, LockTimeoutError
from castore.keys import Ref
from castore.records import BlobLoc, Entry
from castore.remote.transport import Transport
from castore.reports import CheckReport, CompactReport, GCReport, Retention, StoreStats
from castore.results import ListEntry
from castore.wire import (
    STALE,
    Append,
    CheckCall,
    CompactCall,
    GCCall,
    HistoryCall,
    NamespaceCall,
    NoArgs,
    RefCall,
    Replace,
    ScopeCall,
    VersionCall,
    to_wire,
)

__all__ = ["RemoteBackend"]

_MAX_PAGE = 256  # entries per history call of an iteration


def _call(ref: Ref) -> RefCall:
    return RefCall(scope=ref.scope, namespace=ref.namespace, key=ref.key)


class _RemoteView:
    """What a decision reads of its ref: the newest value it was given, the rest on demand."""

    def __init__(self, backend: RemoteBackend, ref: Ref, newest: bytes | None) -> None:
        self._backend, self._ref, self._newest = backend, ref, newest

    def value(self) -> bytes | None:
        return self._newest

    def entry_at(self, version: int) -> Entry | None:
        page = self._backend.history(self._ref, version + 1, 1)
        return page[0] if page and page[0].first <= version <= page[0].version else None

    def value_at(self, entry: Entry) -> bytes | None:
        return self._backend.version(self._ref, entry.version)[1]

    def absolute(self, loc: BlobLoc) -> BlobLoc:
        return loc  # a hint of the server's; it is not sent (castore.wire.to_wire)


class RemoteBackend:
    """A store served by ``castore serve`` at ``location`` (one URL, or a cluster's list).

    Args:
        location: ``http://host:port`` or ``https://…``, or several, comma-separated.
        lock_timeout: how long a write keeps deciding again while other writes come first.

    Raises:
        InvalidValueError: the location is not a list of coordinator URLs.
    """

    def __init__(self, location: str, *, lock_timeout: float) -> None:
        try:
            members = parse_members(location)
        except ValueError as exc:
            raise InvalidValueError(str(exc)) from None
        token = os.environ.get("CASTORE_TOKEN") or None
        self._lock_timeout = lock_timeout
        self._transport = Transport(members, token, read_timeout=lock_timeout + 30.0)
        self._clustered = len(members) > 1

    # -- reads -------------------------------------------------------------------------

    def current(self, ref: Ref) -> Current:
        """Newest entry of ``ref`` and its value."""
        reply = self._transport.call("current", _call(ref), ref[:2])
        return Current(reply.entry, reply.value)

    def exists(self, ref: Ref) -> bool:
        """True if ``ref`` has any stored record."""
        return bool(self._transport.call("exists", _call(ref), ref[:2]))

    def version(self, ref: Ref, version: int) -> tuple[Entry | None, bytes | None]:
        """The entry of ``version`` and its value."""
        call = VersionCall(scope=ref.scope, namespace=ref.namespace, key=ref.key, version=version)
        reply = self._transport.call("version", call, ref[:2])
        return reply.entry, reply.value

    def history(self, ref: Ref, before: int, limit: int) -> list[Entry]:
        """Entries below ``before``, newest first, at most ``limit`` (0 = all)."""
        call = HistoryCall(
            scope=ref.scope, namespace=ref.namespace, key=ref.key, before=before, limit=limit
        )
        return list(self._transport.call("history", call, ref[:2]))

    def iter_versions(self, ref: Ref) -> Iterator[tuple[Entry, bytes | None]]:
        """Every entry, oldest first, with its verified value."""
        for item in self._transport.stream("iter_versions", _call(ref), ref[:2]):
            yield item.entry, item.value

    def iter_newest_first(self, ref: Ref) -> Iterator[Entry]:
        """Every entry, newest first, a page at a time."""
        newest = self.current(ref).entry
        return newest_first(newest, lambda before, size: self.history(ref, before, size), _MAX_PAGE)

    def keys(self, scope: str, namespace: str, prefix: str, *, verify: bool = False) -> list[str]:
        """Keys ever created in a namespace starting with ``prefix``."""
        call = NamespaceCall(scope=scope, namespace=namespace, prefix=prefix, verify=verify)
        return list(self._transport.call("keys", call, (scope, namespace)))

    def namespaces(self, scope: str) -> list[str]:
        """Namespaces of ``scope`` holding a key, on every member of a cluster."""
        found: set[str] = set()
        for member in self._transport.members:
            found.update(
                self._transport.call("namespaces", ScopeCall(scope=scope), None, to=member)
            )
        return sorted(found, key=lambda name: name.encode("utf-8", "surrogatepass"))

    def listing(self, scope: str, namespace: str, prefix: str) -> Mapping[str, ListEntry | None]:
        """What the server knows of the keys' newest versions."""
        call = NamespaceCall(scope=scope, namespace=namespace, prefix=prefix)
        return dict(self._transport.call("listing", call, (scope, namespace)))

    def remember(self, scope: str, namespace: str, keys: list[str]) -> None:
        """Passed on to the server's backend (a hint)."""
        call = NamespaceCall(scope=scope, namespace=namespace, keys=keys)
        self._transport.call("remember", call, (scope, namespace))

    # -- writes ------------------------------------------------------------------------

    def write(self, ref: Ref, decide: Decide) -> tuple[Entry | None, list[Entry]]:
        """Run ``decide`` on the newest entry; append what it returns if that is still newest.

        Raises:
            LockTimeoutError: other writes kept coming first for the lock timeout.
        """
        current = self.current(ref)
        entry, value = current.entry, current.value
        deadline = time.monotonic() + self._lock_timeout
        while True:
            decided = decide(entry, _RemoteView(self, ref, value if entry and entry.live else None))
            if decided is None:
                return entry, []
            news = decided if isinstance(decided, list) else [decided]
            if not news:
                return entry, []
            request_id = secrets.token_hex(16)
            append = Append(
                scope=ref.scope,
                namespace=ref.namespace,
                key=ref.key,
                expect=entry.version if entry is not None else 0,
                versions=[to_wire(_with_id(new, request_id)) for new in news],
                request_id=request_id,
            )
            resend = msgspec.structs.replace(append, retry=True)
            reply = self._transport.call("append", append, ref[:2], resend=resend)
            if reply.status != STALE:
                return reply.previous, list(reply.written)
            if time.monotonic() > deadline:
                raise LockTimeoutError(str(ref), self._lock_timeout)
            entry, value = reply.previous, reply.value

    def replace(self, ref: Ref, new_versions: list[NewVersion]) -> list[Entry]:
        """Replace ``ref``'s whole history (an import's overwrite)."""
        versions = [to_wire(new) for new in new_versions]
        call = Replace(scope=ref.scope, namespace=ref.namespace, key=ref.key, versions=versions)
        return list(self._transport.call("replace", call, ref[:2]))

    # -- maintenance: the server's own store ---------------------------------------------

    def _maintenance(self, name: str, call: object) -> object:
        if self._clustered:
            raise InvalidValueError(
                f"{name} runs on one coordinator's store: give one URL, not a cluster's list"
            )
        return self._transport.call(name, call, None)

    def check(self, *, repair: bool, progress: Progress | None) -> CheckReport:
        """The server's check of its store."""
        report = self._maintenance("check", CheckCall(repair=repair))
        assert isinstance(report, CheckReport)  # noqa: S101  # the call's reply type
        return report

    def collect_garbage(
        self, *, grace_seconds: float, dry_run: bool, progress: Progress | None
    ) -> GCReport:
        """The server's gc of its store."""
        report = self._maintenance(
            "collect_garbage", GCCall(grace_seconds=grace_seconds, dry_run=dry_run)
        )
        assert isinstance(report, GCReport)  # noqa: S101  # the call's reply type
        return report

    def compact(
        self, retention: Retention, *, dry_run: bool, progress: Progress | None
    ) -> CompactReport:
        """The server's compaction of its store."""
        report = self._maintenance("compact", CompactCall(retention=retention, dry_run=dry_run))
        assert isinstance(report, CompactReport)  # noqa: S101  # the call's reply type
        return report

    def stats(self) -> StoreStats:
        """The server's store's counts."""
        report = self._maintenance("stats", NoArgs())
        assert isinstance(report, StoreStats)  # noqa: S101  # the call's reply type
        return report

    def close(self) -> None:
        """Close the connections (opened again on use)."""
        self._transport.close()


def _with_id(new: NewVersion, request_id: str) -> NewVersion:
    """``new`` with ``request_id`` in its audit record (how a retry is recognized)."""
    return new._replace(audit=msgspec.structs.replace(new.audit, request_id=request_id))
