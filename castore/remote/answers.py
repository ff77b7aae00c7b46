"""What a server's answer must hold before an ``http://`` store believes it.

A local store verifies every value against its entry's hash and reads a key's
versions in order; a remote one receives them. The server verifies what it
sends, so an answer that contradicts itself or the call (a value that does
not hash to its entry's hash, another version than the one asked, a history
page out of order, an append answer that names other versions than those
sent) was garbled on its way or made by something that is not a castore
server: it is :class:`~castore.errors.StoreUnavailableError` ("a bad answer"),
never returned, and never :class:`~castore.errors.CorruptionError`, which
would send the operator to repair a store that may be intact (and which a
write takes for a damaged newest value, writing on).

Each check returns what is wrong (None: nothing); the transport raises it,
naming the server that answered.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from castore.digests import value_sha256
from castore.records import Entry
from castore.wire import APPLIED, WRITTEN, Append, AppendReply, EntryValue

__all__ = ["append_problem", "history_problem", "value_problem", "versions_check"]


def value_problem(reply: EntryValue, version: int = 0) -> str | None:
    """What is wrong with an entry and its value (``version``: the one asked, 0: the newest)."""
    entry, value = reply.entry, reply.value
    if entry is None:
        return None if value is None else "a value without its entry"
    if version and not entry.first <= version <= entry.version:  # a damaged range holds several
        return f"version {entry.version}, asked for version {version}"
    if value is not None and value_sha256(value) != entry.hash:
        return f"the value of version {entry.version} does not hash to its entry's hash"
    return None


def history_problem(page: list[Entry], before: int, limit: int) -> str | None:
    """What is wrong with a history page: entries below ``before``, newest first."""
    if limit and len(page) > limit:
        return f"{len(page)} entries, asked for at most {limit}"
    if page and page[0].version >= before:
        return f"version {page[0].version}, asked for versions below {before}"
    for newer, older in itertools.pairwise(page):
        if older.version >= newer.version:
            return f"version {older.version} after version {newer.version}, not newest first"
    return None


def versions_check() -> Callable[[EntryValue], str | None]:
    """A check of a key's versions streamed oldest first: each verified, newer than the last."""
    last = [0]

    def check(item: EntryValue) -> str | None:
        if item.entry is None:
            return "an item without its entry"
        if item.entry.version <= last[0]:
            return f"version {item.entry.version} after version {last[0]}, not oldest first"
        last[0] = item.entry.version
        return value_problem(item)

    return check


def _written_problem(written: list[Entry], call: Append) -> str | None:
    """What is wrong with the entries written for ``call``'s versions: one each, in order."""
    if len(written) != len(call.versions):
        return f"{len(written)} versions written, {len(call.versions)} sent"
    for at, (entry, sent) in enumerate(zip(written, call.versions, strict=True)):
        if entry.op != sent.op or entry.hash != sent.digest_hex:
            return f"version {entry.version} written is not the one sent"
        if sent.version and entry.version != sent.version:
            return f"version {entry.version} written for version {sent.version}"
        if at and entry.version <= written[at - 1].version:
            return f"version {entry.version} written after version {written[at - 1].version}"
    return None


def append_problem(reply: AppendReply, call: Append) -> str | None:
    """What is wrong with the answer to an append that says its versions are stored."""
    if reply.status not in (WRITTEN, APPLIED):
        return None  # stale or unknown: the write decides again, or says it cannot
    problem = _written_problem(reply.written, call)
    if problem is not None:
        return problem
    previous = reply.previous
    expected = (call.expect, call.expect_time_ns, call.expect_hash)
    if reply.status == WRITTEN and expected != (
        (previous.version, previous.time_ns, previous.hash) if previous else (0, 0, "")
    ):
        return "written after another entry than the one the write was decided on"
    if not reply.written:  # an append of no versions: the entry it named, made durable
        return None if reply.status == WRITTEN else "no versions applied"
    first = reply.written[0]
    if previous is not None and first.version <= previous.version:
        return f"version {first.version} written after version {previous.version}"
    return None
