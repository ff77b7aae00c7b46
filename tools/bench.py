"""Benchmark castore against sqlite3 and a naive file-per-key store, in one run.

Run from the checkout root::

    .venv/bin/python tools/bench.py --quick          # smoke run, < 90 s (6,7 alone < 30 s)
    .venv/bin/python tools/bench.py                  # default run, < 6 min
    .venv/bin/python tools/bench.py --json out.json  # also save every number
    .venv/bin/python tools/bench.py --workloads 6,7  # the issue-10 table only
    .venv/bin/python tools/bench.py --backend "postgresql://user:pw@host:5432/db" [--quick]

This is a measurement, not a test: every workload prints medians, ratios and a
target row marked PASS or FAIL, and a FAIL is information (the exit status is 0
unless something crashed or read back a wrong value).

``--backend postgresql://…`` (issue 12) runs a PostgreSQL comparison instead of
the workloads: castore's PostgreSQL backend (a fresh schema ``bench_<random>``,
dropped at the end), a minimal hand-written psycopg baseline doing the same
transactions (its own fresh schema, tables ``cur`` and ``ver``), and castore on a
file store for reference, interleaved in one run: durable set 100 B and 10 KB, set
without sync, warm get, get version k of 1,000, list 100 of 2,000 keys, and 1 vs
4 writer processes. It prints ops/s, the cost ratio baseline / castore-pg (> 1:
castore slower) and PASS/FAIL for the targets (set and get cost <= 1.25x; 4
processes scale above 1); quick < 60 s, default < 4 min. ``--reps``,
``--batch-time``, ``--durable-reps``, ``--durable-batch-time``, ``--par-each``,
``--cas-reps`` (parallel repetitions), ``--start-method``, ``--workdir``,
``--cleanup`` and ``--json`` apply; the URL's own ``schema`` parameter is ignored.
See ``tools/benchkit/postgres.py``.

Where things are (``tools/benchkit/``):

* ``workloads.py``: the table of workloads 1-7, their peers and targets.
* ``reads.py``, ``writes.py``: workloads 1-5; ``cas.py`` the worker processes.
* ``issue10.py``, ``parallel.py``: workloads 6 and 7, issue 10's table of castore
  against sqlite and sqlite with a history table (rows, values and statements of
  ../shared/bench/run.py); printed as one table, castore ops/s, peer ops/s, ratio,
  target, PASS/FAIL, and saved under ``comparisons`` by ``--json``.
* ``postgres.py``: the ``--backend`` comparison (issue 12).
* ``peers.py``: castore, sqlite3 (WAL), the naive file-per-key store, and for
  workloads 6-7 ``sqlite3+history`` and the shared harness's ``sqlite`` and
  ``sqlite+hist``.
* ``measure.py``: the method (rotated repetitions, ``os.sync()`` + gc before each
  batch, medians, per-repetition ratios, latency percentiles).
* ``report.py``: the printed tables; ``machine.py``: probes, scratch, cleanup.

Durable rows on the shared 2-core VM are bimodal: with the cores free an fsync
costs ~0.15 ms, but while other processes keep both cores busy every blocking
wait costs about one 4 ms scheduler tick, so durable rows then count blocking
points rather than disk work. The header prints the load average; compare runs
made in the same state.

Bulk data (N versions, N keys) is built before any timed workload and deleted
only at the end: ext4 without a journal makes file creation slow for minutes
after many deletions (see /work/shared/bench/README.md), so wait a few minutes
between full runs. Deleting is slow too (about 2.5 ms per file here, 100,000+
files in the default run), so by default the scratch directory is renamed to
``.trash-*`` and deleted by a detached low-priority process after the report
(``--cleanup foreground`` waits for it; ``--cleanup keep`` keeps the data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import castore
from tools.benchkit import machine, report
from tools.benchkit.context import Bench, Config
from tools.benchkit.peers import HISTORY_PEERS
from tools.benchkit.workloads import NUMBERS, WORKLOADS

__all__ = ["main", "parse_args"]

# (flag, type, help) of the size options; 0 means the mode's default.
_SIZE_OPTIONS: tuple[tuple[str, type[int] | type[float], str], ...] = (
    ("--reps", int, "repetitions (default 5, quick 3)"),
    ("--batch-time", float, "seconds per timed batch (default 0.2, quick 0.1)"),
    ("--durable-reps", int, "repetitions of the durable-set rows (default 15, quick 5)"),
    ("--durable-batch-time", float, "seconds per durable-set batch (default 0.2, quick 0.1)"),
    (
        "--history-n",
        int,
        "versions of the deep key, workloads 2 and 6 (default 100000, quick 10000)",
    ),
    ("--list-n", int, "keys listed by prefix, workloads 4 and 6 (default 100000, quick 10000)"),
    (
        "--keys-n",
        int,
        "keys of workload 6's get-random and list-all rows (default 10000, quick 2000)",
    ),
    ("--cas-each", int, "successful increments per CAS process (default 250, quick 50)"),
    ("--cas-reps", int, "repetitions of workload 5, 6's CAS row and 7 (default 5, quick 3)"),
    ("--par-each", int, "durable sets per writer in workload 7 (default 1000, quick 200)"),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(
        prog="bench.py",
        description="Benchmark castore against sqlite3 and a naive file-per-key store "
        "(medians over rotated repetitions, ratios, PASS/FAIL per target).",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (< 90 s; workloads 6,7 alone < 30 s): 3 reps, short batches, "
        "10,000 versions/keys",
    )
    ap.add_argument(
        "--workdir",
        default=None,
        help="parent directory for scratch data (default ./bench-results; "
        "avoid tmpfs). A fresh subdirectory is created and deleted at the end",
    )
    ap.add_argument(
        "--cleanup",
        choices=["background", "foreground", "keep"],
        default="background",
        help="delete scratch data in a detached low-priority process after the report "
        "(default; deleting 100,000 files takes minutes on this disk), before exiting, "
        "or keep it",
    )
    ap.add_argument("--json", metavar="OUT", default=None, help="write every number to OUT")
    ap.add_argument(
        "--backend",
        metavar="URL",
        default=None,
        help="postgresql://… : instead of the workloads, compare castore's PostgreSQL backend "
        "with a hand-written psycopg baseline and the file store (issue 12; fresh schemas, "
        "dropped at the end)",
    )
    ap.add_argument(
        "--workloads",
        default="",
        help="comma list of 1-7 (default all); 6 = the issue-10 table, 7 = parallel writers",
    )
    for flag, kind, text in _SIZE_OPTIONS:
        ap.add_argument(flag, type=kind, default=kind(0), help=text)
    ap.add_argument(
        "--start-method",
        choices=["spawn", "fork"],
        default="spawn",
        help="multiprocessing start method for workloads 5-7 (default spawn)",
    )
    ap.add_argument(
        "--history-peer",
        choices=HISTORY_PEERS,
        default=HISTORY_PEERS[0],
        help="peer of workload 6's '+ history table' rows: sqlite3+history (current row + "
        "versions table in one transaction, default) or sqlite+hist (the shared harness's: "
        "versions only, one INSERT ... MAX(version) + 1 per set)",
    )
    return ap.parse_args(argv)


def config(args: argparse.Namespace) -> Config:
    """The run's sizes: each option given, else its quick or default value.

    Raises:
        SystemExit: When ``--workloads`` names an unknown workload.
    """
    quick = bool(args.quick)
    chosen = frozenset(int(w) for w in args.workloads.split(",") if w.strip())
    bad = chosen - NUMBERS
    if bad:
        raise SystemExit(f"unknown workload(s): {sorted(bad)}")
    return Config(
        mode="quick" if quick else "default",
        reps=args.reps or (3 if quick else 5),
        batch_s=args.batch_time or (0.1 if quick else 0.2),
        durable_reps=args.durable_reps or (5 if quick else 15),
        durable_batch_s=args.durable_batch_time or (0.1 if quick else 0.2),
        history_n=args.history_n or (10_000 if quick else 100_000),
        list_n=args.list_n or (10_000 if quick else 100_000),
        cas_each=args.cas_each or (50 if quick else 250),
        cas_reps=args.cas_reps or (3 if quick else 5),
        start_method=args.start_method,
        workloads=chosen or NUMBERS,
        keys_n=args.keys_n or (2_000 if quick else 10_000),
        par_each=args.par_each or (200 if quick else 1_000),
        history_peer=args.history_peer,
    )


def _meta(cfg: Config, workdir: str) -> dict[str, Any]:
    """What the run was and where: the ``meta`` section of the JSON."""
    return {
        "mode": cfg.mode,
        "reps": cfg.reps,
        "batch_s": cfg.batch_s,
        "durable_batch_s": cfg.durable_batch_s,
        "config": {k: v for k, v in cfg.__dict__.items() if k != "workloads"},
        "workloads": sorted(cfg.workloads),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "castore": castore.__version__,
        "cpus": os.cpu_count(),
        "workdir": workdir,
        "fs": machine.fs_type(workdir),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": os.getloadavg(),
    }


def run_workloads(bench: Bench, meta: dict[str, Any]) -> None:
    """Build every chosen workload's bulk data, then time the workloads in table order."""
    chosen = [w for w in WORKLOADS if w.number in bench.cfg.workloads]
    build: dict[str, Any] = {}
    for w in chosen:
        if w.setup is not None:
            build.update(w.setup(bench))
    bench.results["build"] = build
    t0 = time.perf_counter_ns()
    os.sync()
    print(f"setup: os.sync() after build: {(time.perf_counter_ns() - t0) / 1e9:.1f} s")
    for w in chosen:
        started = time.monotonic()
        bench.results[w.key] = w.run(bench, w)
        la = os.getloadavg()[0]
        meta[f"loadavg_after_w{w.number}"] = la
        print(f"(workload {w.number}: {time.monotonic() - started:.1f} s; load average {la:.2f})")


