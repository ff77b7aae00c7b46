"""Crash torture: thousands of SIGKILL cycles against castore, then the figures.

Run from the checkout root::

    .venv/bin/python tools/crash_torture.py --cycles 2000
    .venv/bin/python tools/crash_torture.py --cycles 500 --remove-keys --json torture.json

Each cycle starts a child process (``python -m tests.crash_worker``) that
writes through the library (sets of new, deduplicated and old values, deletes,
rollbacks, new keys, compaction, gc) and appends an acknowledgement line after
every call returned. The child is SIGKILLed at a random moment, or dies by
itself at a named failpoint (``CASTORE_FAILPOINTS``: before/after the append,
before/after a log rewrite's rename, after compaction buried a key, after gc's
mark, before gc removes an emptied log). Then the store is verified: every
acknowledged version reads back exactly (or says "compacted" if a later
compaction may have dropped it), newest versions never go back, history
versions strictly increase, nothing unattempted appears, and ``check`` is ok
after at most one repair that loses nothing (``tests/crash_worker.py``,
:func:`verify`).

Cycles run in ``--jobs`` independent lanes (processes), each on its own stores;
a store is reused for ``--epoch`` cycles, or until a violation. The summary
gives cycles run, kills, violations found (cycles with any, and the total by
kind with one example each), repairs needed and acknowledged writes checked.
Exit status: 0 when no violation was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.crash_worker import NAMED_POINTS, Children, Figures, Lane


@dataclass(frozen=True)
class Options:
    """What one lane runs."""

    cycles: int
    seed: int
    named_share: float
    durable_every: int
    max_delay: float
    epoch: int
    remove_keys: bool
    deadline: float  # time.time() after which no new cycle starts
    workdir: str
    progress: int


def run_lane(opts: Options) -> Figures:
    """Run one lane's cycles (in a worker process) and return its figures."""
    os.makedirs(opts.workdir, exist_ok=True)
    with Children(opts.workdir) as children:
        lane = Lane(opts.workdir, children, opts.seed, epoch=opts.epoch)
        for cycle in range(opts.cycles):
            if time.time() >= opts.deadline:
                break
            durable = opts.durable_every > 0 and cycle % opts.durable_every == 0
            if lane.rng.random() < opts.named_share:
                point = NAMED_POINTS[lane.rng.randrange(len(NAMED_POINTS))]
                lane.named_cycle(point, durable=durable)
            else:
                lane.random_cycle(
                    durable=durable, max_delay=opts.max_delay, allow_remove=opts.remove_keys
                )
            if opts.progress and (cycle + 1) % opts.progress == 0:
                fig = lane.figures
                print(
                    f"lane {opts.seed}: {fig.cycles} cycles, {fig.kills} kills, "
                    f"{fig.violations} with violations",
                    flush=True,
                )
    return lane.figures


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="See the module docstring of tools/crash_torture.py for what is verified.",
    )
    ap.add_argument("--cycles", type=int, default=2000, help="kill cycles in all (default 2000)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="lanes")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first lane (default 1)")
    ap.add_argument(
        "--named-share",
        type=float,
        default=0.3,
        help="share of cycles killed at a named failpoint (default 0.3; the rest at random)",
    )
    ap.add_argument(
        "--durable-every",
        type=int,
        default=4,
        help="every Nth cycle uses durable=True (default 4; 0 = never)",
    )
    ap.add_argument(
        "--max-delay",
        type=float,
        default=0.05,
        help="random kills come up to this many seconds after the child is ready",
    )
    ap.add_argument("--epoch", type=int, default=8, help="cycles per store (default 8)")
    ap.add_argument(
        "--remove-keys",
        action="store_true",
        help="random workloads also compact with keep_within=0 (removes deleted keys)",
    )
    ap.add_argument(
        "--time-limit", type=float, default=0.0, help="stop starting cycles after N seconds"
    )
    ap.add_argument("--workdir", help="where stores go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--progress", type=int, default=0, help="print a line every N cycles per lane")
    ap.add_argument("--json", dest="json_path", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.cycles < 1 or args.jobs < 1 or args.epoch < 1:
        ap.error("--cycles, --jobs and --epoch must be at least 1")
    if not 0.0 <= args.named_share <= 1.0:
        ap.error("--named-share must be between 0 and 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the torture and print the figures; 1 when a violation was found."""
    args = parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="castore-torture-")
    os.makedirs(workdir, exist_ok=True)
    jobs = min(args.jobs, args.cycles)
    deadline = time.time() + args.time_limit if args.time_limit > 0 else float("inf")
    lanes = [
        Options(
            cycles=args.cycles // jobs + (i < args.cycles % jobs),
            seed=args.seed + i,
            named_share=args.named_share,
            durable_every=args.durable_every,
            max_delay=args.max_delay,
            epoch=args.epoch,
            remove_keys=args.remove_keys,
            deadline=deadline,
            workdir=os.path.join(workdir, f"lane-{args.seed + i}"),
            progress=args.progress,
        )
        for i in range(jobs)
    ]
    began = time.monotonic()
    total = Figures()
    try:
        if jobs == 1:
            total.add(run_lane(lanes[0]))
        else:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
                for figures in pool.map(run_lane, lanes):
                    total.add(figures)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - began
    print(f"castore crash torture: {jobs} lane(s), seed {args.seed}, {elapsed:.1f} s")
    print(total.summary())
    points = ", ".join(f"{name} {n}" for name, n in sorted(total.points.items()))
    print(f"  kills by point: {points}")
    print("  findings that needed check(repair=True), by cycles:")
    for problem, n in total.repaired.most_common():
        print(f"    {n:6d}  {problem}")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "seconds": round(elapsed, 1),
                    "cycles": total.cycles,
                    "kills": total.kills,
                    "violations": total.violations,
                    "violations_by_kind": dict(total.kinds),
                    "examples": total.examples,
                    "repairs": total.repairs,
                    "acked": total.acked,
                    "completed_before_kill": total.completed,
                    "missed_failpoints": total.missed,
                    "missed_failpoints_by_point": dict(total.missed_at),
                    "kills_by_point": dict(total.points),
                    "repaired_findings": dict(total.repaired),
                },
                fh,
                indent=2,
            )
    return 1 if total.violations else 0


if __name__ == "__main__":
    sys.exit(main())
