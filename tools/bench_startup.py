"""Benchmark: CLI cold start (issue 14), what one workflow step pays per ``castore`` call.

Runs, interleaved in one run (rotated order each round), whole processes of::

    python3 -c pass                      the interpreter's own start (the unit)
    python3 -c 'import msgspec'          information: the floor of any castore command
    castore get k                        a small value (answered before the library loads)
    castore get big                      a value zstd compresses (zstandard is loaded)
    castore get missing                  a key without a live version
    castore set k V                      durable (one fdatasync per set of an existing key)
    castore set --no-sync k V

and prints each one's median wall time and its ratio to ``python3 -c pass``
(ratio of the medians; in brackets the median of the per-round ratios), the
peak RSS of ``castore get`` (``wait4``'s ``ru_maxrss`` per run), and the top
entries of ``python -X importtime -m castore get k``. The store is a temporary
directory named by ``CASTORE_DIR``, with ``DAG_NAME`` set, as in a Dagu step;
``PYTHONDONTWRITEBYTECODE`` is dropped so that, as after an install, the
modules run from their ``.pyc`` files (the warm-up rounds write them).

``--compare DIR`` adds the same castore commands run from another checkout
(``DIR`` holds a ``castore/`` package, e.g. ``git archive HEAD castore | tar -x
-C DIR``), interleaved with the others: before/after figures from one run.

Targets (issue 14): get <= 3.0x, set --no-sync <= 3.5x, peak RSS of get <= 20 MiB.
This is a measurement, not a test: a FAIL row is information; the exit code is 0.

Usage: python tools/bench_startup.py [--rounds 15] [--compare DIR] [--top 25]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_GET = 3.0
TARGET_SET_NO_SYNC = 3.5
TARGET_RSS_MIB = 20.0
BIG = '{"rows": [' + ", ".join(['"a repeated row of text"'] * 40) + "]}"  # zstd-compressed
MSGSPEC = "import msgspec"  # the floor: castore's results and records are msgspec structs
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


class Case(NamedTuple):
    """One command line to time: ``argv(round)`` run with ``env``."""

    label: str
    argv: Callable[[int], list[str]]
    env: dict[str, str]


class Run(NamedTuple):
    """One process: wall seconds and peak resident set (KiB)."""

    seconds: float
    maxrss_kib: int


def launcher(use_module: bool) -> list[str]:
    """How ``castore`` is started: the installed script next to this Python, else ``-m``."""
    script = os.path.join(os.path.dirname(sys.executable), "castore")
    if not use_module and os.access(script, os.X_OK):
        return [script]
    found = None if use_module else shutil.which("castore")
    return [found] if found else [sys.executable, "-m", "castore"]


def spawn(argv: Sequence[str], env: dict[str, str]) -> Run:
    """Run one process with stdio on /dev/null; its wall time and peak RSS."""
    null = os.open(os.devnull, os.O_RDWR)
    actions = [(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)]
    try:
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], list(argv), env, file_actions=actions)
        _pid, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - start
    finally:
        os.close(null)
    if os.waitstatus_to_exitcode(status) != 0:
        proc = subprocess.run(list(argv), env=env, capture_output=True, check=False)
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace')}")
    return Run(seconds, usage.ru_maxrss)


def castore_cases(tag: str, cmd: list[str], env: dict[str, str]) -> list[Case]:
    """``get`` (a small value, a compressed one, a missing key), ``set``, ``set --no-sync``."""
    return [
        Case(f"castore get k{tag}", lambda _r: [*cmd, "get", "k"], env),
        Case(f"castore get big (zstd){tag}", lambda _r: [*cmd, "get", "big"], env),
        Case(f"castore get missing{tag}", lambda _r: [*cmd, "get", "missing"], env),
        Case(f"castore set k V{tag}", lambda r: [*cmd, "set", "k", str(r)], env),
        Case(
            f"castore set --no-sync k V{tag}",
            lambda r: [*cmd, "--no-sync", "set", "k", str(r)],
            env,
        ),
    ]


def prepare(workdir: str, name: str, pythonpath: str, cmd: list[str]) -> dict[str, str]:
    """A store of its own for one checkout, holding ``k``; the environment to use it."""
    env = dict(os.environ)
    env.update(CASTORE_DIR=os.path.join(workdir, name), DAG_NAME="bench", PYTHONPATH=pythonpath)
    for var in ("DAG_RUN_ID", "DAG_RUN_STEP_NAME", "CASTORE_ROOT_DAG", "CASTORE_FAILPOINTS"):
        env.pop(var, None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: the first run writes the .pyc files
    spawn([*cmd, "set", "k", '{"cursor": 0}'], env)
    spawn([*cmd, "set", "big", BIG], env)
    return env


def measure(cases: list[Case], rounds: int, warmup: int) -> dict[str, list[Run]]:
    """Every case once per round, in an order rotated each round; warm-up runs dropped."""
    runs: dict[str, list[Run]] = {case.label: [] for case in cases}
    for r in range(warmup + rounds):
        shift = r % len(cases)
        for case in cases[shift:] + cases[:shift]:
            run = spawn(case.argv(r), case.env)
            if r >= warmup:
                runs[case.label].append(run)
    return runs


def fdatasync_ms(workdir: str, count: int = 30) -> float:
    """Median cost of a 4 KiB append + fdatasync in ``workdir`` (what a durable set adds)."""
    path = os.path.join(workdir, "sync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return statistics.median(times) * 1000


def report(runs: dict[str, list[Run]], base: str) -> dict[str, float]:
    """Print medians and ratios; return each label's ratio of medians."""
    base_runs = runs[base]
    base_median = statistics.median(r.seconds for r in base_runs)
    ratios = {}
    print(f"{'command':<40} {'median ms':>10} {'ratio':>7} {'[per-round]':>12} {'RSS MiB':>8}")
    for label, mine in runs.items():
        median = statistics.median(r.seconds for r in mine)
        ratio = median / base_median
        per_round = statistics.median(
            m.seconds / b.seconds for m, b in zip(mine, base_runs, strict=True)
        )
        rss = statistics.median(r.maxrss_kib for r in mine) / 1024
        ratios[label] = ratio
        print(f"{label:<40} {median * 1000:>10.1f} {ratio:>6.2f}x {per_round:>11.2f}x {rss:>8.1f}")
    return ratios