def _write_json(path: str, bench: Bench, meta: dict[str, Any]) -> None:
    doc = {
        "meta": meta,
        "results": bench.results,
        "targets": [t.__dict__ for t in bench.targets],
        "comparisons": [c.to_json() for c in bench.comparisons],
        "problems": bench.problems,
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    print(f"raw numbers written to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 when a read-back check failed."""
    args = parse_args(argv)
    if args.backend:
        if not args.backend.startswith(("postgresql://", "postgres://")):
            raise SystemExit("--backend: give a postgresql:// or postgres:// URL")
        from tools.benchkit import postgres  # here: psycopg only when asked for

        return postgres.run(args, args.backend)
    cfg = config(args)
    parent = os.path.abspath(args.workdir or machine.default_workdir_parent())
    os.makedirs(parent, exist_ok=True)
    trash_prefix = machine.TRASH_PREFIX + "castore-bench-"
    trash = sorted(n for n in os.listdir(parent) if n.startswith(trash_prefix))
    workdir = tempfile.mkdtemp(prefix="castore-bench-", dir=parent)
    bench = Bench(cfg, workdir)
    started = time.monotonic()
    meta = _meta(cfg, workdir)
    report.print_header(meta, trash, parent)
    meta["create_probe_us_start"] = machine.probe_create_us(workdir)
    meta["fdatasync_4k_us"] = machine.probe_fdatasync_us(workdir)
    report.print_probes(meta)
    try:
        run_workloads(bench, meta)
        meta["create_probe_us_end"] = machine.probe_create_us(workdir)
    finally:
        meta["elapsed_s"] = time.monotonic() - started
        meta["cleanup"] = machine.cleanup(workdir, args.cleanup)
    report.print_comparisons(bench.comparisons)
    report.print_targets(bench.targets)
    report.print_footer(meta, bench.problems)
    if args.json:
        _write_json(args.json, bench, meta)
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
