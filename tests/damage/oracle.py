"""The damage matrix's oracle: judge a damaged store's answers against the pristine store's.

Pure: works on recorded answers (``tests/damage/answers.py``), no I/O.
:func:`classify` gives each call one status:

* ``OK``: the same answer as the pristine store.
* ``DETECTED``: a ``CorruptionError`` (or subclass); a history whose missing
  versions are covered by a ``damaged`` marker (``damaged_from``..``version``,
  or its own version when ``damaged_from`` is 0); a pristine key missing from
  ``list()`` but named in ``skipped``. For a truncation, any answer that
  differs from the pristine one, when the first ``check`` reports a
  non-info finding (the cut bytes cannot come back, but must be reported),
  unless the log's version index proves the cut (FORMAT.md §7): then every
  reader and writer must refuse, as for damage.
* ``BAD``: any other difference: a key absent or older, another value,
  ``NotFoundError`` for a version the pristine store reads, a history
  missing a version without a marker; a guarded set (expected version = the
  pristine live one) that conflicts or reuses a version (not above every
  version that ever existed); the first ``check`` ok while a read or a
  guarded set was DETECTED or BAD (for damage to ``.vix``, ``index/*.idx``
  and ``KEYS``, ok with at least an info finding is enough); after
  ``check(repair=True)``: a final ``check`` that is not ok, or that has no
  finding at all when the damaged file is a log or GRAVES, the damage was
  visible to a read or a set, and the first check reported it (a loss must
  never end silently clean); a version that read correctly before repair,
  or a set acknowledged before repair, no longer reading the same; any
  value other than the pristine one; a set not above every version that
  ever existed; a write refused although the final check is ok.
* ``INDISTINGUISHABLE``: what would be BAD in a ref log cut exactly at a
  frame boundary: byte-identical to an earlier state of that log, whose
  version index does not record the versions cut off (else BAD). A final
  ``check`` that is not ok (or silently clean) stays BAD even then: an
  earlier state checks ok after repair, so what is still wrong is damage
  the cut did elsewhere (a blob frame another key's log points at).
* ``TRACEBACK``: an exception that is not a ``CastoreError``.

``FormatVersionError`` (damaged ``FORMAT``) is a clean refusal everywhere,
even from ``check(repair=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, TypeAlias, TypeVar

from tests.damage.answers import (
    BAD,
    DAMAGED_OP,
    DETECTED,
    INDISTINGUISHABLE,
    OK,
    TRACEBACK,
    CaseContext,
    CheckAnswer,
    GetAnswer,
    HistoryAnswer,
    KeyTruth,
    ListAnswer,
    Observed,
    Outcome,
    Reads,
    SetAnswer,
    Truth,
    Verdict,
)

__all__ = ["DERIVED_KINDS", "classify"]

DERIVED_KINDS: Final = frozenset({"vix", "idx", "KEYS"})  # check may call their damage "info"
_SOURCE_KINDS: Final = ("log", "GRAVES")  # a loss here must leave a finding after repair

T = TypeVar("T")
Probe: TypeAlias = tuple[SetAnswer, bytes] | None  # a step-2 set that succeeded, its value


# -- helpers -------------------------------------------------------------------------------


def _plain(outcome: Outcome[T], expected: Outcome[T]) -> str | None:
    """The status every kind of call shares, or None when the answers need a closer look."""
    if outcome.foreign:
        return TRACEBACK
    if outcome.corruption:
        return DETECTED
    if outcome.same(expected):
        return OK
    return None


def _verdict(
    status: str, phase: str, call: str, expected: object, got: object, reason: str = ""
) -> Verdict:
    return Verdict(status, phase, call, str(expected), str(got), reason)


def _history_gap_problem(expected: HistoryAnswer, got: HistoryAnswer) -> str | None:
    """Why ``got`` is not ``expected`` with damaged gaps marked (None: it is)."""
    pristine = {row.version: row for row in expected.rows}
    covered: set[int] = set()
    listed: set[int] = set()
    for row in got.rows:
        if row.operation == DAMAGED_OP:
            covered.update(range(row.damaged_from or row.version, row.version + 1))
        elif pristine.get(row.version) != row:
            return f"version {row.version} ({row.operation}) is not the pristine one"
        else:
            listed.add(row.version)
    order = [row.version for row in got.rows]
    if order != sorted(set(order), reverse=True):
        return "versions are not strictly newest first"
    missing = sorted(set(pristine) - listed - covered)
    return f"versions {missing} missing and not marked damaged" if missing else None


def _list_problems(expected: ListAnswer, got: ListAnswer) -> list[str]:
    pristine = {row.key: row for row in expected.entries}
    keys = [row.key for row in got.entries]
    problems = []
    if keys != sorted(set(keys), key=lambda k: k.encode("utf-8")):
        problems.append("entries not unique and byte-wise sorted")
    for row in got.entries:
        if pristine.get(row.key) != row:
            problems.append(f"{row.key} listed as v{row.version}, pristine {pristine.get(row.key)}")
    for key in pristine:
        if key not in keys and key not in got.skipped:
            problems.append(f"{key} missing and not in skipped")
    return problems


# -- step 1: reads -----------------------------------------------------------------------


def _judge_get(call: str, expected: Outcome[GetAnswer], got: Outcome[GetAnswer]) -> Verdict:
    status = _plain(got, expected)
    if status is None:
        return _verdict(BAD, "read", call, expected, got, "differs from pristine")
    return _verdict(status, "read", call, expected, got)


def _judge_history(
    call: str, expected: Outcome[HistoryAnswer], got: Outcome[HistoryAnswer]
) -> Verdict:
    status = _plain(got, expected)
    if status is not None:
        return _verdict(status, "read", call, expected, got)
    if got.value is None or expected.value is None:
        return _verdict(BAD, "read", call, expected, got, "differs from pristine")
    problem = _history_gap_problem(expected.value, got.value)
    if problem is not None:
        return _verdict(BAD, "read", call, expected, got, problem)
    return _verdict(DETECTED, "read", call, expected, got, "gap marked damaged")


def _judge_list(
    call: str, expected: Outcome[ListAnswer], got: Outcome[ListAnswer] | None
) -> Iterator[Verdict]:
    if got is None:
        return
    status = _plain(got, expected)
    if status is not None:
        yield _verdict(status, "read", call, expected, got)
    elif got.value is None or expected.value is None:
        yield _verdict(BAD, "read", call, expected, got, "differs from pristine")
    else:
        problems = _list_problems(expected.value, got.value)
        if problems:
            yield _verdict(BAD, "read", call, expected, got, "; ".join(problems))
        else:
            yield _verdict(DETECTED, "read", call, expected, got, "keys skipped")


def _judge_reads(truth: Truth, reads: Reads) -> Iterator[Verdict]:
    for key, kt in truth.keys.items():
        yield _judge_get(f"get({key})", kt.latest, reads.latest[key])
        for version, expected in kt.versions.items():
            got = reads.versions[key][version]
            yield _judge_get(f"get({key}, version={version})", expected, got)
        yield _judge_history(f"history({key})", kt.history, reads.history[key])
    yield from _judge_list("list()", truth.listing, reads.listing)
    yield from _judge_list("list(include_values=True)", truth.listing_values, reads.listing_values)


# -- step 2: guarded sets --------------------------------------------------------------------


def _judge_guarded(truth: Truth, guarded: dict[str, Outcome[SetAnswer]]) -> Iterator[Verdict]:
    for key, got in guarded.items():
        kt = truth.keys[key]
        call = f"set({key}, expected_version={kt.live_version})"
        want = f"a version above {kt.max_version}"
        if got.foreign:
            yield _verdict(TRACEBACK, "write", call, want, got)
        elif got.corruption:
            yield _verdict(DETECTED, "write", call, want, got)
        elif got.error == "ConflictError":
            reason = "conflict where the pristine store accepts (damage must be CorruptionError)"
            yield _verdict(BAD, "write", call, want, got, reason)
        elif got.raised:
            yield _verdict(BAD, "write", call, want, got, "an error other than CorruptionError")
        elif got.value is not None and got.value.version <= kt.max_version:
            yield _verdict(BAD, "write", call, want, got, "version reuse")
        else:
            yield _verdict(OK, "write", call, want, got)


# -- step 3: the first check -------------------------------------------------------------------


def _reports(outcome: Outcome[CheckAnswer], kinds: tuple[str, ...] | None = None) -> bool:
    """The check raised CorruptionError or listed a non-info finding (on ``kinds`` files)."""
    if outcome.corruption:
        return True
    findings = outcome.value.findings if outcome.value is not None else ()
    return any(
        f.severity != "info" and (kinds is None or _path_kind(f.path) in kinds) for f in findings
    )


def _path_kind(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".log"):
        return "log"
    return name


def _judge_first_check(
    first: Outcome[CheckAnswer], seen: list[Verdict], file_kind: str
) -> Iterator[Verdict]:
    call = "check()"
    if first.foreign:
        yield _verdict(TRACEBACK, "check", call, "a report", first)
        return
    if first.raised:
        status = DETECTED if first.corruption else BAD
        yield _verdict(status, "check", call, "a report", first, "check raised")
        return
    visible = [v for v in seen if v.status in (DETECTED, BAD)]
    report = first.value
    if not visible or report is None or not report.ok:
        yield _verdict(OK, "check", call, "", first)
    elif file_kind in DERIVED_KINDS and report.findings:
        yield _verdict(OK, "check", call, "", first, "derived damage reported as info")
    else:
        reason = f"check said ok while damage was visible ({visible[0].call})"
        yield _verdict(BAD, "check", call, "ok=False", first, reason)


def _relax_truncation(verdicts: list[Verdict], first: Outcome[CheckAnswer]) -> list[Verdict]:
    """A truncation's lost answers are DETECTED when the first check reports the damage."""
    if not _reports(first):
        return verdicts
    return [
        v._replace(status=DETECTED, reason=f"{v.reason}; the truncation is reported by check")
        if v.status == BAD and v.phase in ("read", "write")
        else v
        for v in verdicts
    ]