def verdicts(runs: dict[str, list[Run]], ratios: dict[str, float], sync_ms: float) -> None:
    """PASS/FAIL per target of issue 14 (information, not an exit code)."""
    peak = max(r.maxrss_kib for r in runs["castore get k"]) / 1024
    rows = [
        ("castore get / python3 -c pass", ratios["castore get k"], TARGET_GET, "x"),
        (
            "castore set --no-sync / python3 -c pass",
            ratios["castore set --no-sync k V"],
            TARGET_SET_NO_SYNC,
            "x",
        ),
        ("peak RSS of castore get (MiB, max of runs)", peak, TARGET_RSS_MIB, ""),
    ]
    print("\ntargets (issue 14):")
    for what, value, target, unit in rows:
        verdict = "PASS" if value <= target else "FAIL"
        print(f"  {what:<44} {value:6.2f}{unit} <= {target}{unit}: {verdict}")
    durable = statistics.median(r.seconds for r in runs["castore set k V"])
    fast = statistics.median(r.seconds for r in runs["castore set --no-sync k V"])
    print(
        f"  durable set - set --no-sync: {(durable - fast) * 1000:.2f} ms "
        f"(one 4 KiB append + fdatasync here: {sync_ms:.2f} ms; information)"
    )


def import_profile(env: dict[str, str], top: int) -> None:
    """The top entries of ``python -X importtime -m castore get k`` (second run: warm pyc)."""
    argv = [sys.executable, "-X", "importtime", "-m", "castore", "get", "k"]
    subprocess.run(argv, env=env, capture_output=True, check=True)  # writes missing .pyc files
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    total = sum(row[0] for row in rows)
    print(
        f"\nimport profile of `python -X importtime -m castore get k`: {len(rows)} modules, "
        f"{total / 1000:.1f} ms of imports in all"
    )
    print(f"  top {top} by cumulative time (ms; depth as importtime nests them):")
    for self_us, cum_us, depth, name in sorted(rows, key=lambda row: -row[1])[:top]:
        print(f"    {cum_us / 1000:7.2f} cum {self_us / 1000:6.2f} self  {'  ' * depth}{name}")
    by_package: dict[str, int] = {}
    for self_us, _cum, _depth, name in rows:
        root = name.split(".")[0]
        by_package[root] = by_package.get(root, 0) + self_us
    print("  self time by top-level package (ms):")
    ranked = sorted(by_package.items(), key=lambda item: -item[1])[:top]
    print("    " + ", ".join(f"{name} {us / 1000:.1f}" for name, us in ranked))


def main() -> None:
    """Prepare the stores, time the interleaved rounds, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--compare", metavar="DIR", help="also time the castore/ package in DIR")
    parser.add_argument("--module", action="store_true", help="run `python -m castore`")
    parser.add_argument("--top", type=int, default=25, help="import profile rows")
    opts = parser.parse_args()
    cmd = launcher(opts.module)
    print(f"python: {sys.executable} ({sys.version.split()[0]}); castore: {' '.join(cmd)}")
    print(
        f"rounds: {opts.rounds} (+{opts.warmup} warm-up), rotated order; load average "
        f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs\n"
    )
    with tempfile.TemporaryDirectory(prefix="castore-startup-") as workdir:
        env = prepare(workdir, "after", CHECKOUT, cmd)
        base = Case("python3 -c pass", lambda _r: [sys.executable, "-c", "pass"], env)
        floor = Case("python3 -c 'import msgspec'", lambda _r: [sys.executable, "-c", MSGSPEC], env)
        cases = [base, floor, *castore_cases("", cmd, env)]
        if opts.compare:
            other = prepare(workdir, "before", os.path.abspath(opts.compare), cmd)
            cases += castore_cases(" (--compare)", cmd, other)
        runs = measure(cases, opts.rounds, opts.warmup)
        ratios = report(runs, base.label)
        verdicts(runs, ratios, fdatasync_ms(workdir))
        import_profile(env, opts.top)


if __name__ == "__main__":
    main()
