"""What the damage matrix's calls answered, reduced to what the oracle compares.

Pure data: answers (named tuples of the fields that must match), an
:class:`Outcome` per call (the answer or the exception), the pristine
:class:`Truth`, a damaged copy's :class:`Observed` answers, and the
:class:`Verdict` the oracle gives each call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Generic, NamedTuple, TypeVar

__all__ = [
    "BAD",
    "DAMAGED_OP",
    "DETECTED",
    "INDISTINGUISHABLE",
    "OK",
    "STATUSES",
    "TRACEBACK",
    "CaseContext",
    "CheckAnswer",
    "FindingRow",
    "GetAnswer",
    "HistoryAnswer",
    "HistoryRow",
    "KeyTruth",
    "ListAnswer",
    "ListRow",
    "Observed",
    "Outcome",
    "Reads",
    "SetAnswer",
    "Truth",
    "Verdict",
    "worst",
]

OK: Final = "OK"  # the same answer as the pristine store
DETECTED: Final = "DETECTED"  # a clean refusal or a reported loss
INDISTINGUISHABLE: Final = "INDISTINGUISHABLE"  # a log cut at a frame boundary: an earlier state
BAD: Final = "BAD"  # a wrong answer, or damage nobody reports
TRACEBACK: Final = "TRACEBACK"  # an exception that is not a CastoreError
STATUSES: Final = (OK, DETECTED, INDISTINGUISHABLE, BAD, TRACEBACK)  # mildest first
_RANK: Final = {status: rank for rank, status in enumerate(STATUSES)}
DAMAGED_OP: Final = "damaged"  # HistoryEntry.operation of a gap marker

T = TypeVar("T")


# -- what calls answered ----------------------------------------------------------------


class GetAnswer(NamedTuple):
    """A ``GetResult`` reduced to what must match."""

    found: bool
    version: int
    hash: str
    value_json: bytes | None


class HistoryRow(NamedTuple):
    """One ``HistoryEntry``; ``damaged_from`` is the gap marker's lowest version (or 0)."""

    version: int
    operation: str
    hash: str
    damaged_from: int = 0


class HistoryAnswer(NamedTuple):
    """A ``HistoryResult``'s entries, newest first."""

    rows: tuple[HistoryRow, ...]


class ListRow(NamedTuple):
    """One ``ListEntry`` (``value_json`` only with ``include_values``)."""

    key: str
    version: int
    hash: str
    value_json: bytes | None


class ListAnswer(NamedTuple):
    """A ``ListResult``: entries in order and the keys it skipped."""

    entries: tuple[ListRow, ...]
    skipped: tuple[str, ...]


class SetAnswer(NamedTuple):
    """A ``SetResult``: the version written and its hash."""

    version: int
    hash: str


class FindingRow(NamedTuple):
    """One ``check`` finding."""

    path: str
    problem: str
    severity: str
    repaired: bool


class CheckAnswer(NamedTuple):
    """A ``CheckReport``."""

    ok: bool
    findings: tuple[FindingRow, ...]


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one call gave: its answer, or the exception it raised.

    ``castore``, ``corruption`` and ``format_error`` say whether the exception
    is a ``CastoreError``, a ``CorruptionError`` and a ``FormatVersionError``.
    """

    value: T | None = None
    error: str = ""
    message: str = ""
    castore: bool = False
    corruption: bool = False
    format_error: bool = False

    @property
    def raised(self) -> bool:
        return bool(self.error)

    @property
    def foreign(self) -> bool:
        """Raised an exception that is not a CastoreError (a traceback)."""
        return self.raised and not self.castore

    def same(self, other: Outcome[T]) -> bool:
        """Equal answers, or the same exception class."""
        if self.raised or other.raised:
            return self.error == other.error
        return self.value == other.value

    def __str__(self) -> str:
        if self.raised:
            return f"{self.error}: {self.message}"[:240]
        return repr(self.value)[:240]


# -- the pristine truth and a damaged copy's answers ---------------------------------------


@dataclass(frozen=True)
class KeyTruth:
    """The pristine answers about one key."""

    latest: Outcome[GetAnswer]
    versions: dict[int, Outcome[GetAnswer]]  # 1 .. max_version + 1
    history: Outcome[HistoryAnswer]
    max_version: int  # the highest version that ever existed (removed keys too)
    live_version: int  # 0 when the key is absent

    def value_at(self, version: int) -> GetAnswer | None:
        """The pristine answer at ``version`` when it read (a value or a tombstone)."""
        outcome = self.versions.get(version)
        return None if outcome is None or outcome.raised else outcome.value


@dataclass(frozen=True)
class Truth:
    """The pristine store's answers."""

    keys: dict[str, KeyTruth]
    listing: Outcome[ListAnswer]
    listing_values: Outcome[ListAnswer]


@dataclass
class Reads:
    """Answers of one read phase (``listing``: only before repair)."""

    latest: dict[str, Outcome[GetAnswer]] = field(default_factory=dict)
    versions: dict[str, dict[int, Outcome[GetAnswer]]] = field(default_factory=dict)
    history: dict[str, Outcome[HistoryAnswer]] = field(default_factory=dict)
    listing: Outcome[ListAnswer] | None = None
    listing_values: Outcome[ListAnswer] | None = None


@dataclass
class Observed:
    """Everything one damaged copy answered, phase by phase."""

    before: Reads  # step 1
    guarded: dict[str, Outcome[SetAnswer]]  # step 2: set(expected_version=pristine live)
    checks: list[Outcome[CheckAnswer]]  # step 3: check, check(repair=True), check
    after: Reads  # step 4 reads
    final: dict[str, Outcome[SetAnswer]]  # step 4: unguarded set


@dataclass(frozen=True)
class CaseContext:
    """What the oracle needs to know about the damage."""

    file_kind: str  # FORMAT, KEYS, GRAVES, log, vix, idx
    shape: str  # xor01, xorff, zero, trunc
    clean_cut: bool  # a ref log cut exactly at a frame boundary
    probes: dict[str, bytes]  # key -> normalized value of the step-2 set
    cut_proved: bool = False  # a cut log whose version index records versions cut off


class Verdict(NamedTuple):
    """The judgement of one call; ``phase`` is read, write, check, repair or after."""

    status: str
    phase: str
    call: str
    expected: str = ""
    got: str = ""
    reason: str = ""


def worst(statuses: Iterable[str]) -> str:
    """The most severe status (``OK`` for none)."""
    return max(statuses, key=_RANK.__getitem__, default=OK)
