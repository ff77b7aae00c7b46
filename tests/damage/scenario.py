"""The damage matrix's store and calls: build the pristine store, record what a store answers.

:func:`build_store` writes, through the public API, six live or deleted keys
in namespace ``d`` plus one that compaction removed: small values, a large
one (over 4 KiB: zstd-compressed, deduplicated through the blob index), a
value two keys share, several versions per key, a deleted key, a deleted
then re-created key, a compacted key (keep-last 2) and a key removed by
compaction (its last version in ``GRAVES``). It then reads every version
once, which builds the lazy ``.vix`` indexes.

:func:`observe` runs the four steps on a (damaged) copy, each phase with a
fresh ``Store`` handle: every read; a guarded set per key; ``check``,
``check(repair=True)``, ``check``; every read again and an unguarded set per
key. Each call's answer or exception is recorded by :func:`attempt`. Every
read of a key's newest version also asks the CLI's quick read
(:func:`castore.file.peek.peek`), which must decline or give the same answer;
the guarded sets of step 2 go through the CLI's quick write
(:func:`castore.file.quickset.quick_set`) first, judged as the store's writes are.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from typing import Any, Final, TypeVar

from castore import CastoreError, CheckReport, CorruptionError, Store
from castore.codec import hexdigest, normalize
from castore.errors import FormatVersionError
from castore.file.peek import ABSENT, peek
from castore.file.quickset import quick_set
from castore.identity import ProcessIdentity, audit_fields
from castore.keys import Ref
from castore.results import GetResult, HistoryEntry, HistoryResult, ListResult, SetResult
from tests.damage.answers import (
    DAMAGED_OP,
    CheckAnswer,
    FindingRow,
    GetAnswer,
    HistoryAnswer,
    HistoryRow,
    KeyTruth,
    ListAnswer,
    ListRow,
    Observed,
    Outcome,
    Reads,
    SetAnswer,
    Truth,
)

__all__ = [
    "DAG",
    "KEYS",
    "CaseTimeoutError",
    "attempt",
    "build_store",
    "observe",
    "open_store",
    "probe_value",
    "record_truth",
]

DAG: Final = "d"
KEYS: Final = ("big", "compacted", "deleted", "recreated", "removed", "small", "twin")

T = TypeVar("T")


# -- the pristine store --------------------------------------------------------------------


def large_value(seed: int) -> dict[str, Any]:
    """About 6.5 KB of varied JSON: over 4 KiB, zstd-compressed, deduplicated."""
    rng = random.Random(seed)
    rows = [
        {
            "id": i,
            "name": "".join(rng.choice("abcdefghijklmnop") for _ in range(8)),
            "score": rng.randint(0, 10**6),
        }
        for i in range(150)
    ]
    return {"seed": seed, "rows": rows}


def open_store(root: str) -> Store:
    """A fresh handle on the matrix's namespace."""
    return Store(root, dag=DAG)


def build_store(root: str) -> dict[str, int]:
    """Write the pristine store into ``root``; return each key's highest version ever."""
    store = open_store(root)
    for n in range(4):
        store.set("small", {"n": n})
    store.set("big", {"n": 0})
    store.set("big", large_value(1))
    store.set("big", large_value(2))
    for value in ({"t": 1}, large_value(2), {"t": 3}, large_value(2)):  # shares big's blob
        store.set("twin", value)
    store.set("deleted", {"a": 1})
    store.set("deleted", {"a": 2})
    store.delete("deleted")
    store.set("recreated", {"r": 1})
    store.delete("recreated")
    store.set("recreated", {"r": 2})
    store.set("recreated", {"r": 3})
    for n in range(5):
        store.set("compacted", {"c": n})
    store.set("removed", {"x": 1})
    store.delete("removed")
    highest = {key: store.history(key).entries[0].version for key in KEYS}
    store.compact(keep_last=2, prefix="compacted")
    store.compact(keep_within_seconds=0, prefix="removed")  # into GRAVES
    for key in KEYS:  # the first reader of old versions builds the version index
        store.history(key)
        for version in range(1, highest[key] + 2):
            with contextlib.suppress(CastoreError):
                store.get(key, version=version)
    store.list()  # makes and fills STATE; then a change leaves a P for list to verify
    store.list()  # parses what the first one recorded
    highest["small"] = store.set("small", {"n": 4}).version
    store.close()
    return highest


