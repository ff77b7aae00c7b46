"""How the benchmark measures: timed batches, rotated repetitions, medians and ratios.

Every measurement is repeated and in each repetition all variants run once, in an
order rotated by one each repetition, so machine drift hits all of them alike.
Before every timed batch ``os.sync()`` flushes other variants' dirty pages and
``gc.collect()`` runs; gc is disabled inside the batch. A batch runs until its op
count or its time budget is reached. A row is the median over repetitions of the
batch rates, with pooled per-op latency percentiles; a ratio is the median of the
per-repetition ratios (variants of one repetition ran close together in time).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "Batch",
    "Ratio",
    "Row",
    "interleaved",
    "p50_ratio",
    "percentile",
    "ratio",
    "run_batch",
    "summarize",
]

T = TypeVar("T")
_pc = time.perf_counter_ns
MIN_BATCH_OPS = 3  # a batch past its time budget still runs this many ops


@dataclass
class Batch:
    """One timed batch: op count, wall time and per-op latencies (ns)."""

    ops: int
    elapsed_ns: int
    lat_ns: list[int]

    @property
    def rate(self) -> float:
        """Operations per second over the whole batch."""
        return self.ops / (self.elapsed_ns / 1e9) if self.elapsed_ns > 0 else 0.0


def run_batch(
    op: Callable[[int], object], n_max: int, t_max_s: float, min_ops: int = MIN_BATCH_OPS
) -> Batch:
    """Call ``op(i)`` until ``n_max`` calls or ``t_max_s`` seconds (at least ``min_ops``).

    ``os.sync()`` and ``gc.collect()`` run first, outside the clock; gc is off inside.

    Args:
        op: The timed operation, called with the op's index in the batch.
        n_max: Most calls in the batch.
        t_max_s: Time budget of the batch in seconds.
        min_ops: Fewest calls, even past the time budget.

    Returns:
        The batch's op count, elapsed time and per-op latencies.
    """
    os.sync()
    gc.collect()
    gc.disable()
    lats: list[int] = []
    append = lats.append
    try:
        start = _pc()
        deadline = start + int(t_max_s * 1e9)
        i = 0
        while i < n_max:
            t0 = _pc()
            op(i)
            t1 = _pc()
            append(t1 - t0)
            i += 1
            if t1 >= deadline and i >= min_ops:
                break
        elapsed = _pc() - start
    finally:
        gc.enable()
    return Batch(i, elapsed, lats)


def interleaved(names: Sequence[str], fn: Callable[[str, int], T], reps: int) -> dict[str, list[T]]:
    """Run ``fn(name, rep)`` for every name, ``reps`` times, rotating the order by one per rep.

    Args:
        names: The variants, in the order of the first repetition.
        fn: Measures one variant in one repetition.
        reps: Number of repetitions.

    Returns:
        Each variant's results, one per repetition, in repetition order.
    """
    out: dict[str, list[T]] = {n: [] for n in names}
    for rep in range(reps):
        k = rep % len(names)
        for name in list(names[k:]) + list(names[:k]):
            out[name].append(fn(name, rep))
    return out


def percentile(values: Sequence[int], p: float) -> float:
    """The ``p``-th percentile of ``values`` by nearest rank (NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100.0 * (len(ordered) - 1))))
    return float(ordered[k])


@dataclass
class Row:
    """Summary of one variant over all repetitions."""

    name: str
    rates: list[float]
    p50_us: float
    p99_us: float
    ops_total: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        """Median ops/s over repetitions."""
        return statistics.median(self.rates)

    @property
    def us_per_op(self) -> float:
        """Microseconds per op at the median rate."""
        return 1e6 / self.median if self.median else float("inf")

    def to_json(self) -> dict[str, Any]:
        """Raw numbers for --json."""
        return {
            "name": self.name,
            "ops_per_s": {
                "median": self.median,
                "min": min(self.rates),
                "max": max(self.rates),
                "all": self.rates,
            },
            "us_per_op": self.us_per_op,
            "lat_us": {"p50": self.p50_us, "p99": self.p99_us},
            "ops_total": self.ops_total,
            **self.extra,
        }


def summarize(name: str, batches: Sequence[Batch]) -> Row:
    """Median rate over batches, pooled latency percentiles."""
    lats = [x for b in batches for x in b.lat_ns]
    return Row(
        name=name,
        rates=[b.rate for b in batches],
        p50_us=percentile(lats, 50) / 1e3,
        p99_us=percentile(lats, 99) / 1e3,
        ops_total=sum(b.ops for b in batches),
    )


Ratio = tuple[float, float, float, float]  # per-rep median, min, max; ratio of medians


def ratio(a: Row, b: Row) -> Ratio:
    """Rate ratio a/b: median, min and max over repetitions, and median(a)/median(b).

    Variants of one repetition ran close together in time, so the per-repetition
    ratio cancels most machine drift; its median is the headline number.
    """
    per_rep = [x / y for x, y in zip(a.rates, b.rates, strict=True) if y > 0]
    if not per_rep or b.median <= 0:
        nan = float("nan")
        return nan, nan, nan, nan
    return statistics.median(per_rep), min(per_rep), max(per_rep), a.median / b.median


def p50_ratio(a: Row, b: Row) -> float:
    """Per-op median latency of b / of a: the speed ratio least hurt by preemption."""
    return b.p50_us / a.p50_us if a.p50_us > 0 else float("nan")
