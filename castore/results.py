"""Result types returned by :class:`castore.Store` (one per operation).

Attributes are Dagu's output fields in snake_case. Values are given twice:
``value`` as Python data (decoded from the stored normalized JSON) and
``value_json`` as the normalized JSON bytes themselves (``None`` when absent),
which is what the CLI prints so that number literals survive exactly.

Each result has a *line* (``GetLine`` for :class:`GetResult`, ...): the one
declaration of its JSON output, Dagu's field names in Dagu's order with
``operation`` first, which the CLI prints (``castore.cli.render``). A line
field takes the result attribute of the same name; a field left at its
default is not written. Strings are :class:`GoString` and values
:class:`RawJSON`, as Go's output struct has ``string`` and ``json.RawMessage``.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from typing import Any, Final, cast

import msgspec

from castore.codec import decode_value
from castore.lines import GoString, RawJSON, render_as

__all__ = [
    "LINE_TYPES",
    "DeleteLine",
    "DeleteResult",
    "DiffLine",
    "DiffResult",
    "GetLine",
    "GetResult",
    "GoString",
    "HistoryEntry",
    "HistoryLine",
    "HistoryResult",
    "IncrLine",
    "IncrResult",
    "ListEntry",
    "ListEntryLine",
    "ListLine",
    "ListResult",
    "PatchLine",
    "PatchResult",
    "RawJSON",
    "RollbackLine",
    "RollbackResult",
    "SetLine",
    "SetResult",
    "VersionDiff",
    "VersionDiffLine",
    "rfc3339",
]


@functools.lru_cache(maxsize=4096)  # times of one listing share their seconds
def _utc_seconds(seconds: int) -> str:
    t = time.gmtime(seconds)
    if not 1 <= t.tm_year <= 9999:  # datetime's range: it raises the same error as before
        return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )


def rfc3339(time_ns: int) -> str:
    """Format Unix nanoseconds as Go's RFC 3339 with trimmed fraction, UTC ``Z``."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    text = _utc_seconds(seconds)
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


class PlainResult(msgspec.Struct, frozen=True, kw_only=True):
    """A result that converts to plain data: its CLI line, as bytes or as Python data."""

    def to_json(self) -> bytes:
        """The JSON the CLI prints for this result (its line: same fields, same order).

        Values are the stored normalized JSON, written verbatim (number literals exact).
        """
        line = LINE_TYPES.get(type(self))
        return render_as(self, line) if line is not None else _encoder.encode(self)

    def to_dict(self) -> dict[str, Any]:
        """:meth:`to_json` decoded: dicts, lists, strings, numbers, bools and None.

        Decoded as :attr:`GetResult.value` is (:func:`castore.codec.decode_value`): at
        any depth, and a number past float64's range (``1e400``) is ``inf``.
        """
        return cast("dict[str, Any]", decode_value(self.to_json()))  # a line is an object


_encoder: Final = msgspec.json.Encoder()


class _Result(PlainResult, frozen=True, kw_only=True):
    scope: str
    namespace: str
    key: str


class GetResult(_Result, frozen=True, kw_only=True):
    """Result of :meth:`Store.get`. ``value`` is the default when not found."""

    found: bool
    version: int = 0
    hash: str = ""
    value: Any = None
    value_json: bytes | None = None


class SetResult(_Result, frozen=True, kw_only=True):
    """Result of :meth:`Store.set`: the new version; ``created`` if the key was absent."""

    version: int
    hash: str
    created: bool


class PatchResult(SetResult, frozen=True, kw_only=True):
    """Result of :meth:`Store.patch`: the set's fields and the new value."""

    value: Any = None
    value_json: bytes | None = None


class IncrResult(SetResult, frozen=True, kw_only=True):
    """Result of :meth:`Store.incr`: the set's fields and the new number (``int`` or ``float``)."""

    number: int | float
    number_json: bytes


class DiffResult(_Result, frozen=True, kw_only=True):
    """Result of :meth:`Store.diff`; fields absent in Dagu's output are 0 / "" / None."""

    changed: bool
    found_previous: bool
    previous_version: int = 0
    version: int = 0
    hash: str = ""
    previous: Any = None
    previous_json: bytes | None = None
    current: Any = None
    current_json: bytes = b""


class DeleteResult(_Result, frozen=True, kw_only=True):
    """Result of :meth:`Store.delete`: ``deleted`` is False when the key was absent."""

    deleted: bool


class ListEntry(_Result, frozen=True, kw_only=True):
    """One live key in a :class:`ListResult`; times are Go RFC 3339 strings."""

    version: int
    hash: str
    created_at: str
    updated_at: str
    value: Any = None
    value_json: bytes | None = None


class ListResult(PlainResult, frozen=True, kw_only=True):
    """Result of :meth:`Store.list`: live entries in byte-wise key order.

    ``skipped`` names keys whose newest record could not be read (corrupt),
    which Dagu would have failed the whole list for.
    """

    scope: str
    namespace: str
    prefix: str
    entries: list[ListEntry]
    skipped: list[str] = msgspec.field(default_factory=list)