# -- step 3 (repair) and step 4 -------------------------------------------------------------


def _judge_repair(
    checks: list[Outcome[CheckAnswer]], seen: list[Verdict], file_kind: str, recovered: bool
) -> Iterator[Verdict]:
    """Repair must leave check ok; a visible loss in a log or GRAVES must leave a finding.

    Unless the repair ``recovered`` everything: every answer after it is the
    undamaged store's (a damaged copy of a value another log also holds).
    """
    first, repair, final = checks
    for call, outcome in (("check(repair=True)", repair), ("check() after repair", final)):
        if outcome.foreign:
            yield _verdict(TRACEBACK, "repair", call, "a report", outcome)
        elif outcome.raised:
            status = DETECTED if outcome.format_error else BAD
            yield _verdict(status, "repair", call, "a report", outcome, "check raised")
    report = final.value
    if report is None:
        return
    if not report.ok:
        yield _verdict(BAD, "repair", "check() after repair", "ok=True", final, "still not ok")
    elif (
        file_kind in _SOURCE_KINDS
        and _reports(first, _SOURCE_KINDS)
        and any(v.status != OK for v in seen if v.phase in ("read", "write"))
        and not report.findings
        and not recovered
    ):
        reason = "visible damage to a log or GRAVES leaves no finding after repair"
        yield _verdict(BAD, "repair", "check() after repair", "an info finding", final, reason)