# -- calls and their answers ------------------------------------------------------------------


class CaseTimeoutError(BaseException):
    """Raised by the alarm when a case runs past CASE_TIMEOUT_SECONDS (a hang)."""


def attempt(call: Callable[[], T]) -> Outcome[T]:
    """Run ``call``; its answer, or the exception it raised (any but an interrupt)."""
    try:
        return Outcome(value=call())
    except (KeyboardInterrupt, CaseTimeoutError):
        raise
    except BaseException as exc:  # noqa: BLE001 - every other exception is an answer to judge
        return Outcome(
            error=type(exc).__name__,
            message=str(exc),
            castore=isinstance(exc, CastoreError),
            corruption=isinstance(exc, CorruptionError),
            format_error=isinstance(exc, FormatVersionError),
        )


def _failed(outcome: Outcome[Any]) -> Outcome[Any]:
    return Outcome(
        error=outcome.error,
        message=outcome.message,
        castore=outcome.castore,
        corruption=outcome.corruption,
        format_error=outcome.format_error,
    )


def get_answer(result: GetResult) -> GetAnswer:
    """What must match in a ``GetResult``."""
    return GetAnswer(result.found, result.version, result.hash, result.value_json)


def _gap_low(entry: HistoryEntry) -> int:
    """A gap marker's lowest version; 0 when unset, or when HistoryEntry lacks the field."""
    if entry.operation != DAMAGED_OP:
        return 0
    value = getattr(entry, "damaged_from", 0)
    return value if isinstance(value, int) else 0


def history_answer(result: HistoryResult) -> HistoryAnswer:
    """What must match in a ``HistoryResult``."""
    return HistoryAnswer(
        tuple(HistoryRow(e.version, e.operation, e.hash, _gap_low(e)) for e in result.entries)
    )


def list_answer(result: ListResult) -> ListAnswer:
    """What must match in a ``ListResult``."""
    rows = tuple(ListRow(e.key, e.version, e.hash, e.value_json) for e in result.entries)
    return ListAnswer(rows, tuple(result.skipped))


def set_answer(result: SetResult) -> SetAnswer:
    """What must match in a ``SetResult``."""
    return SetAnswer(result.version, result.hash)


def check_answer(report: CheckReport) -> CheckAnswer:
    """What the oracle reads in a ``CheckReport``."""
    findings = tuple(FindingRow(f.path, f.problem, f.severity, f.repaired) for f in report.findings)
    return CheckAnswer(report.ok, findings)


class _Phase:
    """One phase's fresh Store handle; when opening it failed, every call gets that failure."""

    def __init__(self, root: str) -> None:
        self.opened = attempt(lambda: open_store(root))

    def run(self, call: Callable[[Store], T]) -> Outcome[T]:
        store = self.opened.value
        if store is None:
            return _failed(self.opened)
        return attempt(lambda: call(store))

    def __enter__(self) -> _Phase:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.opened.value is not None:
            self.opened.value.close()


def _get(key: str, version: int | None = None) -> Callable[[Store], GetAnswer]:
    return lambda store: get_answer(store.get(key, version=version))


class QuickPathError(Exception):
    """The CLI's quick read (``castore.file.peek``) answered otherwise than ``Store.get``."""


def _latest(root: str, key: str) -> Callable[[Store], GetAnswer]:
    """``Store.get(key)``; where the CLI's quick read answers too, it must be the same answer.

    A disagreement raises :class:`QuickPathError`, not a ``CastoreError``: the
    oracle judges it a traceback (BAD), whatever the store answered; so does a
    quick answer where ``get`` raises.
    """

    def call(store: Store) -> GetAnswer:
        quick = peek(os.path.abspath(root), Ref("dag", DAG, key))
        try:
            answer = get_answer(store.get(key))
        except CastoreError as exc:
            if quick is not None:
                raise QuickPathError(
                    f"{key}: get raised {exc!r}, the quick read {quick[0]}"
                ) from exc
            raise
        if quick is None:
            return answer
        same = GetAnswer(False, 0, "", None) if quick == ABSENT else GetAnswer(True, *quick)
        if same != answer:
            raise QuickPathError(f"{key}: the quick read gave version {quick[0]}, get {answer}")
        return answer

    return call


