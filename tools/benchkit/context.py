"""One run's configuration and shared state, and the shape of a workload-table row."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .measure import Ratio, Row, ratio
from .peers import Values
from .targets import Comparison, Goal, Target

__all__ = ["Bench", "Config", "Workload"]


@dataclass(frozen=True)
class Config:
    """Sizes and time budgets of one run."""

    mode: str
    reps: int
    batch_s: float  # time budget of one fast batch
    durable_reps: int  # durable sets switch between machine states: more, shorter batches
    durable_batch_s: float  # time budget of one durable-set batch
    history_n: int  # versions of the deep key (workload 2)
    list_n: int  # keys in the list namespace (workload 4)
    cas_each: int  # successful increments per process (workloads 5 and 6)
    cas_reps: int  # repetitions of the multi-process workloads (5, 6's CAS row, 7)
    start_method: str
    workloads: frozenset[int]
    keys_n: int = 10_000  # keys of the get-random and list-all rows (workload 6)
    par_each: int = 1_000  # durable sets per parallel writer (workload 7)
    history_peer: str = "sqlite3+history"  # peer of workload 6's "+ history table" rows


@dataclass(frozen=True)
class Workload:
    """One row of the workload table.

    ``setup`` builds bulk data before any workload is timed and returns figures for
    the ``build`` section of the JSON; ``run`` times the workload and returns its
    section, stored under ``key``.
    """

    number: int
    key: str  # its section in the JSON results
    measures: str  # what is timed, in a few words
    peers: tuple[str, ...]
    run: Callable[[Bench, Workload], dict[str, Any]]
    goals: tuple[Goal, ...]
    setup: Callable[[Bench], dict[str, Any]] | None = None


class Bench:
    """State of one run: config, scratch directory, results; not shared between threads."""

    def __init__(self, cfg: Config, workdir: str) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.values = Values()
        self.targets: list[Target] = []
        self.comparisons: list[Comparison] = []
        self.results: dict[str, Any] = {}
        self.problems: list[str] = []

    def scratch(self, *parts: str) -> str:
        """A path inside the run's scratch directory."""
        return os.path.join(self.workdir, *parts)

    def check(self, what: str, ok: bool) -> None:
        """Record a read-back check; failures are reported at the end."""
        if not ok:
            self.problems.append(what)
            print(f"  CHECK FAILED: {what}")

    def score(self, w: Workload, goal: int, measured: Ratio | float, **fields: Any) -> None:
        """Record the target row of ``w.goals[goal]`` for ``measured``.

        Args:
            w: The workload.
            goal: Index of the goal in ``w.goals``.
            measured: A rate ratio, or a figure in the goal's unit.
            **fields: Values for the goal's ``{fields}``.
        """
        self.targets.append(w.goals[goal].score(w.number, measured, **fields))

    def compare(
        self, w: Workload, goal: int, castore: Row, peer: str, other: Row, **fields: Any
    ) -> Comparison:
        """Record a castore-vs-peer row: its target row and its line in the comparison table.

        Args:
            w: The workload.
            goal: Index of the goal in ``w.goals``: its ``what`` names the row.
            castore: castore's rates, one per repetition.
            peer: The peer's name.
            other: The peer's rates, one per repetition (interleaved with castore's).
            **fields: Values for the goal's ``{fields}``.

        Returns:
            The comparison row (also kept in ``comparisons``).
        """
        measured = ratio(castore, other)
        t = w.goals[goal].score(w.number, measured, **fields)
        self.targets.append(replace(t, what=f"{t.what}: castore / {peer}"))
        row = Comparison(
            w.number, t.what, castore.median, peer, other.median, measured, t.target, t.passed
        )
        self.comparisons.append(row)
        return row