class HistoryEntry(PlainResult, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """One version in a key's history: what happened, when, and who did it.

    ``operation`` is ``set``, ``delete``, ``rollback`` or ``damaged``; ``time``
    is Go RFC 3339. Audit fields that were not recorded are empty (omitted in
    JSON). A ``damaged`` entry marks versions ``damaged_from`` (when set)
    through ``version`` that damage made unreadable: before a repair it
    stands for the damaged bytes (``reason`` names the offset), after
    ``check --repair`` for the versions the repair recorded as lost.
    """

    version: int
    operation: str
    hash: str = ""
    time: str
    dag_name: str = ""
    run_id: str = ""
    step_name: str = ""
    attempt: str = ""
    user: str = ""
    host: str = ""
    pid: int = 0
    actor: str = ""
    reason: str = ""
    rollback_from: int = 0
    damaged_from: int = 0


class HistoryResult(_Result, frozen=True, kw_only=True):
    """Result of :meth:`Store.history`: entries newest first.

    ``next_before_version`` is the ``before_version`` of the next page (0 when
    no older version is kept: this page reached version 1, or the oldest one
    compaction left).
    """

    entries: list[HistoryEntry]
    next_before_version: int = 0


class RollbackResult(_Result, frozen=True, kw_only=True):
    """Result of :meth:`Store.rollback`: the new version that restores ``to_version``.

    ``deleted`` is True when ``to_version`` was a tombstone (the rollback deleted the key).
    A rollback to a tombstone of a key already absent writes nothing: ``deleted``
    and ``created`` are False and ``version`` is the key's newest version (unchanged).
    """

    version: int
    hash: str
    to_version: int
    deleted: bool
    created: bool


class VersionDiff(_Result, frozen=True, kw_only=True):
    """Result of :meth:`Store.diff_versions`: an RFC 6902 JSON Patch from one version to another.

    A tombstone compares as JSON ``null``.
    """

    from_version: int
    to_version: int
    from_hash: str
    to_hash: str
    patch: list[dict[str, Any]]


class _Line(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """A result as JSON: camelCase names, a field at its default left out."""


class _RefLine(_Line, frozen=True, kw_only=True):
    scope: GoString
    namespace: GoString
    key: GoString


class GetLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="get"):
    """:class:`GetResult`: ``version`` and ``hash`` only if found, ``value`` if any."""

    found: bool
    version: int = 0
    hash: GoString = GoString()
    value_json: RawJSON | None = msgspec.field(default=None, name="value")


class SetLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="set"):
    """:class:`SetResult`."""

    version: int
    hash: GoString
    created: bool


class PatchLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="patch"):
    """:class:`PatchResult`: a set's line; ``value`` only when asked for (``--include-value``)."""

    version: int
    hash: GoString
    created: bool
    value_json: RawJSON | None = msgspec.field(default=None, name="value")


class IncrLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="incr"):
    """:class:`IncrResult`: a set's line and the new number."""

    version: int
    hash: GoString
    created: bool
    number_json: RawJSON = msgspec.field(name="number")


class DiffLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="diff"):
    """:class:`DiffResult`: Dagu leaves out what did not happen (no previous, no write)."""

    changed: bool
    found_previous: bool
    previous_version: int = 0
    version: int = 0
    hash: GoString = GoString()
    previous_json: RawJSON | None = msgspec.field(default=None, name="previous")
    current_json: RawJSON = msgspec.field(name="current")


class DeleteLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="delete"):
    """:class:`DeleteResult`."""

    deleted: bool


class ListEntryLine(_RefLine, frozen=True, kw_only=True):
    """:class:`ListEntry`: one element of a :class:`ListLine`'s ``entries``."""

    version: int
    hash: GoString
    created_at: GoString
    updated_at: GoString
    value_json: RawJSON | None = msgspec.field(default=None, name="value")


class ListLine(_Line, frozen=True, kw_only=True, tag_field="operation", tag="list"):
    """:class:`ListResult`: ``prefix`` only if one was given; ``skipped`` is not written."""

    scope: GoString
    namespace: GoString
    prefix: GoString = GoString()
    entries: list[ListEntryLine]


class HistoryLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="history"):
    """:class:`HistoryResult`: ``nextBeforeVersion`` only if there is a next page."""

    entries: list[HistoryEntry]
    next_before_version: int = 0


class RollbackLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="rollback"):
    """:class:`RollbackResult`."""

    version: int
    hash: GoString
    to_version: int
    deleted: bool
    created: bool


class VersionDiffLine(_RefLine, frozen=True, kw_only=True, tag_field="operation", tag="diff"):
    """:class:`VersionDiff`."""

    from_version: int
    to_version: int
    from_hash: GoString
    to_hash: GoString
    patch: list[dict[str, Any]]


LINE_TYPES: Final[dict[type[msgspec.Struct], type[msgspec.Struct]]] = {
    GetResult: GetLine,
    SetResult: SetLine,
    PatchResult: PatchLine,
    IncrResult: IncrLine,
    DiffResult: DiffLine,
    DeleteResult: DeleteLine,
    ListEntry: ListEntryLine,
    ListResult: ListLine,
    HistoryResult: HistoryLine,
    RollbackResult: RollbackLine,
    VersionDiff: VersionDiffLine,
}
