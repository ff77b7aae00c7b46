"""The damage matrix: run many cases (all, or a seeded stratified sample) and count statuses.

Counts are kept per (file kind, damage shape) and status; the BAD and
TRACEBACK cases are kept with their verdicts. ``jobs`` > 1 runs the cases in
worker processes (spawned), each with its own scratch directory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tests.damage.answers import BAD, STATUSES, TRACEBACK, Truth, Verdict
from tests.damage.cases import (
    FILE_KINDS,
    SHAPES,
    CaseResult,
    Damage,
    enumerate_damage,
    frame_cuts,
    run_case,
    sample_cases,
)
from tests.damage.scenario import build_store, record_truth

__all__ = ["MatrixReport", "run_matrix", "scratch_dir"]

CHUNK_CASES: Final = 20  # cases per task handed to a worker process


# -- counting ----------------------------------------------------------------------------------


@dataclass
class MatrixReport:
    """Counts per (file kind, damage shape) and status; the BAD and TRACEBACK cases."""

    counts: dict[tuple[str, str], collections.Counter[str]] = field(default_factory=dict)
    bad: list[CaseResult] = field(default_factory=list)
    cases: int = 0
    seconds: float = 0.0

    def add(self, result: CaseResult) -> None:
        """Count one case."""
        assert result.damage is not None
        cell = (result.damage.kind, result.damage.shape)
        self.counts.setdefault(cell, collections.Counter())[result.status] += 1
        self.cases += 1
        if result.status in (BAD, TRACEBACK):
            self.bad.append(result)

    def total(self, status: str) -> int:
        """Cases with ``status`` over the whole matrix."""
        return sum(counter[status] for counter in self.counts.values())

    def table(self) -> str:
        """The counts as a text table, one row per (file kind, shape), then the totals."""
        head = ["file", "shape", *STATUSES, "cases"]
        order = {kind: i for i, kind in enumerate(FILE_KINDS)}
        rows = []
        cells = sorted(self.counts, key=lambda c: (order.get(c[0], 99), c[0], SHAPES.index(c[1])))
        for kind, shape in cells:
            counter = self.counts[(kind, shape)]
            rows.append([kind, shape, *(str(counter[s]) for s in STATUSES), str(counter.total())])
        rows.append(["total", "", *(str(self.total(s)) for s in STATUSES), str(self.cases)])
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in [head, *rows]
        ]
        return "\n".join(lines)

    def causes(self, limit: int = 15) -> str:
        """The commonest causes of BAD and TRACEBACK cases (each case's first bad verdict)."""
        counter = collections.Counter(_cause(result) for result in self.bad)
        return "\n".join(f"{n:7d}  {cause}" for cause, n in counter.most_common(limit))

    def details(self, limit: int = 20) -> str:
        """The first ``limit`` BAD or TRACEBACK cases: file, shape, offset, call, expected, got."""
        out = []
        for result in self.bad[:limit]:
            first = _first_bad(result)
            out.append(
                f"{result.status} {result.damage}: [{first.phase}] {first.call}: {first.reason}\n"
                f"    expected {first.expected}\n    got      {first.got}"
            )
        return "\n".join(out)


def _first_bad(result: CaseResult) -> Verdict:
    return next(v for v in result.verdicts if v.status == result.status)


def _cause(result: CaseResult) -> str:
    """What went wrong, without the case's specifics (versions, offsets, keys)."""
    verdict = _first_bad(result)
    call = verdict.call.split("(", 1)[0]
    what = verdict.got if verdict.status == TRACEBACK else verdict.reason.split(" (", 1)[0]
    kind = result.damage.kind if result.damage is not None else "none"
    return f"{verdict.status} {kind} [{verdict.phase}] {call}: {re.sub(r'[0-9]+', 'N', what)[:90]}"


def scratch_dir() -> str:
    """A private scratch directory, on tmpfs when there is one (cases copy many small files)."""
    shm = "/dev/shm"  # a private mkdtemp inside it, removed by the caller
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="castore-damage-", dir=base)


_WORKER: dict[str, Any] = {}


def _init_worker(pristine: str, truth: Truth, workdir: str) -> None:
    _WORKER.update(pristine=pristine, truth=truth, workdir=tempfile.mkdtemp(dir=workdir))


def _run_chunk(chunk: list[Damage]) -> list[CaseResult]:
    return [
        run_case(_WORKER["pristine"], _WORKER["truth"], damage, _WORKER["workdir"])
        for damage in chunk
    ]


def _run_parallel(
    cases: list[Damage],
    init: tuple[str, Truth, str],
    jobs: int,
    report: MatrixReport,
    progress: Callable[[int, int], object] | None,
) -> None:
    chunks = [cases[i : i + CHUNK_CASES] for i in range(0, len(cases), CHUNK_CASES)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=init
    ) as pool:
        for results in pool.map(_run_chunk, chunks):
            for result in results:
                report.add(result)
            if progress is not None:
                progress(report.cases, len(cases))


def run_matrix(
    sample: int | None,
    seed: int,
    *,
    jobs: int = 1,
    progress: Callable[[int, int], object] | None = None,
) -> MatrixReport:
    """Build the pristine store, then run every case (or ``sample`` per file and shape).

    Args:
        sample: cases per (file, damage shape), chosen with ``seed``; None runs all.
        seed: seed of the sample.
        jobs: worker processes (1 runs in this process).
        progress: called with (cases done, cases in all) now and then.

    Returns:
        The counts and the BAD and TRACEBACK cases.
    """
    began = time.monotonic()
    workdir = scratch_dir()
    try:
        pristine = os.path.join(workdir, "pristine")
        truth = record_truth(pristine, build_store(pristine))
        every = enumerate_damage(pristine)
        cases = sample_cases(every, sample, seed, frame_cuts(pristine, every))
        report = MatrixReport()
        if jobs > 1:
            _run_parallel(cases, (pristine, truth, workdir), jobs, report, progress)
        else:
            for n, damage in enumerate(cases, 1):
                report.add(run_case(pristine, truth, damage, workdir))
                if progress is not None and n % CHUNK_CASES == 0:
                    progress(n, len(cases))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.monotonic() - began
    return report
