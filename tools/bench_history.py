"""Benchmark: history paging and get-at-version cost after 100 vs 100,000 versions.

Target (issue 3): each call after 100,000 versions costs at most 1.5x the same
call after 100 versions. Prints medians (µs per call) over repetitions and the
ratio. Versions are written with durable=False (only reads are timed).

Usage: python tools/bench_history.py [--versions 100000] [--reps 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

from castore import Store


def _time_per_call(fn: Callable[[int], object], args: list[int]) -> float:
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for a in args:
            fn(a)
        return (time.perf_counter_ns() - start) / len(args) / 1000
    finally:
        gc.enable()


def _calls(store: Store, key: str) -> dict[str, Callable[[int], object]]:
    def get_version(version: int) -> object:
        return store.get(key, version=version)

    def page(before: int) -> object:
        return store.history(key, limit=20, before_version=before)

    def newest(_before: int) -> object:
        return store.history(key, limit=20)

    return {
        "get --version (random)": get_version,
        "history page of 20": page,
        "history newest page of 20": newest,
    }


def main() -> None:
    """Build the two histories, time the calls, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=100_000, help="long history length")
    parser.add_argument("--short", type=int, default=100, help="short history length")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per repetition")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: under cwd)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="castore-bench-history-", dir=args.workdir or os.getcwd())
    try:
        store = Store(work, dag="bench", durable=False)
        built = time.perf_counter()
        for n, key in ((args.short, "short"), (args.versions, "long")):
            for i in range(n):
                store.set(key, {"i": i, "pad": "x" * 60})
        print(
            f"built {args.short} + {args.versions} versions in {time.perf_counter() - built:.1f} s"
        )
        rng = random.Random(7)
        rows: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for key, n in (("short", args.short), ("long", args.versions)):
                fresh = Store(work, dag="bench", durable=False)
                versions = [rng.randint(1, n) for _ in range(args.calls)]
                befores = [rng.randint(21, n + 1) for _ in range(args.calls // 4)]
                tests = _calls(fresh, key)
                for name, fn in tests.items():
                    calls = versions if name.startswith("get") else befores
                    rows.setdefault(f"{name}|{key}", []).append(_time_per_call(fn, calls))
        long_title = f"{args.versions:,} versions"
        print(f"\n{'call':32} {'100 versions':>14} {long_title:>18} {'ratio':>7}  target")
        for name in ("get --version (random)", "history page of 20", "history newest page of 20"):
            short = statistics.median(rows[f"{name}|short"])
            long = statistics.median(rows[f"{name}|long"])
            ratio = long / short
            verdict = "PASS" if ratio <= 1.5 else "FAIL"
            print(f"{name:32} {short:11.1f} µs {long:15.1f} µs {ratio:6.2f}x  <= 1.5x {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
