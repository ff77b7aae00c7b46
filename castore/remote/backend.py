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

import itertools
import os
import random
import secrets
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import msgspec

from castore.backend import Current, Decide, NewVersion, Progress
from castore.cluster import Cluster, parse_members
from castore.errors import (
    CorruptionError,
    FormatVersionError,
    InvalidValueError,
    LockTimeoutError,
    NotFoundError,
    StoreUnavailableError,
)
from castore.identity import MAX_AUDIT_TEXT
from castore.keys import Ref
from castore.records import BlobLoc, Entry
from castore.remote.answers import append_problem, history_problem, value_problem, versions_check
from castore.remote.transport import REDIRECTS, Rerouted, Transport
from castore.reports import CheckReport, CompactReport, GCReport, Retention, StoreStats
from castore.results import ListEntry
from castore.wire import (
    APPLIED,
    CALL_BODY_MAX,
    RETRY_WINDOW,
    STALE,
    UNKNOWN,
    WRITTEN,
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

_R = TypeVar("_R")
_NEWEST = 2**62  # "below this version": the newest entry of any ref
_MAX_VERSION = 2**63 - 1  # no backend stores a larger version (nor can the protocol carry one)
# What an append or a replace adds to its versions: ids, and the entry a replace expects,
# its audit's ten text fields at their bound in UTF-8.
_CALL_SLACK = 10 * 4 * MAX_AUDIT_TEXT + 4096


def _call(ref: Ref) -> RefCall:
    return RefCall(scope=ref.scope, namespace=ref.namespace, key=ref.key)


class _RemoteView:
    """What a decision reads of its ref: the newest value (read when asked), the rest on demand."""

    def __init__(
        self, backend: RemoteBackend, ref: Ref, newest: Entry | None, value: bytes | None
    ) -> None:
        self._backend, self._ref, self._newest, self._value = backend, ref, newest, value
        self._read: dict[int, bytes | None] = {}  # values entry_at read with their entries

    def value(self) -> bytes | None:
        if self._newest is None or not self._newest.live:
            return None
        if self._value is None:  # read only when a decision asks: a damaged value raises here
            self._value = self._backend.version(self._ref, self._newest.version)[1]
        return self._value

    def entry_at(self, version: int) -> Entry | None:
        """As a local view's: NotFoundError if compacted; CorruptionError if lost."""
        entry, value = self._backend.version(self._ref, version)
        if entry is not None:
            self._read[entry.version] = value
        return entry

    def value_at(self, entry: Entry) -> bytes | None:
        if entry.version in self._read:
            return self._read[entry.version]
        return self._backend.version(self._ref, entry.version)[1]

    def absolute(self, loc: BlobLoc) -> BlobLoc:
        return loc  # already the server's: sent back as the hint of a new version


class RemoteBackend:
    """A store served by ``castore serve`` at ``location`` (one URL, or a cluster's list).

    Args:
        location: ``http://host:port`` or ``https://…``, or several, comma-separated.
        lock_timeout: how long a write keeps deciding again while other writes come first,
            and how long the server's store waits for each lock of a call (at most its own).

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
        # past the server's default request timeout (lock timeout + 30 s): its answer comes first
        self._transport = Transport(
            members, token, read_timeout=lock_timeout + 60.0, lock_timeout=lock_timeout
        )
        self._members = members  # as given: maintenance goes to the one URL named
        # A handle dropped without close() closes its connections when collected.
        weakref.finalize(self, self._transport.close)

    # -- reads -------------------------------------------------------------------------

    settles_all_at_once = False  # the server's store settles each key it is sent

    @property
    def loop_safe_reads(self) -> bool:
        """False: a read is an HTTP request."""
        return False

    def current(self, ref: Ref) -> Current:
        """Newest entry of ``ref`` and its value."""
        reply = self._transport.call("current", _call(ref), ref[:2], check=value_problem)
        return Current(reply.entry, reply.value)

    def check_history_size(self, ref: Ref, new_versions: list[NewVersion]) -> None:
        """Refuse a history over what a server reads of one call (``CALL_BODY_MAX``).

        Measured as the ``replace`` that would carry it, with room for what an
        ``append`` or a ``replace`` adds (:data:`_CALL_SLACK`).
        """
        versions = [to_wire(new) for new in new_versions]
        call = Replace(scope=ref.scope, namespace=ref.namespace, key=ref.key, versions=versions)
        size = len(msgspec.msgpack.encode(call)) + _CALL_SLACK
        if size > CALL_BODY_MAX:
            raise InvalidValueError(
                f"{ref}: its history is {size} bytes over http, more than the"
                f" {CALL_BODY_MAX >> 20} MiB a castore server reads of one call; import it"
                " into the server's store itself (castore --dir STORE import)"
            )

    def exists(self, ref: Ref) -> bool:
        """True if ``ref`` has any stored record."""
        return bool(self._transport.call("exists", _call(ref), ref[:2]))

    def version(self, ref: Ref, version: int) -> tuple[Entry | None, bytes | None]:
        """The entry of ``version`` and its value."""
        if version > _MAX_VERSION:
            return None, None  # never stored: not found, as locally
        call = VersionCall(scope=ref.scope, namespace=ref.namespace, key=ref.key, version=version)
        reply = self._transport.call(
            "version", call, ref[:2], check=lambda reply: value_problem(reply, version)
        )
        return reply.entry, reply.value

    def history(self, ref: Ref, before: int, limit: int) -> list[Entry]:
        """Entries below ``before``, newest first, at most ``limit`` (0 = all)."""
        before, limit = min(before, _MAX_VERSION + 1), min(limit, _MAX_VERSION)  # same answer
        call = HistoryCall(
            scope=ref.scope, namespace=ref.namespace, key=ref.key, before=before, limit=limit
        )
        page = self._transport.call(
            "history", call, ref[:2], check=lambda page: history_problem(page, before, limit)
        )
        return list(page)

    def iter_versions(self, ref: Ref) -> Iterator[tuple[Entry, bytes | None]]:
        """Every entry, oldest first, with its verified value."""
        for item in self._transport.stream("iter_versions", _call(ref), ref[:2], versions_check()):
            yield item.entry, item.value

    def keys(self, scope: str, namespace: str, prefix: str, *, verify: bool = False) -> list[str]:
        """Keys ever created in a namespace starting with ``prefix``."""
        call = NamespaceCall(scope=scope, namespace=namespace, prefix=prefix, verify=verify)
        return list(self._transport.call("keys", call, (scope, namespace)))

    def namespaces(self, scope: str) -> list[str]:
        """Namespaces of ``scope`` holding a key, each from the member that owns it.

        A member's copy of a keyspace it no longer owns (left by a change of the
        member list) is never shown under the list in use (docs/SERVER.md).
        """
        found = {
            name
            for cluster, member, names in self._survey("namespaces", scope)
            for name in names
            if cluster.owner(scope, name) == member
        }
        return sorted(found, key=lambda name: name.encode("utf-8", "surrogatepass"))

    def removed(self, scope: str, namespace: str | None = None) -> list[tuple[str, str, int]]:
        """Each key compaction removed, each from the member that owns its keyspace."""
        found = {
            (ns, key, version)
            for cluster, member, removed in self._survey("removed", scope)
            for ns, key, version in removed
            if cluster.owner(scope, ns) == member and namespace in (None, ns)
        }
        return sorted(found, key=lambda r: (r[0].encode("utf-8"), r[1].encode("utf-8")))

    def _survey(self, name: str, scope: str) -> Iterator[tuple[Cluster, str, Any]]:
        """Each member's answer to ``name``, all under one list: every member's list.

        A member with another list answers 421 (its answers would be kept or dropped
        under the wrong owners); its list is taken and every member asked again.

        Raises:
            StoreUnavailableError: the list kept changing, or a member did not answer.
        """
        for _ in range(REDIRECTS + 1):
            cluster = self._transport.cluster
            try:
                answers = [
                    (member, self._transport.call(name, ScopeCall(scope=scope), member))
                    for member in cluster.members
                ]
            except Rerouted:
                continue
            if self._transport.cluster is cluster:  # no other call changed it meanwhile
                return ((cluster, member, answer) for member, answer in answers)
        raise StoreUnavailableError(
            f"castore server: the coordinators' member list kept changing during {name}"
        )

    def listing(self, scope: str, namespace: str, prefix: str) -> Mapping[str, ListEntry | None]:
        """What the server knows of the keys' newest versions."""
        call = NamespaceCall(scope=scope, namespace=namespace, prefix=prefix)
        return dict(self._transport.call("listing", call, (scope, namespace)))

    def remember(self, scope: str, namespace: str, keys: list[str]) -> None:
        """Passed on to the server's backend (a hint)."""
        call = NamespaceCall(scope=scope, namespace=namespace, keys=keys)
        self._transport.call("remember", call, (scope, namespace))

    # -- writes ------------------------------------------------------------------------

    def _newest(self, ref: Ref) -> tuple[Entry | None, bytes | None]:
        """The newest entry and, when it can be read, its value (a write needs only the entry)."""
        try:
            current = self.current(ref)
        except CorruptionError:  # a damaged newest value: a set or delete still writes
            page = self.history(ref, _NEWEST, 1)
            return (page[0] if page else None), None
        return current.entry, current.value

    def _newest_to_write(self, ref: Ref) -> tuple[Entry | None, bytes | None]:
        """:meth:`_newest`, its damage reported as a local write reports it."""
        try:
            return self._newest(ref)
        except FormatVersionError:
            raise
        except CorruptionError as exc:
            raise CorruptionError(f"{exc.detail}; nothing was written") from None

    def write(self, ref: Ref, decide: Decide) -> tuple[Entry | None, list[Entry]]:
        """Run ``decide`` on the newest entry; append what it returns if that is still newest.

        Raises:
            CorruptionError: damage hides the newest entry; nothing was written.
            LockTimeoutError: other writes kept coming first for the lock timeout.
        """
        entry, value = self._newest_to_write(ref)
        deadline = time.monotonic() + self._lock_timeout
        for attempt in itertools.count():
            try:
                decided = decide(entry, _RemoteView(self, ref, entry, value))
            except NotFoundError:  # a version it read compacted after newer writes came first?
                newest, value = self._newest_to_write(ref)
                if (newest.version if newest else 0) == (entry.version if entry else 0):
                    raise  # no: the answer a local store gives
                if time.monotonic() > deadline:
                    raise LockTimeoutError(str(ref), self._lock_timeout) from None
                entry = newest  # yes: decide again on the newest, as a local store would
                continue
            news = [] if decided is None else decided if isinstance(decided, list) else [decided]
            if not news and entry is None:
                return entry, []
            append = _append(ref, entry, news)  # none: the server makes ``entry`` durable
            try:
                reply = self._transport.call(
                    "append",
                    append,
                    ref[:2],
                    msgspec.structs.replace(append, retry=True),
                    lambda reply: append_problem(reply, append),  # noqa: B023  # called at once
                )
            except Rerouted:  # another member owns it: decide again on its newest entry
                entry, value = self._newest_to_write(ref)
                continue
            if reply.status in (WRITTEN, APPLIED):
                return reply.previous, list(reply.written)
            if reply.status == UNKNOWN:  # a resend the server cannot place: never decided again
                raise StoreUnavailableError(
                    f"castore server: the answer to a write of {ref} was lost, and the server no"
                    f" longer tells whether it was applied (more than {RETRY_WINDOW} versions"
                    " were written since, or one was compacted or is unreadable): it may or may"
                    " not have been"
                    " applied; read the key before writing it again"
                )
            if reply.status != STALE:
                raise StoreUnavailableError(
                    f"castore server: unknown append status {reply.status!r}"
                )
            if time.monotonic() > deadline:
                raise LockTimeoutError(str(ref), self._lock_timeout)
            time.sleep(random.uniform(0, min(0.0005 * 2**attempt, 0.05)))  # noqa: S311  # jitter
            entry, value = reply.previous, None
        raise AssertionError("unreachable")

    def replace(self, ref: Ref, new_versions: list[NewVersion], seen: Entry | None) -> list[Entry]:
        """Replace ``ref``'s whole history (an import's overwrite) if its newest is ``seen``."""
        versions = [to_wire(new) for new in new_versions]
        call = Replace(
            scope=ref.scope, namespace=ref.namespace, key=ref.key, versions=versions, seen=seen
        )
        return list(self._transport.call("replace", call, ref[:2]))

    # -- maintenance: the server's own store ---------------------------------------------

    def _maintenance(self, name: str, call: object, reply: type[_R]) -> _R:
        """Run maintenance on the store of the one coordinator the location named."""
        if len(self._members) > 1:
            raise InvalidValueError(
                f"{name} runs on one coordinator's store: give one URL, not a cluster's list"
            )
        report = self._transport.call(name, call, self._members[0])
        assert isinstance(report, reply)  # noqa: S101  # the call's reply type (castore.wire)
        return report

    def check(self, *, repair: bool, progress: Progress | None) -> CheckReport:
        """The server's check of its store."""
        return self._maintenance("check", CheckCall(repair=repair), CheckReport)

    def collect_garbage(
        self, *, grace_seconds: float, dry_run: bool, progress: Progress | None
    ) -> GCReport:
        """The server's gc of its store."""
        call = GCCall(grace_seconds=grace_seconds, dry_run=dry_run)
        return self._maintenance("collect_garbage", call, GCReport)

    def compact(
        self, retention: Retention, *, dry_run: bool, progress: Progress | None
    ) -> CompactReport:
        """The server's compaction of its store."""
        call = CompactCall(retention=retention, dry_run=dry_run)
        return self._maintenance("compact", call, CompactReport)

    def stats(self) -> StoreStats:
        """The server's store's counts."""
        return self._maintenance("stats", NoArgs(), StoreStats)

    def close(self) -> None:
        """Close the connections (opened again on use)."""
        self._transport.close()


def _append(ref: Ref, newest: Entry | None, news: list[NewVersion]) -> Append:
    """The append of ``news`` after ``newest`` (named by version, time and hash)."""
    request_id = secrets.token_hex(16)
    return Append(
        scope=ref.scope,
        namespace=ref.namespace,
        key=ref.key,
        expect=newest.version if newest is not None else 0,
        expect_time_ns=newest.time_ns if newest is not None else 0,
        expect_hash=newest.hash if newest is not None else "",
        versions=[to_wire(new) for new in news],
        request_id=request_id,
    )