def _history(key: str) -> Callable[[Store], HistoryAnswer]:
    return lambda store: history_answer(store.history(key))


def _list(include_values: bool) -> Callable[[Store], ListAnswer]:
    return lambda store: list_answer(store.list(include_values=include_values))


def _set(key: str, value: Any, expected: int | None) -> Callable[[Store], SetAnswer]:
    return lambda store: set_answer(store.set(key, value, expected_version=expected))


def _quick_set(
    root: str, key: str, value: Any, expected: int | None
) -> Callable[[Store], SetAnswer]:
    """The CLI's quick write (``castore.file.quickset``) first; where it declines, ``Store.set``.

    The oracle judges whatever was written, so a quick write the store would
    have refused (damage that hides the newest version) is found like any other.
    """

    def call(store: Store) -> SetAnswer:
        normalized = normalize(value)
        audit = audit_fields(ProcessIdentity(), None, None, None, dag=DAG)
        ref = Ref("dag", DAG, key)
        version = quick_set(
            os.path.abspath(root),
            ref,
            normalized,
            hexdigest(normalized),
            audit,
            durable=True,
            expected_version=expected,
        )
        if version is None:
            return set_answer(store.set(key, value, expected_version=expected))
        return SetAnswer(version, hexdigest(normalized))

    return call


def _check(repair: bool) -> Callable[[Store], CheckAnswer]:
    return lambda store: check_answer(store.check(repair=repair))


def read_all(root: str, versions: dict[str, list[int]], *, listing: bool) -> Reads:
    """Every key's newest version, the given versions and history; with ``listing``, list()."""
    reads = Reads()
    with _Phase(root) as phase:
        for key, wanted in versions.items():
            reads.latest[key] = phase.run(_latest(root, key))
            reads.versions[key] = {v: phase.run(_get(key, v)) for v in wanted}
            reads.history[key] = phase.run(_history(key))
        if listing:
            reads.listing = phase.run(_list(False))
            reads.listing_values = phase.run(_list(True))
    return reads


def write_all(
    root: str, writes: dict[str, tuple[Any, int | None]], *, quick: bool = False
) -> dict[str, Outcome[SetAnswer]]:
    """One set per key: ``key -> (value, expected_version or None)``; ``quick``: CLI's first."""
    with _Phase(root) as phase:
        return {
            key: phase.run(
                _quick_set(root, key, value, expected) if quick else _set(key, value, expected)
            )
            for key, (value, expected) in writes.items()
        }


def record_truth(root: str, highest: dict[str, int]) -> Truth:
    """What the pristine store in ``root`` answers (read with fresh handles)."""
    versions = {key: list(range(1, highest[key] + 2)) for key in KEYS}
    reads = read_all(root, versions, listing=True)
    keys = {}
    for key in KEYS:
        latest = reads.latest[key]
        live = latest.value.version if latest.value is not None and latest.value.found else 0
        keys[key] = KeyTruth(
            latest=latest,
            versions=reads.versions[key],
            history=reads.history[key],
            max_version=highest[key],
            live_version=live,
        )
    assert reads.listing is not None
    assert reads.listing_values is not None
    return Truth(keys=keys, listing=reads.listing, listing_values=reads.listing_values)


def probe_value(key: str) -> dict[str, int]:
    """The value step 2 writes to ``key``."""
    return {"probe": KEYS.index(key)}


def final_value(key: str) -> dict[str, int]:
    """The value step 4 writes to ``key``."""
    return {"final": KEYS.index(key)}


def observe(root: str, truth: Truth) -> Observed:
    """Steps 1 to 4 on the (damaged) store in ``root``."""
    versions = {key: list(kt.versions) for key, kt in truth.keys.items()}
    before = read_all(root, versions, listing=True)
    guarded = write_all(
        root,
        {key: (probe_value(key), kt.live_version) for key, kt in truth.keys.items()},
        quick=True,
    )
    checks = []
    for repair in (False, True, False):
        with _Phase(root) as phase:
            checks.append(phase.run(_check(repair)))
    for key, outcome in guarded.items():
        if outcome.value is not None and outcome.value.version not in versions[key]:
            versions[key].append(outcome.value.version)
    after = read_all(root, versions, listing=False)
    final = write_all(root, {key: (final_value(key), None) for key in truth.keys})
    return Observed(before, guarded, checks, after, final)
