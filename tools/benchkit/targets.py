"""Targets: a goal (threshold) from the workload table, and the measured row it yields.

A target row is information, never an exception: a FAIL does not change the
benchmark's exit status.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .measure import Ratio

__all__ = ["Comparison", "Goal", "Target", "fmt_ratio"]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}


def fmt_ratio(r: Ratio) -> str:
    """``1.23x [1.10-1.30]``: per-repetition median and range."""
    return f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


@dataclass(frozen=True)
class Goal:
    """A threshold on one measured figure; ``compare`` empty means information only."""

    what: str  # the row's label; {fields} are filled in by the workload
    compare: str = ""  # ">=", "<=" or "<"; "" for an information row
    limit: float = 0.0
    unit: str = "x"  # "x": a rate ratio (a Ratio is measured); "ms": milliseconds

    @property
    def text(self) -> str:
        """The target column: ``>= 1.50x``, ``< 5 ms`` or ``(info)``."""
        if not self.compare:
            return "(info)"
        if self.unit == "x":
            return f"{self.compare} {self.limit:.2f}x"
        return f"{self.compare} {self.limit:g} {self.unit}"

    def score(self, workload: int, measured: Ratio | float, **fields: Any) -> Target:
        """The target row for ``measured`` (a Ratio, or a plain figure in ``unit``).

        Args:
            workload: The workload's number.
            measured: A rate ratio (the per-rep median is compared) or a figure.
            **fields: Values for the ``{fields}`` in ``what``.

        Returns:
            The row: PASS when the comparison holds (NaN never passes), always for info.
        """
        if isinstance(measured, tuple):
            value, shown = measured[0], fmt_ratio(measured)
        else:
            value, shown = measured, f"{measured:.3f} {self.unit}"
        passed = _COMPARE[self.compare](value, self.limit) if self.compare else True
        return Target(workload, self.what.format(**fields), self.text, shown, passed, value)


@dataclass(frozen=True)
class Target:
    """One checked target: PASS/FAIL is information, never an exception."""

    workload: int
    what: str
    target: str
    measured: str
    passed: bool
    value: float


@dataclass(frozen=True)
class Comparison:
    """One castore-vs-peer row: median ops/s of each over interleaved repetitions, and the ratio.

    ``ratio`` is castore / peer: the median of the per-repetition ratios, their min
    and max, and the ratio of the two medians (``measure.ratio``).
    """

    workload: int
    row: str
    castore_ops: float
    peer: str
    peer_ops: float
    ratio: Ratio
    target: str = ""
    passed: bool = True

    def to_json(self) -> dict[str, Any]:
        """The row for --json."""
        return {
            "workload": self.workload,
            "row": self.row,
            "castore_ops_per_s": self.castore_ops,
            "peer": self.peer,
            "peer_ops_per_s": self.peer_ops,
            "ratio": self.ratio[0],
            "ratio_min": self.ratio[1],
            "ratio_max": self.ratio[2],
            "ratio_of_medians": self.ratio[3],
            "target": self.target,
            "result": "PASS" if self.passed else "FAIL",
        }