def _expected_after(kt: KeyTruth, version: int, probe: Probe) -> GetAnswer | None:
    """What version ``version`` must read after repair, if it reads at all."""
    if probe is not None and probe[0].version == version:
        return GetAnswer(True, version, probe[0].hash, probe[1])
    return kt.value_at(version)


def _judge_after_get(call: str, got: Outcome[GetAnswer], want: GetAnswer | None) -> Verdict:
    if got.foreign:
        return _verdict(TRACEBACK, "after", call, want, got)
    if got.corruption:
        return _verdict(DETECTED, "after", call, want, got)
    if got.raised and got.error != "NotFoundError":
        return _verdict(BAD, "after", call, want, got, "an error other than CorruptionError")
    answer = got.value
    if answer is None or not answer.found or answer == want:
        return _verdict(OK, "after", call, want, got)
    return _verdict(BAD, "after", call, want, got, "wrong value after repair")


def _judge_after_key(
    key: str,
    kt: KeyTruth,
    before: Reads,
    after: Reads,
    probe: Probe,
) -> Iterator[Verdict]:
    for version, got in after.versions[key].items():
        call = f"after repair: get({key}, version={version})"
        want = _expected_after(kt, version, probe)
        intact = want is not None and before.versions[key].get(version) == kt.versions.get(version)
        written = probe is not None and probe[0].version == version
        if (intact or written) and not (got.value == want and not got.raised):
            reason = (
                "a version written before repair was lost"
                if written
                else "acknowledged intact version lost by repair"
            )
            yield _verdict(BAD, "after", call, want, got, reason)
        else:
            yield _judge_after_get(call, got, want)
    latest = after.latest[key]
    if latest.foreign:
        yield _verdict(TRACEBACK, "after", f"after repair: get({key})", "", latest)
    elif probe is not None and latest.value != _expected_after(kt, probe[0].version, probe):
        want = _expected_after(kt, probe[0].version, probe)
        reason = "the newest version is not the one written before repair"
        yield _verdict(BAD, "after", f"after repair: get({key})", want, latest, reason)
    else:
        got_version = latest.value.version if latest.value is not None else 0
        want = _expected_after(kt, got_version, probe)
        yield _judge_after_get(f"after repair: get({key})", latest, want)
    yield from _judge_after_history(key, kt, after.history[key], probe)


