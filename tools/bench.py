"""Benchmark castore against sqlite3 and a naive file-per-key store, in one run.

Run from the checkout root::

    .venv/bin/python tools/bench.py --quick          # smoke run, < 60 s
    .venv/bin/python tools/bench.py                  # default run, < 5 min
    .venv/bin/python tools/bench.py --json out.json  # also save every number

This is a measurement, not a test: every workload prints medians, ratios and a
target row marked PASS or FAIL, and a FAIL is information (the exit status is 0
unless something crashed or read back a wrong value).

Peers (each gets 100-byte JSON values, i.e. a dict whose ``json.dumps`` is
100 bytes, and returns decoded values on get):

* ``castore``: ``castore.Store(path, dag=..., durable=...)``; ``durable=True``
  for durable rows, ``durable=False`` for the fast rows and to build data.
* ``sqlite3``: stdlib, WAL, one table ``kv(key TEXT PRIMARY KEY, version
  INTEGER, value TEXT)``; ``synchronous=FULL`` (durable) or ``NORMAL`` (fast);
  every set is its own ``BEGIN IMMEDIATE`` transaction that reads the version
  and writes version+1 (castore keeps versions too).
* ``naive``: one file per key; set = write temp file, fsync, rename over the
  key file, fsync the directory (durable) or the same without fsyncs (fast).

Workloads (numbered as in the target table):

1. warm get of one key's latest value (same handle, repeated).
2. get of the latest version after N versions of the key vs after 1 version,
   warm (same handle) and cold (a new ``Store`` handle per get).
3. set with a new value each time on 1 existing key and round-robin over 16
   existing keys; durable rows (targets) and fast rows (information).
4. list with a prefix selecting 100 of N keys in one namespace, warm and cold
   (new handle / connection per call).
5. 4 processes doing compare-and-swap increments of one counter (durable).

Method (for a noisy 2-core VM): every measurement is repeated ``--reps`` times
and in each repetition all variants run once, in an order rotated by one each
repetition, so machine drift hits all of them alike. Before every timed batch
``os.sync()`` flushes other variants' dirty pages and ``gc.collect()`` runs;
gc is disabled inside the batch. A batch runs until its op count or its time
budget is reached. Tables show the median over repetitions of ops/s (or ms per
call) with the min-max, and pooled per-op latency percentiles. A ratio is the
median over repetitions of the per-repetition ratio (variants of one repetition
ran close together in time, so drift cancels), with the range of those ratios
in brackets; the ratio of the medians is in the JSON.

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
import gc
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from queue import Empty
from typing import TYPE_CHECKING, Any, TypeVar

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import castore

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

Json = dict[str, Any]
WorkerResult = tuple[int, int, int, int, int, str]  # id, ok, retries, t0, t1, error

T = TypeVar("T")
_pc = time.perf_counter_ns
VALUE_BYTES = 100
LIST_MATCHES = 100
CAS_PROCS = 4
W3_WARMUP_SETS = 2_000


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


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
    cas_each: int  # successful increments per process (workload 5)
    cas_reps: int
    start_method: str
    workloads: frozenset[int]


def _config(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    chosen = frozenset(int(w) for w in args.workloads.split(",") if w.strip())
    bad = chosen - {1, 2, 3, 4, 5}
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
        workloads=chosen or frozenset({1, 2, 3, 4, 5}),
    )


# ---------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------


def make_value(i: int) -> Json:
    """A dict whose ``json.dumps`` is exactly 100 bytes; distinct for every ``i``."""
    value: Json = {"n": i, "cursor": "", "updated_at": "2026-01-01T00:00:00Z"}
    room = VALUE_BYTES - len(json.dumps(value))
    digest = hashlib.sha256(b"%d" % i).hexdigest() * 2
    value["cursor"] = digest[: max(0, room)]
    return value


class _Values:
    """Hands out values never used before in this run (a set always writes new content)."""

    def __init__(self) -> None:
        self.next = 1_000_000_000

    def fresh(self, count: int) -> list[Json]:
        first = self.next
        self.next += count
        return [make_value(i) for i in range(first, first + count)]


# ---------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------


class Peer:
    """One store under test: set/get of JSON dicts by key."""

    name = "peer"

    def set(self, key: str, value: Json) -> None:
        """Write a new latest value of ``key``."""
        raise NotImplementedError

    def get(self, key: str) -> Any:
        """Read and decode the latest value of ``key``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files and connections."""


class CastorePeer(Peer):
    """castore.Store; values go in as dicts (castore normalizes them itself)."""

    name = "castore"

    def __init__(self, root: str, durable: bool, dag: str = "bench") -> None:
        self.root = root
        self.dag = dag
        self.durable = durable
        self.store = castore.Store(root, dag=dag, durable=durable)

    def set(self, key: str, value: Json) -> None:
        """Write a new version."""
        self.store.set(key, value)

    def get(self, key: str) -> Any:
        """Latest value through this handle (its cache may serve it)."""
        return self.store.get(key).value

    def get_cold(self, key: str) -> Any:
        """Latest value through a new handle, so no in-process cache can serve it."""
        return castore.Store(self.root, dag=self.dag, durable=self.durable).get(key).value

    def list_keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` through this handle."""
        return [e.key for e in self.store.list(prefix).entries]

    def list_keys_cold(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` through a new handle (loads the key index)."""
        store = castore.Store(self.root, dag=self.dag, durable=self.durable)
        return [e.key for e in store.list(prefix).entries]

    def close(self) -> None:
        """Drop the handle's caches."""
        self.store.close()


def _sqlite_connect(path: str, durable: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=60.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
    return db


class SqlitePeer(Peer):
    """sqlite3, WAL; one BEGIN IMMEDIATE transaction per set that bumps the version."""

    name = "sqlite3"

    def __init__(self, root: str, durable: bool) -> None:
        os.makedirs(root, exist_ok=True)
        self.path = os.path.join(root, "store.sqlite")
        self.durable = durable
        self.db = _sqlite_connect(self.path, durable)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS kv"
            " (key TEXT PRIMARY KEY, version INTEGER NOT NULL, value TEXT NOT NULL)"
        )

    def set(self, key: str, value: Json) -> None:
        """Read the version and write version+1 in one IMMEDIATE transaction."""
        data = json.dumps(value)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT version FROM kv WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute("INSERT INTO kv (key, version, value) VALUES (?, 1, ?)", (key, data))
            else:
                db.execute(
                    "UPDATE kv SET version = ?, value = ? WHERE key = ?", (row[0] + 1, data, key)
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def get(self, key: str) -> Any:
        """Latest value (KeyError if absent)."""
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def bulk_insert(self, items: Sequence[tuple[str, Json]]) -> None:
        """Population only: all rows (version 1) in one transaction."""
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO kv (key, version, value) VALUES (?, 1, ?)",
            ((k, json.dumps(v)) for k, v in items),
        )
        self.db.execute("COMMIT")

    def list_keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (an index range scan)."""
        return _sqlite_list(self.db, prefix)

    def list_keys_cold(self, prefix: str) -> list[str]:
        """Same through a new connection."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            return _sqlite_list(db, prefix)
        finally:
            db.close()

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def _sqlite_list(db: sqlite3.Connection, prefix: str) -> list[str]:
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    rows = db.execute(
        "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, upper)
    ).fetchall()
    return [r[0] for r in rows]


class NaivePeer(Peer):
    """One JSON file per key, replaced atomically (with fsyncs when durable)."""

    name = "naive"

    def __init__(self, root: str, durable: bool) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.durable = durable
        self.dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key.replace("/", "%2F") + ".json")

    def set(self, key: str, value: Json) -> None:
        """Temp file, (fsync), rename over, (fsync dir)."""
        data = json.dumps(value).encode()
        path = self._path(key)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.durable:
            os.fsync(self.dirfd)

    def get(self, key: str) -> Any:
        """Open, read, decode."""
        with open(self._path(key), "rb") as fh:
            return json.loads(fh.read())

    def close(self) -> None:
        """Close the directory handle."""
        os.close(self.dirfd)


# ---------------------------------------------------------------------------
# timing and statistics
# ---------------------------------------------------------------------------


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


def run_batch(op: Callable[[int], object], n_max: int, t_max_s: float, min_ops: int = 3) -> Batch:
    """Call ``op(i)`` until ``n_max`` calls or ``t_max_s`` seconds (at least ``min_ops``).

    ``os.sync()`` and ``gc.collect()`` run first, outside the clock; gc is off inside.
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
    """Run ``fn(name, rep)`` for every name, ``reps`` times, rotating the order by one per rep."""
    out: dict[str, list[T]] = {n: [] for n in names}
    for rep in range(reps):
        k = rep % len(names)
        for name in list(names[k:]) + list(names[:k]):
            out[name].append(fn(name, rep))
    return out


def _pct(values: Sequence[int], p: float) -> float:
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
        p50_us=_pct(lats, 50) / 1e3,
        p99_us=_pct(lats, 99) / 1e3,
        ops_total=sum(b.ops for b in batches),
    )


@dataclass(frozen=True)
class Target:
    """One checked target: PASS/FAIL is information, never an exception."""

    workload: int
    what: str
    target: str
    measured: str
    passed: bool
    value: float


Ratio = tuple[float, float, float, float]  # per-rep median, min, max; ratio of medians


def _ratio(a: Row, b: Row) -> Ratio:
    """Rate ratio a/b: median, min and max over repetitions, and median(a)/median(b).

    Variants of one repetition ran close together in time, so the per-repetition
    ratio cancels most machine drift; its median is the headline number.
    """
    per_rep = [x / y for x, y in zip(a.rates, b.rates, strict=True) if y > 0]
    if not per_rep or b.median <= 0:
        nan = float("nan")
        return nan, nan, nan, nan
    return statistics.median(per_rep), min(per_rep), max(per_rep), a.median / b.median


def _p50_ratio(a: Row, b: Row) -> float:
    """Per-op median latency of b / of a: the speed ratio least hurt by preemption."""
    return b.p50_us / a.p50_us if a.p50_us > 0 else float("nan")


def _fmt_ratio(r: Ratio) -> str:
    return f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1
) -> None:
    """Print a plain, aligned text table; the first ``left`` columns are left-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    print(f"\n{title}")

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def print_rate_rows(title: str, rows: Sequence[Row], unit: str = "ops/s") -> None:
    """Table of rows as ops/s (or ms per call) with min-max and latency percentiles."""
    out = []
    for r in rows:
        if unit == "ms":
            out.append(
                [
                    r.name,
                    f"{1e3 / r.median:.3f}",
                    f"{1e3 / max(r.rates):.3f}-{1e3 / min(r.rates):.3f}",
                    f"{r.p50_us / 1e3:.3f}",
                    f"{r.p99_us / 1e3:.3f}",
                    str(r.ops_total),
                ]
            )
        else:
            out.append(
                [
                    r.name,
                    _fmt_rate(r.median),
                    f"{_fmt_rate(min(r.rates))}-{_fmt_rate(max(r.rates))}",
                    f"{r.us_per_op:.1f}",
                    f"{r.p50_us:.1f}",
                    f"{r.p99_us:.1f}",
                    str(r.ops_total),
                ]
            )
    if unit == "ms":
        headers = ["variant", "ms/call (median)", "min-max", "p50 ms", "p99 ms", "calls"]
    else:
        headers = ["variant", "ops/s (median)", "min-max", "us/op", "p50 us", "p99 us", "ops"]
    print_table(title, headers, out)


# ---------------------------------------------------------------------------
# machine probes
# ---------------------------------------------------------------------------


def _fs_type(path: str) -> str:
    """File-system type and device of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1]
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) > len(best):
                    best, kind = mnt, f"{parts[2]} on {parts[0]} ({mnt})"
    except OSError:
        pass
    return kind


def probe_create_us(workdir: str, n: int = 20) -> float:
    """Median microseconds to create (and close) an empty file: the ext4 recently-deleted probe."""
    d = tempfile.mkdtemp(prefix="probe-", dir=workdir)
    lats = []
    for i in range(n):
        t0 = _pc()
        fd = os.open(os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        lats.append(_pc() - t0)
    shutil.rmtree(d)
    return statistics.median(lats) / 1e3


def probe_fdatasync_us(workdir: str, n: int = 20) -> float:
    """Median microseconds of a 4 KiB append + fdatasync."""
    path = os.path.join(workdir, "probe-sync.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = b"x" * 4096
    lats = []
    try:
        for _ in range(n):
            t0 = _pc()
            os.write(fd, block)
            os.fdatasync(fd)
            lats.append(_pc() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(lats) / 1e3


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------


class Bench:
    """State of one run: config, scratch directory, results."""

    def __init__(self, cfg: Config, workdir: str) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.values = _Values()
        self.targets: list[Target] = []
        self.results: dict[str, Any] = {}
        self.problems: list[str] = []

    def _dir(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def check(self, what: str, ok: bool) -> None:
        """Record a read-back check; failures are reported at the end."""
        if not ok:
            self.problems.append(what)
            print(f"  CHECK FAILED: {what}")

    def target(
        self, workload: int, what: str, target: str, measured: str, passed: bool, value: float
    ) -> None:
        """Record one target row."""
        self.targets.append(Target(workload, what, target, measured, passed, value))

    # -- setup: bulk data, built before any timed workload ------------------------------

    def build(self) -> None:
        """Build the N-version key (workload 2) and the N-key namespace (workload 4)."""
        cfg = self.cfg
        build: dict[str, Any] = {}
        if 2 in cfg.workloads:
            peer = CastorePeer(self._dir("w2-castore"), durable=False, dag="bench-hist")
            peer.set("shallow", make_value(1))
            t0 = _pc()
            for i in range(cfg.history_n):
                peer.set("deep", make_value(i))
            dt = (_pc() - t0) / 1e9
            peer.close()
            build["history_versions"] = cfg.history_n
            build["history_set_us"] = dt / cfg.history_n * 1e6
            print(
                f"setup: {cfg.history_n:,} versions of one key, castore durable=False: "
                f"{dt:.1f} s ({dt / cfg.history_n * 1e6:.0f} us/set)"
            )
        if 4 in cfg.workloads:
            peer = CastorePeer(self._dir("w4-castore"), durable=False, dag="bench-list")
            t0 = _pc()
            for i in range(cfg.list_n):
                peer.set(_list_key(i), make_value(i))
            dt = (_pc() - t0) / 1e9
            peer.close()
            sq = SqlitePeer(self._dir("w4-sqlite"), durable=False)
            t1 = _pc()
            sq.bulk_insert([(_list_key(i), make_value(i)) for i in range(cfg.list_n)])
            dt_sq = (_pc() - t1) / 1e9
            sq.close()
            build["list_keys"] = cfg.list_n
            build["list_castore_set_us"] = dt / cfg.list_n * 1e6
            build["list_sqlite_bulk_s"] = dt_sq
            print(
                f"setup: {cfg.list_n:,} keys in one namespace, castore durable=False one set "
                f"per key: {dt:.1f} s ({dt / cfg.list_n * 1e6:.0f} us/key); sqlite3 one "
                f"executemany: {dt_sq:.2f} s"
            )
        self.results["build"] = build
        t0 = _pc()
        os.sync()
        print(f"setup: os.sync() after build: {(_pc() - t0) / 1e9:.1f} s")

    # -- 1 ------------------------------------------------------------------------------

    def w1_get(self) -> None:
        """Warm get of one key's latest value."""
        cfg = self.cfg
        peers: dict[str, Peer] = {
            "castore": CastorePeer(self._dir("w1-castore"), durable=True),
            "sqlite3": SqlitePeer(self._dir("w1-sqlite"), durable=True),
            "naive": NaivePeer(self._dir("w1-naive"), durable=True),
        }
        last = make_value(7)
        for p in peers.values():
            p.set("k", make_value(6))
            p.set("k", last)
            for _ in range(100):
                p.get("k")

        def one(name: str, _rep: int) -> Batch:
            get = peers[name].get
            return run_batch(lambda _i: get("k"), 1_000_000, cfg.batch_s)

        batches = interleaved(list(peers), one, cfg.reps)
        for name, p in peers.items():
            self.check(f"w1 {name} get returns the last value", p.get("k") == last)
            p.close()
        rows = [summarize(n, b) for n, b in batches.items()]
        print_rate_rows("1. warm get, latest value of one key (100 B)", rows)
        by = {r.name: r for r in rows}
        r_sq = _ratio(by["castore"], by["sqlite3"])
        r_nv = _ratio(by["castore"], by["naive"])
        print(
            f"castore / sqlite3 = {_fmt_ratio(r_sq)}   castore / naive = {_fmt_ratio(r_nv)}"
            f"   (by p50 latency: {_p50_ratio(by['castore'], by['sqlite3']):.2f}x, "
            f"{_p50_ratio(by['castore'], by['naive']):.2f}x)"
        )
        self.target(
            1,
            "warm get ops/s, castore / sqlite3",
            ">= 1.00x",
            _fmt_ratio(r_sq),
            r_sq[0] >= 1.0,
            r_sq[0],
        )
        self.results["w1_get"] = {
            "rows": [r.to_json() for r in rows],
            "ratio_vs_sqlite3": r_sq,
            "ratio_vs_naive": r_nv,
        }

    # -- 2 ------------------------------------------------------------------------------

    def w2_history(self) -> None:
        """Latest-version get after N versions vs after 1 version, warm and cold."""
        cfg = self.cfg
        peer = CastorePeer(self._dir("w2-castore"), durable=True, dag="bench-hist")
        n = cfg.history_n
        deep_last = make_value(n - 1)
        self.check("w2 deep key latest value", peer.get("deep") == deep_last)
        self.check("w2 deep key version", peer.store.get("deep").version == n)
        self.check("w2 shallow key latest value", peer.get("shallow") == make_value(1))
        variants: dict[str, Callable[[int], object]] = {
            "warm, 1 version": lambda _i: peer.get("shallow"),
            f"warm, {n:,} versions": lambda _i: peer.get("deep"),
            "cold, 1 version": lambda _i: peer.get_cold("shallow"),
            f"cold, {n:,} versions": lambda _i: peer.get_cold("deep"),
        }

        def one(name: str, _rep: int) -> Batch:
            op = variants[name]
            op(0)
            return run_batch(op, 1_000_000, cfg.batch_s)

        batches = interleaved(list(variants), one, cfg.reps)
        peer.close()
        rows = [summarize(name, b) for name, b in batches.items()]
        print_rate_rows(f"2. castore get latest after {n:,} versions vs after 1 version", rows)
        out: dict[str, Any] = {"rows": [r.to_json() for r in rows], "versions": n}
        for kind in ("warm", "cold"):
            shallow = next(r for r in rows if r.name == f"{kind}, 1 version")
            deep = next(r for r in rows if r.name == f"{kind}, {n:,} versions")
            # cost ratio = time per op deep / time per op shallow = rate shallow / rate deep
            ratio = _ratio(shallow, deep)
            print(
                f"{kind}: cost({n:,} versions) / cost(1 version) = {_fmt_ratio(ratio)}"
                f"   (by p50 latency: {deep.p50_us / shallow.p50_us:.2f}x)"
            )
            self.target(
                2,
                f"get latest, {kind}: cost {n:,} versions / 1 version",
                "<= 1.20x",
                _fmt_ratio(ratio),
                ratio[0] <= 1.2,
                ratio[0],
            )
            out[f"cost_ratio_{kind}"] = ratio
        self.results["w2_history"] = out

    # -- 3 ------------------------------------------------------------------------------

    def w3_set(self) -> None:
        """Set with a new value each time: 1 key and 16 keys round-robin; durable and fast."""
        self.results["w3_set"] = {"durable": self._w3_mode(True), "fast": self._w3_mode(False)}

    def _w3_mode(self, durable: bool) -> dict[str, Any]:
        cfg = self.cfg
        tag = "durable" if durable else "fast"
        peers: dict[str, Peer] = {
            "castore": CastorePeer(self._dir(f"w3-{tag}-castore"), durable=durable),
            "sqlite3": SqlitePeer(self._dir(f"w3-{tag}-sqlite"), durable=durable),
            "naive": NaivePeer(self._dir(f"w3-{tag}-naive"), durable=durable),
        }
        keysets = {"1 key": ["k"], "16 keys": [f"k{j:02d}" for j in range(16)]}
        last: dict[tuple[str, str], Json] = {}
        all_keys = [key for keys in keysets.values() for key in keys]
        for p in peers.values():
            for key in all_keys:
                p.set(key, make_value(0))
        # Steady state, untimed: a fresh castore store creates its 256 blob-index shard
        # files during its first ~1,500 distinct values (ms each on this disk); write
        # those through a durable=False handle on the same directory.
        warm = CastorePeer(self._dir(f"w3-{tag}-castore"), durable=False)
        for i, value in enumerate(self.values.fresh(W3_WARMUP_SETS)):
            warm.set(all_keys[i % len(all_keys)], value)
        warm.close()
        for p in peers.values():
            for i, value in enumerate(self.values.fresh(20)):
                p.set(all_keys[i % len(all_keys)], value)
        names = [f"{p} {k}" for k in keysets for p in peers]
        t_max = cfg.durable_batch_s if durable else cfg.batch_s
        # enough fresh values for the time budget at up to 40,000 sets/s
        n_vals = min(100_000, int(t_max * 40_000) + 16)

        def one(name: str, _rep: int) -> Batch:
            pname, kname = name.split(" ", 1)
            keys = keysets[kname]
            nk = len(keys)
            vals = self.values.fresh(n_vals)
            setter = peers[pname].set
            batch = run_batch(lambda i: setter(keys[i % nk], vals[i]), len(vals), t_max)
            for i in range(max(0, batch.ops - nk), batch.ops):
                last[(pname, keys[i % nk])] = vals[i]
            return batch

        batches = interleaved(names, one, cfg.durable_reps if durable else cfg.reps)
        for (pname, key), value in last.items():
            self.check(f"w3 {tag} {pname} {key} read-back", peers[pname].get(key) == value)
        for p in peers.values():
            p.close()
        rows = [summarize(name, b) for name, b in batches.items()]
        mode = (
            "durable: castore durable=True, sqlite3 synchronous=FULL, naive with fsyncs"
            if durable
            else "fast: castore durable=False, sqlite3 synchronous=NORMAL, naive no fsync"
        )
        print_rate_rows(f"3. set, new 100 B value each time; {mode}", rows)
        by = {r.name: r for r in rows}
        res: dict[str, Any] = {"rows": [r.to_json() for r in rows]}
        for kname in keysets:
            c = by[f"castore {kname}"]
            r_nv = _ratio(c, by[f"naive {kname}"])
            r_sq = _ratio(c, by[f"sqlite3 {kname}"])
            print(
                f"{tag}, {kname}: castore / naive = {_fmt_ratio(r_nv)}   "
                f"castore / sqlite3 = {_fmt_ratio(r_sq)}"
            )
            res[f"{kname}: ratio_vs_naive"] = r_nv
            res[f"{kname}: ratio_vs_sqlite3"] = r_sq
            if durable:
                self.target(
                    3,
                    f"durable set ops/s, {kname}: castore / naive",
                    ">= 1.50x",
                    _fmt_ratio(r_nv),
                    r_nv[0] >= 1.5,
                    r_nv[0],
                )
                self.target(
                    3,
                    f"durable set ops/s, {kname}: castore / sqlite3",
                    "(info)",
                    _fmt_ratio(r_sq),
                    True,
                    r_sq[0],
                )
        return res

    # -- 4 ------------------------------------------------------------------------------

    def w4_list(self) -> None:
        """List with a prefix selecting 100 of N keys: warm and cold, castore and sqlite3."""
        cfg = self.cfg
        n = cfg.list_n
        prefix, expected = _list_prefix(n)
        cas = CastorePeer(self._dir("w4-castore"), durable=True, dag="bench-list")
        sq = SqlitePeer(self._dir("w4-sqlite"), durable=True)
        variants: dict[str, Callable[[int], list[str]]] = {
            "castore warm": lambda _i: cas.list_keys(prefix),
            "castore cold (new Store)": lambda _i: cas.list_keys_cold(prefix),
            "sqlite3 warm": lambda _i: sq.list_keys(prefix),
            "sqlite3 cold (new connection)": lambda _i: sq.list_keys_cold(prefix),
        }
        for name, op in variants.items():
            self.check(
                f"w4 {name} returns the {len(expected)} expected keys in order", op(0) == expected
            )

        def one(name: str, _rep: int) -> Batch:
            op = variants[name]
            if "warm" in name:
                op(0)
            return run_batch(op, 100_000, cfg.batch_s)

        batches = interleaved(list(variants), one, cfg.reps)
        cas.close()
        sq.close()
        rows = [summarize(name, b) for name, b in batches.items()]
        print_rate_rows(
            f"4. list prefix {prefix!r}: {len(expected)} of {n:,} keys in one namespace",
            rows,
            unit="ms",
        )
        by = {r.name: r for r in rows}
        res: dict[str, Any] = {"rows": [r.to_json() for r in rows], "keys": n, "prefix": prefix}
        for kind, sqname in (
            ("warm", "sqlite3 warm"),
            ("cold (new Store)", "sqlite3 cold (new connection)"),
        ):
            c = by[f"castore {kind}"]
            ms = 1e3 / c.median
            r_sq = _ratio(c, by[sqname])
            print(
                f"castore {kind}: {ms:.3f} ms/call; castore / sqlite3 calls/s = {_fmt_ratio(r_sq)}"
            )
            self.target(
                4,
                f"list 100 of {n:,}, {kind}: castore ms/call",
                "< 5 ms",
                f"{ms:.3f} ms",
                ms < 5.0,
                ms,
            )
            res[f"castore {kind}: ratio_vs_sqlite3"] = r_sq
        self.results["w4_list"] = res

    # -- 5 ------------------------------------------------------------------------------

    def w5_cas(self) -> None:
        """4 processes x fixed successful CAS increments of one counter, durable."""
        cfg = self.cfg
        ctx = (
            multiprocessing.get_context("fork")
            if cfg.start_method == "fork"
            else multiprocessing.get_context("spawn")
        )
        total = CAS_PROCS * cfg.cas_each
        roots = {"castore": self._dir("w5-castore"), "sqlite3": self._dir("w5-sqlite")}
        setup_cas = CastorePeer(roots["castore"], durable=True, dag="bench-cas")
        setup_sq = SqlitePeer(roots["sqlite3"], durable=True)
        setup_cas.close()
        setup_sq.close()
        details: dict[str, list[dict[str, Any]]] = {n: [] for n in roots}

        def one(name: str, rep: int) -> Batch:
            key = f"ctr-{rep}"
            if name == "castore":
                p: Peer = CastorePeer(roots[name], durable=True, dag="bench-cas")
            else:
                p = SqlitePeer(roots[name], durable=True)
            p.set(key, make_value(0))
            p.close()
            barrier = ctx.Barrier(CAS_PROCS)
            queue: Queue[WorkerResult] = ctx.Queue()
            procs = [
                ctx.Process(
                    target=cas_worker,
                    args=(name, roots[name], key, cfg.cas_each, w, barrier, queue),
                )
                for w in range(CAS_PROCS)
            ]
            os.sync()
            for proc in procs:
                proc.start()
            results = _collect(procs, queue, barrier)
            errors = [r[5] for r in results if r[5]]
            ok = sum(r[1] for r in results)
            retries = sum(r[2] for r in results)
            t0 = min((r[3] for r in results if r[3]), default=0)
            t1 = max((r[4] for r in results if r[3]), default=0)
            final_n, final_version = _cas_final(name, roots[name], key)
            exact = final_n == total and final_version == total + 1 and not errors
            details[name].append(
                {
                    "ok": ok,
                    "retries": retries,
                    "elapsed_s": (t1 - t0) / 1e9,
                    "final_n": final_n,
                    "final_version": final_version,
                    "exact": exact,
                    "errors": errors,
                }
            )
            self.check(f"w5 {name} rep {rep}: workers ran without error {errors}", not errors)
            return Batch(ok, t1 - t0, [])

        batches = interleaved(list(roots), one, cfg.cas_reps)
        rows = []
        for name, bs in batches.items():
            row = summarize(name, bs)
            row.extra = {"reps": details[name]}
            rows.append(row)
        table = []
        for r in rows:
            d = details[r.name]
            table.append(
                [
                    r.name,
                    _fmt_rate(r.median),
                    f"{_fmt_rate(min(r.rates))}-{_fmt_rate(max(r.rates))}",
                    f"{r.us_per_op:.0f}",
                    f"{statistics.median(x['retries'] for x in d) / total:.2f}",
                    ", ".join(f"{x['final_n']}" for x in d),
                    "yes" if all(x["exact"] for x in d) else "NO",
                ]
            )
        print_table(
            f"5. CAS increments, {CAS_PROCS} processes x {cfg.cas_each} successes "
            f"({total} per rep), durable, start method {cfg.start_method}",
            [
                "peer",
                "incr/s (median)",
                "min-max",
                "us/incr",
                "retries/incr",
                "final count per rep",
                f"exact ({total})",
            ],
            table,
        )
        by = {r.name: r for r in rows}
        r_sq = _ratio(by["castore"], by["sqlite3"])
        print(f"castore / sqlite3 = {_fmt_ratio(r_sq)}")
        for name in roots:
            exact = all(x["exact"] for x in details[name])
            print(f"{name}: final count exact ({total}) in every rep: {'yes' if exact else 'NO'}")
        self.target(
            5,
            f"CAS increments/s, {CAS_PROCS} procs: castore / sqlite3",
            ">= 1.00x",
            _fmt_ratio(r_sq),
            r_sq[0] >= 1.0,
            r_sq[0],
        )
        self.results["w5_cas"] = {
            "rows": [r.to_json() for r in rows],
            "ratio_vs_sqlite3": r_sq,
            "total_per_rep": total,
        }


def _list_key(i: int) -> str:
    return f"item-{i:06d}"


def _list_prefix(n: int) -> tuple[str, list[str]]:
    """A prefix selecting exactly LIST_MATCHES keys in the middle of ``n`` keys."""
    block = (n // 2) // LIST_MATCHES
    prefix = _list_key(block * LIST_MATCHES)[: -len(str(LIST_MATCHES - 1))]
    expected = [_list_key(i) for i in range(n) if _list_key(i).startswith(prefix)]
    return prefix, expected


def _collect(
    procs: Sequence[BaseProcess],
    queue: Queue[WorkerResult],
    barrier: Barrier,
    timeout_s: float = 600.0,
) -> list[WorkerResult]:
    """Gather one result per worker; a worker that dies first gets an error result.

    When a worker is dead without a result (e.g. it failed to import castore) or the
    timeout passes, the barrier is aborted so that the others stop waiting and report.
    """
    results: dict[int, WorkerResult] = {}
    deadline = time.monotonic() + timeout_s
    aborted = False
    while len(results) < len(procs):
        try:
            got = queue.get(timeout=0.5)
            results[got[0]] = got
            continue
        except Empty:
            pass
        missing = [w for w in range(len(procs)) if w not in results]
        dead = [w for w in missing if procs[w].exitcode is not None]
        if dead and len(dead) == len(missing):
            break  # nobody left to report (the queue was drained for 0.5 s above)
        if (dead or time.monotonic() > deadline) and not aborted:
            barrier.abort()
            aborted = True
            deadline = time.monotonic() + 30.0
        elif aborted and time.monotonic() > deadline:
            break
    for w, proc in enumerate(procs):
        proc.join(timeout=10 if w in results else 1)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
        if w not in results:
            why = f"worker {w} exited with code {proc.exitcode} without a result"
            results[w] = (w, 0, 0, 0, 0, why)
    return [results[w] for w in sorted(results)]


def _cas_final(name: str, root: str, key: str) -> tuple[int, int]:
    """(counter value, version) of ``key`` read through a fresh handle."""
    if name == "castore":
        got = castore.Store(root, dag="bench-cas").get(key)
        return int(got.value["n"]), got.version
    db = sqlite3.connect(os.path.join(root, "store.sqlite"))
    try:
        row = db.execute("SELECT version, value FROM kv WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    return int(json.loads(row[1])["n"]), int(row[0])


def cas_worker(
    name: str,
    root: str,
    key: str,
    n_success: int,
    worker_id: int,
    barrier: Barrier,
    queue: Queue[WorkerResult],
) -> None:
    """One CAS process: ``n_success`` increments of ``key``; reports through ``queue``.

    castore: get, then set(expected_version=version), retry on ConflictError.
    sqlite3: BEGIN IMMEDIATE; read; update; COMMIT (busy_timeout 60 s); a
    "database is locked" error counts as a retry.
    """
    ok = retries = 0
    t0 = t1 = 0
    error = ""
    try:
        if name == "castore":
            store = castore.Store(root, dag="bench-cas", durable=True)
            step: Callable[[], bool] = _castore_cas_step(store, key)
        else:
            db = _sqlite_connect(os.path.join(root, "store.sqlite"), durable=True)
            step = _sqlite_cas_step(db, key)
        barrier.wait(timeout=120)
        gc.collect()
        gc.disable()
        t0 = time.monotonic_ns()
        while ok < n_success:
            if step():
                ok += 1
            else:
                retries += 1
        t1 = time.monotonic_ns()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        error = f"{type(exc).__name__}: {exc}"
        t1 = t1 or time.monotonic_ns()
    finally:
        gc.enable()
    queue.put((worker_id, ok, retries, t0, t1, error))


def _castore_cas_step(store: castore.Store, key: str) -> Callable[[], bool]:
    def step() -> bool:
        got = store.get(key)
        value = make_value(got.value["n"] + 1)
        try:
            store.set(key, value, expected_version=got.version)
        except castore.ConflictError:
            return False
        return True

    return step


def _sqlite_cas_step(db: sqlite3.Connection, key: str) -> Callable[[], bool]:
    def step() -> bool:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # busy beyond the timeout
            return False
        try:
            version, data = db.execute(
                "SELECT version, value FROM kv WHERE key = ?", (key,)
            ).fetchone()
            value = make_value(json.loads(data)["n"] + 1)
            db.execute(
                "UPDATE kv SET version = ?, value = ? WHERE key = ?",
                (version + 1, json.dumps(value), key),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True

    return step


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def _default_workdir_parent() -> str:
    """``./bench-results`` unless that is on tmpfs; never a tmpfs /tmp."""
    here = os.path.join(os.getcwd(), "bench-results")
    if not _fs_type(os.getcwd()).startswith("tmpfs"):
        return here
    return "/work" if os.path.isdir("/work") else here


def _cleanup(workdir: str, how: str) -> str:
    """Delete (or keep) the scratch directory; return a line for the report."""
    if how == "keep":
        return f"scratch kept in {workdir}"
    if how == "foreground":
        t0 = time.monotonic()
        shutil.rmtree(workdir, ignore_errors=True)
        return f"scratch deleted in {time.monotonic() - t0:.0f} s"
    trash = os.path.join(os.path.dirname(workdir), ".trash-" + os.path.basename(workdir))
    os.rename(workdir, trash)
    code = "import os, shutil, sys; os.nice(19); shutil.rmtree(sys.argv[1], ignore_errors=True)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, trash],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return f"scratch {trash} is being deleted in the background (pid {proc.pid})"


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
        help="smoke run (< 60 s): 3 reps, short batches, 10,000 versions/keys",
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
    ap.add_argument("--workloads", default="", help="comma list of 1-5 (default all)")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default 5, quick 3)")
    ap.add_argument(
        "--batch-time",
        type=float,
        default=0.0,
        help="seconds per timed batch (default 0.2, quick 0.1)",
    )
    ap.add_argument(
        "--durable-reps",
        type=int,
        default=0,
        help="repetitions of the durable-set rows (default 15, quick 5)",
    )
    ap.add_argument(
        "--durable-batch-time",
        type=float,
        default=0.0,
        help="seconds per durable-set batch (default 0.2, quick 0.1)",
    )
    ap.add_argument(
        "--history-n",
        type=int,
        default=0,
        help="versions of the deep key in workload 2 (default 100000, quick 10000)",
    )
    ap.add_argument(
        "--list-n",
        type=int,
        default=0,
        help="keys in the namespace of workload 4 (default 100000, quick 10000)",
    )
    ap.add_argument(
        "--cas-each",
        type=int,
        default=0,
        help="successful increments per CAS process (default 250, quick 50)",
    )
    ap.add_argument(
        "--cas-reps", type=int, default=0, help="repetitions of workload 5 (default 5, quick 3)"
    )
    ap.add_argument(
        "--start-method",
        choices=["spawn", "fork"],
        default="spawn",
        help="multiprocessing start method for workload 5 (default spawn)",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 when a read-back check failed."""
    args = parse_args(argv)
    cfg = _config(args)
    parent = os.path.abspath(args.workdir or _default_workdir_parent())
    os.makedirs(parent, exist_ok=True)
    trash = sorted(n for n in os.listdir(parent) if n.startswith(".trash-castore-bench-"))
    workdir = tempfile.mkdtemp(prefix="castore-bench-", dir=parent)
    fs = _fs_type(workdir)
    bench = Bench(cfg, workdir)
    started = time.monotonic()
    meta: dict[str, Any] = {
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
        "fs": fs,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": os.getloadavg(),
    }
    print(
        f"castore bench, mode {cfg.mode}: reps {cfg.reps} x {cfg.batch_s} s batches, durable "
        f"sets {cfg.durable_reps} x {cfg.durable_batch_s} s, CAS {cfg.cas_reps} reps, "
        f"workloads {','.join(map(str, sorted(cfg.workloads)))}"
    )
    print(
        f"python {meta['python']}, sqlite {meta['sqlite']}, castore {meta['castore']}, "
        f"{meta['cpus']} cpus"
    )
    print(f"workdir {workdir} on {fs}")
    load = meta["loadavg_start"]
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", end="")
    print(" (other processes are busy: expect noise, compare ratios)" if load[0] > 0.5 else "")
    if trash:
        print(
            f"WARNING: {len(trash)} earlier scratch dir(s) still being deleted in {parent} "
            f"({', '.join(trash)}): disk contention and slow file creation likely"
        )
    if fs.startswith("tmpfs"):
        print("WARNING: workdir is on tmpfs: fsync is free there, durable numbers mean nothing")
    meta["create_probe_us_start"] = probe_create_us(workdir)
    meta["fdatasync_4k_us"] = probe_fdatasync_us(workdir)
    print(
        f"probe: create empty file {meta['create_probe_us_start']:.0f} us (~15 us normal; "
        f"0.2-0.8 ms after mass deletions), 4 KiB append + fdatasync "
        f"{meta['fdatasync_4k_us']:.0f} us"
    )
    sys.stdout.flush()
    try:
        bench.build()
        steps: list[tuple[int, Callable[[], None]]] = [
            (1, bench.w1_get),
            (2, bench.w2_history),
            (3, bench.w3_set),
            (4, bench.w4_list),
            (5, bench.w5_cas),
        ]
        for num, step in steps:
            if num in cfg.workloads:
                t0 = time.monotonic()
                step()
                la = os.getloadavg()[0]
                meta[f"loadavg_after_w{num}"] = la
                print(f"(workload {num}: {time.monotonic() - t0:.1f} s; load average {la:.2f})")
        meta["create_probe_us_end"] = probe_create_us(workdir)
    finally:
        meta["elapsed_s"] = time.monotonic() - started
        meta["cleanup"] = _cleanup(workdir, args.cleanup)
    rows = [
        [str(t.workload), t.what, t.target, t.measured, "PASS" if t.passed else "FAIL"]
        for t in bench.targets
    ]
    rows = [r if r[2] != "(info)" else [*r[:4], "info"] for r in rows]
    print_table(
        "Targets (ratio [per-rep min-max]; a FAIL is information)",
        ["#", "what", "target", "measured", "result"],
        rows,
        left=5,
    )
    end_probe = meta.get("create_probe_us_end", float("nan"))
    print(
        f"\nprobe: create empty file at end {end_probe:.0f} us; run time {meta['elapsed_s']:.0f} s"
    )
    print(meta["cleanup"])
    if bench.problems:
        print("read-back checks FAILED:\n  " + "\n  ".join(bench.problems))
    if args.json:
        doc = {
            "meta": meta,
            "results": bench.results,
            "targets": [t.__dict__ for t in bench.targets],
            "problems": bench.problems,
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
        print(f"raw numbers written to {args.json}")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
