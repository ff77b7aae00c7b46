"""Damage matrix: damage every byte of a small store, one copy per case, and count the verdicts.

Run from the checkout root::

    .venv/bin/python tools/damage_matrix.py --jobs 2
    .venv/bin/python tools/damage_matrix.py --sample 25 --seed 3

A small store is built through the library (small and large values, a value
two keys share, deletes, a re-created key, a compacted key, a key compaction
removed into GRAVES). Then for every regular file of it (FORMAT, KEYS, GRAVES,
every .log, .vix and index shard), each on a fresh copy: XOR 0x01 and 0xFF at
every offset, zeroed 512-byte and 4 KiB aligned ranges and the last 512 bytes,
and a truncation at every offset. Each damaged copy is read, written, checked,
repaired and read again; every answer is judged against the pristine store's
(``tests/damage/oracle.py`` says how) as OK, DETECTED, INDISTINGUISHABLE (a log
cut at a frame boundary: an earlier state), BAD or TRACEBACK (an exception
that is not a CastoreError).

Prints the counts per file kind x damage shape, the first BAD or TRACEBACK
cases, and the wall time. Exit status: 0 when no case is BAD or TRACEBACK,
1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.damage.answers import BAD, INDISTINGUISHABLE, TRACEBACK
from tests.damage.matrix import run_matrix


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="See the module docstring of tools/damage_matrix.py for what is judged.",
    )
    ap.add_argument(
        "--sample",
        type=int,
        default=None,
        help="at most N seeded cases per (file, damage shape) (default: every case)",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the sample (default 1)")
    ap.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes"
    )
    ap.add_argument(
        "--details", type=int, default=20, help="BAD or TRACEBACK cases to print (default 20)"
    )
    ap.add_argument("--progress", action="store_true", help="print the cases done now and then")
    args = ap.parse_args(argv)
    if args.jobs < 1 or (args.sample is not None and args.sample < 1):
        ap.error("--jobs and --sample must be at least 1")
    return args


def _progress(done: int, total: int) -> None:
    if done % 1000 < 20 or done == total:
        print(f"  {done}/{total} cases", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix and print the counts; 1 when a case is BAD or TRACEBACK."""
    args = parse_args(argv)
    report = run_matrix(
        args.sample,
        args.seed,
        jobs=args.jobs,
        progress=_progress if args.progress else None,
    )
    scope = "every case" if args.sample is None else f"sample {args.sample}, seed {args.seed}"
    print(f"castore damage matrix: {report.cases} cases ({scope}), {args.jobs} job(s)")
    print(report.table())
    print(f"INDISTINGUISHABLE (a log cut at a frame boundary): {report.total(INDISTINGUISHABLE)}")
    failed = report.total(BAD) + report.total(TRACEBACK)
    if failed:
        shown = min(args.details, failed)
        print("commonest causes (cases, first bad verdict of each):")
        print(report.causes())
        print(f"first {shown} of {failed} BAD or TRACEBACK cases:")
        print(report.details(args.details))
    print(f"wall time: {report.seconds:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