def _judge_after_history(
    key: str, kt: KeyTruth, got: Outcome[HistoryAnswer], probe: Probe
) -> Iterator[Verdict]:
    call = f"after repair: history({key})"
    if got.foreign or got.corruption or got.value is None:
        status = TRACEBACK if got.foreign else DETECTED if got.corruption else BAD
        yield _verdict(status, "after", call, kt.history, got)
        return
    pristine = {r.version: r for r in kt.history.value.rows} if kt.history.value else {}
    for row in got.value.rows:
        if row.operation == DAMAGED_OP:
            continue
        if probe is not None and row.version == probe[0].version:
            ok = row.hash == probe[0].hash
        else:
            ok = pristine.get(row.version) == row
        if not ok:
            reason = f"version {row.version} is not the pristine one"
            yield _verdict(BAD, "after", call, kt.history, got, reason)
            return
    yield _verdict(OK, "after", call, kt.history, got)


def _judge_final_sets(
    truth: Truth, observed: Observed, probes: dict[str, Probe]
) -> Iterator[Verdict]:
    final_check = observed.checks[2].value
    clean = final_check is not None and final_check.ok
    for key, got in observed.final.items():
        kt = truth.keys[key]
        probe = probes[key]
        floor = max(kt.max_version, probe[0].version if probe is not None else 0)
        call, want = f"after repair: set({key})", f"a version above {floor}"
        if got.foreign:
            yield _verdict(TRACEBACK, "after", call, want, got)
        elif got.corruption and not clean:
            yield _verdict(DETECTED, "after", call, want, got)
        elif got.raised:
            yield _verdict(BAD, "after", call, want, got, "the store refuses writes after repair")
        elif got.value is not None and got.value.version <= floor:
            yield _verdict(BAD, "after", call, want, got, "version reuse after repair")
        else:
            yield _verdict(OK, "after", call, want, got)


def _probes(observed: Observed, context: CaseContext) -> dict[str, Probe]:
    out: dict[str, Probe] = {}
    for key, outcome in observed.guarded.items():
        answer = outcome.value
        out[key] = None if answer is None else (answer, context.probes[key])
    return out


# -- the whole case -------------------------------------------------------------------------


def classify(truth: Truth, observed: Observed, context: CaseContext) -> list[Verdict]:
    """Judge every call of one damaged copy (see the module docstring for the rules)."""
    verdicts = list(_judge_reads(truth, observed.before))
    verdicts += _judge_guarded(truth, observed.guarded)
    first = observed.checks[0]
    verdicts += _judge_first_check(first, verdicts, context.file_kind)
    if context.shape == "trunc" and not context.cut_proved:
        verdicts = _relax_truncation(verdicts, first)
    probes = _probes(observed, context)
    after: list[Verdict] = []
    for key, kt in truth.keys.items():
        after += _judge_after_key(key, kt, observed.before, observed.after, probes[key])
    after += _judge_final_sets(truth, observed, probes)
    recovered = bool(after) and all(v.status == OK for v in after)
    verdicts += _judge_repair(observed.checks, verdicts, context.file_kind, recovered)
    verdicts += after
    if context.clean_cut and not context.cut_proved:
        verdicts = [_indistinguishable(v) for v in verdicts]
    return verdicts


def _indistinguishable(verdict: Verdict) -> Verdict:
    """BAD becomes INDISTINGUISHABLE, except a repair that cannot reach ``ok``.

    A clean earlier state of a log checks ok after repair, so what stays wrong
    is damage the cut did elsewhere (a blob frame another key's log uses).
    """
    if verdict.status != BAD or verdict.phase == "repair":
        return verdict
    return verdict._replace(status=INDISTINGUISHABLE)
