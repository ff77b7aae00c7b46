"""``bench.py --backend postgresql://…``: castore's PostgreSQL backend against a psycopg baseline.

Issue 12's comparison. Every row times three variants in one run, interleaved
in rotated repetitions (``measure``):

* ``castore-pg``: ``castore.Store(URL?schema=bench_<random>, dag="bench")``, a
  fresh schema made by its first write and dropped at the end;
* ``baseline``: a minimal hand-written psycopg store in its own fresh schema
  (``bench_<random>_base``), two tables, ``cur(k, version, hash, value)`` (the
  current row) and ``ver(k, version, hash, value, time_ns)`` (every version).
  A set is one transaction on an autocommit connection: ``BEGIN``; ``SELECT
  version FROM cur … FOR UPDATE`` (a new key's row is inserted first); ``INSERT``
  the version; ``UPDATE`` the current row; ``COMMIT``. The value's bytes are the
  JSON text castore stores (msgspec, sorted keys: checked against
  ``castore.codec.normalize``) and its sha256 is computed on every set. A get
  is one ``SELECT`` of the current row and a decode of its value (no re-hash);
  without sync is ``SET synchronous_commit = off`` for the session;
* ``file``: castore on a file store directory, for reference (not in the parallel row).

Rows: durable set of a ~100 B and a 10 KB value (16 keys round-robin, a new
value each set); set without sync (100 B); warm get of one key; get of a random
version k of a key with 1,000 versions; list a prefix selecting 100 of 2,000
keys; and parallel durable sets on distinct keys, 1 and 4 spawned processes
(each its own Store or connection). The cost ratio is baseline ops/s /
castore-pg ops/s (the median of per-repetition ratios): above 1 castore is
slower. Targets: cost <= 1.25x for every set and get row; 4 processes / 1
process > 1 for castore-pg. Medians and ratios, never timed assertions.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import platform
import random
import secrets
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from psycopg import sql

import castore
from castore import codec
from castore.urls import redacted

from . import machine
from .cas import BARRIER_TIMEOUT_SECONDS, WorkerResult, run_workers
from .measure import Batch, Ratio, Row, interleaved, ratio, run_batch, summarize
from .peers import CastorePeer, Json, Peer, harness_value
from .report import fmt_rate, print_rate_rows, print_table, print_targets
from .targets import Goal, Target, fmt_ratio

if TYPE_CHECKING:
    import argparse
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

__all__ = ["BaselinePeer", "PgConfig", "StorePeer", "pg_config", "pg_writer", "run"]

VARIANTS = ("castore-pg", "baseline", "file")
DAG = "bench"
SET_KEYS = 16  # keys written round-robin by the set rows
SET_MAX_OPS = {"100B": 5_000, "10KB": 2_000}
SIZES = {"100B": "100 B", "10KB": "10 KB"}  # the harness's size names and the rows' labels
MIN_OPS = 5
FILE_WARMUP_SETS = 2_000  # untimed sets that create the file store's blob-index shards
WARMUP_ID = 1_000_000_000  # last_id of warm-up values: never that of a timed set
GET_KEY = "get/one"
GET_MAX_OPS = 200_000
HIST_KEY = "hist/deep"
HIST_N = 1_000
LIST_N = 2_000
LIST_MATCHES = 100
LIST_MAX_OPS = 10_000
PAR_PROCS = 4
PAR_KEYS = 4  # keys per writer process, round-robin
PAR_WARMUP_ROUNDS = 2  # untimed sets of every key before the barrier (rows, prepared statements)
PAR_FIRST_ID = 2_000_000_000
COST_LIMIT = 1.25
SCALING_LIMIT = 1.0

_ENCODE = msgspec.json.Encoder(order="sorted").encode  # castore's bytes for plain values
_DECODE = msgspec.json.Decoder().decode
_LOCK = "SELECT version FROM cur WHERE k = %s FOR UPDATE"
_NEW = "INSERT INTO cur (k, version) VALUES (%s, 0) ON CONFLICT DO NOTHING"
_INSERT = "INSERT INTO ver (k, version, hash, value, time_ns) VALUES (%s, %s, %s, %s, %s)"
_UPDATE = "UPDATE cur SET version = %s, hash = %s, value = %s WHERE k = %s"
_GET = "SELECT version, hash, value FROM cur WHERE k = %s"
_GET_VERSION = "SELECT version, hash, value FROM ver WHERE k = %s AND version = %s"
_LIST = "SELECT k, version, hash FROM cur WHERE k >= %s AND k < %s ORDER BY k"
_TABLES = (
    "CREATE TABLE cur (k bytea PRIMARY KEY, version bigint, hash bytea, value bytea)",
    "CREATE TABLE ver (k bytea, version bigint, hash bytea, value bytea, time_ns bigint, "
    "PRIMARY KEY (k, version))",
)


@dataclass(frozen=True)
class PgConfig:
    """Sizes and time budgets of one ``--backend`` run."""

    mode: str
    reps: int
    batch_s: float
    durable_reps: int
    durable_batch_s: float
    par_each: int  # durable sets per writer process
    par_reps: int
    start_method: str


def pg_config(args: argparse.Namespace) -> PgConfig:
    """The run's sizes from bench.py's options (each given one, else quick/default)."""
    quick = bool(args.quick)
    return PgConfig(
        mode="quick" if quick else "default",
        reps=args.reps or (3 if quick else 5),
        batch_s=args.batch_time or (0.1 if quick else 0.2),
        durable_reps=args.durable_reps or (5 if quick else 15),
        durable_batch_s=args.durable_batch_time or (0.1 if quick else 0.2),
        par_each=args.par_each or (200 if quick else 1_000),
        par_reps=args.cas_reps or (3 if quick else 5),
        start_method=args.start_method,
    )


def key_range(prefix: str) -> tuple[bytes, bytes]:
    """``[low, high)`` of the keys starting with ``prefix`` (its last byte is not 0xff)."""
    low = prefix.encode("utf-8")
    return low, low[:-1] + bytes((low[-1] + 1,))


class BaselinePeer(Peer):
    """The hand-written psycopg store: ``cur`` and ``ver`` in ``schema``; one connection."""

    name = "baseline"

    def __init__(self, conninfo: str, schema: str, durable: bool) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True, application_name="castore-bench")
        self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        if not durable:
            self.conn.execute("SET synchronous_commit = off")
        self.cur = self.conn.cursor()

    def set(self, key: str, value: Json) -> None:
        """One transaction: lock (or create) the current row, insert the version, update."""
        data = _ENCODE(value)
        digest = hashlib.sha256(data).digest()
        k = key.encode("utf-8")
        cur = self.cur
        cur.execute("BEGIN")
        try:
            row = cur.execute(_LOCK, (k,)).fetchone()
            if row is None:
                cur.execute(_NEW, (k,))
                row = cur.execute(_LOCK, (k,)).fetchone()
            assert row is not None  # noqa: S101 - inserted above, under the lock
            version = row[0] + 1
            cur.execute(_INSERT, (k, version, digest, data, time.time_ns()))
            cur.execute(_UPDATE, (version, digest, data, k))
        except BaseException:
            if not self.conn.broken:
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def get(self, key: str) -> Any:
        """The current row's value, decoded (KeyError if absent)."""
        row = self.cur.execute(_GET, (key.encode("utf-8"),)).fetchone()
        if row is None:
            raise KeyError(key)
        return _DECODE(row[2])

    def get_version(self, key: str, version: int) -> Any:
        """Version ``version`` from ``ver``, decoded (KeyError if absent)."""
        row = self.cur.execute(_GET_VERSION, (key.encode("utf-8"), version)).fetchone()
        if row is None:
            raise KeyError((key, version))
        return _DECODE(row[2])

    def read_versioned(self, key: str) -> tuple[int, Any]:
        """The current row's version and value; ``(0, None)`` when absent."""
        row = self.cur.execute(_GET, (key.encode("utf-8"),)).fetchone()
        return (0, None) if row is None else (int(row[0]), _DECODE(row[2]))

    def list_entries(self, prefix: str) -> list[Any]:
        """``(k, version, hash)`` rows of the keys starting with ``prefix``, in key order."""
        return self.cur.execute(_LIST, key_range(prefix)).fetchall()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class StorePeer(CastorePeer):
    """castore on a directory or a PostgreSQL URL; ``list_entries`` is ``Store.list``'s entries."""

    def list_entries(self, prefix: str) -> list[Any]:
        """``store.list(prefix).entries``, as they come."""
        return self.store.list(prefix).entries


def _entry_key(entry: Any) -> str:
    return bytes(entry[0]).decode("utf-8") if isinstance(entry, tuple) else str(entry.key)


@dataclass
class Where:
    """Where the variants live: the server, the two schemas, the file store's directory."""

    conninfo: str  # libpq's URL: no castore schema parameter
    castore_url: str
    castore_schema: str
    base_schema: str
    workdir: str
    problems: list[str] = field(default_factory=list)

    def open(self, variant: str, durable: bool, what: str = "") -> Peer:
        """An open peer of ``variant`` (the file store: its directory for ``what``)."""
        if variant == "baseline":
            return BaselinePeer(self.conninfo, self.base_schema, durable)
        if variant == "castore-pg":
            return StorePeer(self.castore_url, durable=durable, dag=DAG)
        return StorePeer(os.path.join(self.workdir, what), durable=durable, dag=DAG)

    def check(self, what: str, ok: bool) -> None:
        """Record a read-back check; failures are reported at the end."""
        if not ok:
            self.problems.append(what)
            print(f"  CHECK FAILED: {what}")


def split_url(url: str, schema: str) -> tuple[str, str]:
    """(libpq's URL without any ``schema`` parameter, castore's URL with ``schema``)."""
    base, _, query = url.partition("#")[0].partition("?")
    items = [
        item
        for item in query.split("&")
        if item and urllib.parse.unquote(item.partition("=")[0]) != "schema"
    ]
    conninfo = f"{base}?{'&'.join(items)}" if items else base
    return conninfo, f"{base}?{'&'.join([*items, f'schema={schema}'])}"


def _time_row(
    title: str, ops: dict[str, Callable[[int], object]], n_max: int, t_max: float, reps: int
) -> dict[str, Row]:
    """Time ``ops`` interleaved in rotated repetitions; print and return their rows."""
    batches = interleaved(list(ops), lambda n, _rep: run_batch(ops[n], n_max, t_max, MIN_OPS), reps)
    rows = {name: summarize(name, bs) for name, bs in batches.items()}
    print_rate_rows(title, list(rows.values()))
    return rows


def _set_row(w: Where, cfg: PgConfig, tag: str, size: str, durable: bool) -> dict[str, Row]:
    """Sets of a new value each time, ``SET_KEYS`` keys round-robin, every variant."""
    keys = [f"{tag}/set-{i:02d}" for i in range(SET_KEYS)]
    warm = w.open("file", False, tag)  # the file store's blob-index shards (as workload 6)
    for i in range(FILE_WARMUP_SETS):
        warm.set(keys[i % SET_KEYS], harness_value(size, WARMUP_ID + i))
    warm.close()
    peers = {v: w.open(v, durable, tag) for v in VARIANTS}
    last: dict[str, dict[str, int]] = {v: {} for v in VARIANTS}
    counter = dict.fromkeys(VARIANTS, 0)

    def setter(variant: str) -> Callable[[int], object]:
        peer, value, seen = peers[variant], harness_value(size), last[variant]

        def op(i: int) -> None:
            counter[variant] += 1
            value["last_id"] = counter[variant]
            key = keys[i % SET_KEYS]
            peer.set(key, value)
            seen[key] = counter[variant]

        return op

    ops = {v: setter(v) for v in VARIANTS}
    for op in ops.values():  # every key twice, untimed: rows exist, statements are prepared
        for i in range(2 * SET_KEYS):
            op(i)
    how = "durable set" if durable else "set without sync"
    rows = _time_row(
        f"{how}, {SIZES[size]}, {SET_KEYS} keys round-robin, a new value each set",
        ops,
        SET_MAX_OPS[size],
        cfg.durable_batch_s if durable else cfg.batch_s,
        cfg.durable_reps if durable else cfg.reps,
    )
    for variant, peer in peers.items():
        ok = all(peer.get(k)["last_id"] == v for k, v in last[variant].items())
        w.check(f"{tag} {variant}: every key reads back its last value", ok)
        peer.close()
    return rows


def build_reads(w: Where) -> None:
    """The read rows' data in every variant, untimed: 1 key, 1,000 versions, 2,000 keys."""
    for variant in VARIANTS:
        t0 = time.perf_counter()
        peer = w.open(variant, False, "reads")
        peer.set(GET_KEY, harness_value("100B", 0))
        for v in range(HIST_N):
            peer.set(HIST_KEY, harness_value("100B", v))
        for i in range(LIST_N):
            peer.set(_list_key(i), harness_value("100B", i))
        peer.close()
        print(
            f"setup: {variant}: 1 key, {HIST_N:,} versions of one key, {LIST_N:,} keys: "
            f"{time.perf_counter() - t0:.1f} s"
        )


def _list_key(i: int) -> str:
    return f"ns/job-{i:06d}"


def _read_rows(w: Where, cfg: PgConfig) -> dict[str, dict[str, Row]]:
    """Warm get, get version k (random k), list a prefix selecting 100 keys."""
    peers = {v: w.open(v, False, "reads") for v in VARIANTS}
    first = (LIST_N // 2 // LIST_MATCHES) * LIST_MATCHES
    prefix = _list_key(first)[: -len(str(LIST_MATCHES - 1))]
    expected = [_list_key(first + i) for i in range(LIST_MATCHES)]
    for v, peer in peers.items():
        ok = peer.get(GET_KEY)["last_id"] == 0 and peer.read_versioned(HIST_KEY)[0] == HIST_N
        ok = ok and all(peer.get_version(HIST_KEY, k)["last_id"] == k - 1 for k in (1, HIST_N))
        ok = ok and [_entry_key(e) for e in peer.list_entries(prefix)] == expected
        w.check(f"reads {v}: get, versions 1 and {HIST_N}, list {prefix!r} read back", ok)
    rnd = random.Random(HIST_N)
    ks = [rnd.randint(1, HIST_N) for _ in range(GET_MAX_OPS)]

    def getter(p: Peer) -> Callable[[int], object]:
        return lambda _i: p.get(GET_KEY)

    def version_getter(p: Peer) -> Callable[[int], object]:
        return lambda i: p.get_version(HIST_KEY, ks[i])

    def lister(p: Peer) -> Callable[[int], object]:
        return lambda _i: p.list_entries(prefix)

    out = {
        "get": _time_row(
            "warm get, 100 B, one key",
            {v: getter(p) for v, p in peers.items()},
            GET_MAX_OPS,
            cfg.batch_s,
            cfg.reps,
        ),
        "get_version": _time_row(
            f"get version k (random) of a key with {HIST_N:,} versions",
            {v: version_getter(p) for v, p in peers.items()},
            GET_MAX_OPS,
            cfg.batch_s,
            cfg.reps,
        ),
        "list": _time_row(
            f"list prefix {prefix!r}: {LIST_MATCHES} of {LIST_N:,} keys (calls/s)",
            {v: lister(p) for v, p in peers.items()},
            LIST_MAX_OPS,
            cfg.batch_s,
            cfg.reps,
        ),
    }
    for peer in peers.values():
        peer.close()
    return out


def par_keys(worker_id: int) -> list[str]:
    """The keys of one writer process (no other writer writes them)."""
    return [f"par/w{worker_id}/k{j}" for j in range(PAR_KEYS)]


def pg_writer(
    variant: str,
    where: Where,
    first_id: int,
    n_sets: int,
    worker_id: int,
    barrier: Barrier,
    queue: Queue[WorkerResult],
) -> None:
    """One writer process: ``n_sets`` durable sets round-robin on its own keys.

    Its own Store or connection; warm-up sets of every key before the start
    barrier (untimed). Set i carries ``last_id`` first_id + i. Reports through
    ``queue`` (see ``cas.run_workers``).
    """
    done = t0 = t1 = 0
    error = ""
    try:
        peer = where.open(variant, True)
        keys, value = par_keys(worker_id), harness_value("100B")
        for j in range(PAR_WARMUP_ROUNDS * PAR_KEYS):
            value["last_id"] = first_id + n_sets + j
            peer.set(keys[j % PAR_KEYS], value)
        barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
        gc.collect()
        gc.disable()
        t0 = time.monotonic_ns()
        for i in range(n_sets):
            value["last_id"] = first_id + i
            peer.set(keys[i % PAR_KEYS], value)
        t1 = time.monotonic_ns()
        done = n_sets
        peer.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        error = f"{type(exc).__name__}: {exc}"
        t1 = t1 or time.monotonic_ns()
    finally:
        gc.enable()
    queue.put((worker_id, done, 0, t0, t1, error))


def _parallel_row(w: Where, cfg: PgConfig) -> dict[str, Row]:
    """1 and ``PAR_PROCS`` writer processes, castore-pg and baseline, interleaved."""
    names = [f"{v} x{n}" for v in VARIANTS[:2] for n in (1, PAR_PROCS)]
    ids: Iterator[int] = itertools.count(PAR_FIRST_ID, cfg.par_each + 4 * PAR_KEYS)
    last: dict[str, list[int]] = {}

    def one(name: str, rep: int) -> Batch:
        variant, n = name.split(" x")[0], int(name.split(" x")[1])
        firsts = [next(ids) for _ in range(int(n))]
        last[variant] = firsts
        args = [(variant, w, f, cfg.par_each) for f in firsts]
        results = run_workers(cfg.start_method, pg_writer, args)
        errors = [r[5] for r in results if r[5]]
        w.check(f"parallel {name} rep {rep}: writers ran without error {errors}", not errors)
        t0 = min((r[3] for r in results if r[3]), default=0)
        t1 = max((r[4] for r in results if r[3]), default=0)
        return Batch(sum(r[1] for r in results), t1 - t0, [])

    batches = interleaved(names, one, cfg.par_reps)
    for variant, firsts in last.items():
        peer = w.open(variant, True)
        ok = all(
            peer.get(par_keys(wid)[i % PAR_KEYS])["last_id"] == first + i
            for wid, first in enumerate(firsts)
            for i in range(max(0, cfg.par_each - PAR_KEYS), cfg.par_each)
        )
        peer.close()
        w.check(f"parallel {variant}: every key reads back its last value", ok)
    rows = {name: summarize(name, bs) for name, bs in batches.items()}
    print_table(
        f"parallel durable sets on distinct keys: 1 or {PAR_PROCS} processes x "
        f"{cfg.par_each} sets on {PAR_KEYS} own keys each (first start to last end)",
        ["variant", "sets/s (median)", "min-max", "us/set", "sets"],
        [
            [
                r.name,
                fmt_rate(r.median),
                f"{fmt_rate(min(r.rates))}-{fmt_rate(max(r.rates))}",
                f"{r.us_per_op:.0f}",
                str(r.ops_total),
            ]
            for r in rows.values()
        ],
    )
    return rows


@dataclass(frozen=True)
class Line:
    """One line of the summary table: castore-pg, baseline and (maybe) file rows."""

    number: str
    label: str
    pg: Row
    base: Row
    file: Row | None
    goal: Goal

    @property
    def cost(self) -> Ratio:
        """Baseline rate / castore-pg rate per repetition (> 1: castore-pg is slower)."""
        return ratio(self.base, self.pg)

    def target(self) -> Target:
        """The line's target row (``goal``)."""
        return self.goal.score(int(self.number[0]), self.cost)

    def cells(self) -> list[str]:
        """The summary table's cells."""
        c = self.cost
        t = self.target()
        return [
            self.number,
            self.label,
            fmt_rate(self.pg.median),
            fmt_rate(self.base.median),
            f"{c[0]:.2f}x",
            f"{c[1]:.2f}-{c[2]:.2f}",
            fmt_rate(self.file.median) if self.file is not None else "-",
            t.target,
            ("PASS" if t.passed else "FAIL") if t.target != "(info)" else "info",
        ]

    def to_json(self) -> dict[str, Any]:
        """The line for --json."""
        c = self.cost
        return {
            "row": self.number,
            "label": self.label,
            "castore_pg": self.pg.to_json(),
            "baseline": self.base.to_json(),
            "file": self.file.to_json() if self.file is not None else None,
            "cost_ratio": c[0],
            "cost_ratio_min": c[1],
            "cost_ratio_max": c[2],
            "cost_ratio_of_medians": c[3],
        }


def _goal(label: str, info: bool = False) -> Goal:
    what = f"{label}: cost castore-pg / baseline"
    return Goal(what) if info else Goal(what, "<=", COST_LIMIT)


def _lines(rows: dict[str, dict[str, Row]]) -> list[Line]:
    """The summary table's lines, in the table's order."""
    table = [
        ("1", "durable set, 100 B", "durable-100B", False),
        ("2", "durable set, 10 KB", "durable-10KB", False),
        ("3", "set without sync, 100 B", "fast-100B", False),
        ("4", "warm get, 100 B", "get", False),
        ("5", f"get version k of {HIST_N:,}", "get_version", False),
        ("6", f"list {LIST_MATCHES} of {LIST_N:,} keys (calls/s)", "list", True),
    ]
    out = [
        Line(n, label, r["castore-pg"], r["baseline"], r["file"], _goal(label, info))
        for n, label, tag, info in table
        if (r := rows.get(tag)) is not None
    ]
    par = rows.get("parallel")
    if par is not None:
        for n, sub in ((1, "a"), (PAR_PROCS, "b")):
            label = f"parallel durable sets, {n} process{'es' if n > 1 else ''}"
            out.append(
                Line(
                    f"7{sub}",
                    label,
                    par[f"castore-pg x{n}"],
                    par[f"baseline x{n}"],
                    None,
                    _goal(label, True),
                )
            )
    return out


def _scaling(rows: dict[str, dict[str, Row]]) -> list[Target]:
    """4-process / 1-process rates (per repetition): castore-pg scored, baseline for info."""
    par = rows.get("parallel")
    if par is None:
        return []
    out = []
    for variant in VARIANTS[:2]:
        r = ratio(par[f"{variant} x{PAR_PROCS}"], par[f"{variant} x1"])
        what = f"scaling {PAR_PROCS} processes / 1 process, {variant}"
        scored = variant == "castore-pg"
        target = f"> {SCALING_LIMIT:.2f}x" if scored else "(info)"
        out.append(Target(7, what, target, fmt_ratio(r), r[0] > SCALING_LIMIT or not scored, r[0]))
    return out


def _admin(conninfo: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(conninfo, autocommit=True, application_name="castore-bench")


def _create_baseline(conninfo: str, schema: str) -> None:
    with _admin(conninfo) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for statement in _TABLES:
            conn.execute(statement)


def _drop_schemas(conninfo: str, schemas: list[str]) -> str:
    """Drop the run's schemas; a line for the report."""
    try:
        with _admin(conninfo) as conn:
            conn.execute("SET lock_timeout = '60s'")
            for schema in schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
    except psycopg.Error as exc:
        return f"could not drop schemas {', '.join(schemas)}: {exc}"
    return f"schemas {', '.join(schemas)} dropped"


def _meta(cfg: PgConfig, url: str, w: Where) -> dict[str, Any]:
    with _admin(w.conninfo) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    return {
        "mode": cfg.mode,
        "config": cfg.__dict__,
        "backend": redacted(url),
        "castore_schema": w.castore_schema,
        "baseline_schema": w.base_schema,
        "server_version": row[0] if row else "?",
        "synchronous_commit": sync[0] if sync else "?",
        "psycopg": psycopg.__version__,
        "python": platform.python_version(),
        "castore": castore.__version__,
        "cpus": os.cpu_count(),
        "workdir": w.workdir,
        "fs": machine.fs_type(w.workdir),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": os.getloadavg(),
    }


def _print_header(meta: dict[str, Any]) -> None:
    cfg = meta["config"]
    print(
        f"castore PostgreSQL bench (issue 12), mode {cfg['mode']}: reps {cfg['reps']} x "
        f"{cfg['batch_s']} s batches, durable sets {cfg['durable_reps']} x "
        f"{cfg['durable_batch_s']} s, parallel {cfg['par_reps']} reps x {cfg['par_each']} sets "
        f"per process ({cfg['start_method']})"
    )
    print(
        f"server {meta['backend']}: PostgreSQL {meta['server_version']}, synchronous_commit "
        f"{meta['synchronous_commit']}; psycopg {meta['psycopg']}, python {meta['python']}, "
        f"castore {meta['castore']}, {meta['cpus']} cpus"
    )
    print(
        f"schemas: castore-pg {meta['castore_schema']}, baseline {meta['baseline_schema']}; "
        f"file store in {meta['workdir']} on {meta['fs']}"
    )
    load = meta["loadavg_start"]
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _check_encoding(w: Where) -> None:
    """The baseline stores the bytes castore stores (normalized JSON) for the bench values."""
    for size in SET_MAX_OPS:
        value = harness_value(size, 7)
        w.check(
            f"baseline encoding of the {size} value is castore's",
            _ENCODE(value) == codec.normalize(value),
        )


def _measure(w: Where, cfg: PgConfig) -> dict[str, dict[str, Row]]:
    """Every row, in the table's order."""
    rows: dict[str, dict[str, Row]] = {}
    build_reads(w)
    for tag, size, durable in (
        ("durable-100B", "100B", True),
        ("durable-10KB", "10KB", True),
        ("fast-100B", "100B", False),
    ):
        started = time.monotonic()
        rows[tag] = _set_row(w, cfg, tag, size, durable)
        print(f"({tag}: {time.monotonic() - started:.1f} s; load {os.getloadavg()[0]:.2f})")
    started = time.monotonic()
    rows.update(_read_rows(w, cfg))
    print(f"(reads: {time.monotonic() - started:.1f} s; load {os.getloadavg()[0]:.2f})")
    started = time.monotonic()
    rows["parallel"] = _parallel_row(w, cfg)
    print(f"(parallel: {time.monotonic() - started:.1f} s; load {os.getloadavg()[0]:.2f})")
    return rows


def _report(lines: list[Line], targets: list[Target]) -> None:
    print_table(
        "castore on PostgreSQL vs the psycopg baseline (and the file store): ops/s are medians "
        "over interleaved repetitions; cost = baseline ops/s / castore-pg ops/s, median "
        "[min-max] of the per-repetition ratios (> 1: castore-pg is slower)",
        [
            "#",
            "row",
            "castore-pg ops/s",
            "baseline ops/s",
            "cost",
            "min-max",
            "file ops/s",
            "target",
            "result",
        ],
        [line.cells() for line in lines],
        left=2,
    )
    print_targets(targets)


def run(args: argparse.Namespace, url: str) -> int:
    """The ``--backend`` run: measure, print, save; 0, or 1 when a read-back check failed."""
    cfg = pg_config(args)
    token = secrets.token_hex(4)
    conninfo, castore_url = split_url(url, f"bench_{token}")
    parent = os.path.abspath(args.workdir or machine.default_workdir_parent())
    os.makedirs(parent, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="castore-pgbench-", dir=parent)
    w = Where(conninfo, castore_url, f"bench_{token}", f"bench_{token}_base", workdir)
    started = time.monotonic()
    try:
        meta = _meta(cfg, url, w)
        _print_header(meta)
        _check_encoding(w)
        _create_baseline(conninfo, w.base_schema)
        rows = _measure(w, cfg)
    finally:
        dropped = _drop_schemas(conninfo, [w.castore_schema, w.base_schema])
        cleaned = machine.cleanup(workdir, args.cleanup)
    lines = _lines(rows)
    targets = [line.target() for line in lines] + _scaling(rows)
    _report(lines, targets)
    meta["elapsed_s"] = time.monotonic() - started
    print(f"\nrun time {meta['elapsed_s']:.0f} s; {dropped}; {cleaned}")
    if w.problems:
        print("read-back checks FAILED:\n  " + "\n  ".join(w.problems))
    if args.json:
        doc = {
            "meta": meta,
            "rows": {tag: {n: r.to_json() for n, r in rs.items()} for tag, rs in rows.items()},
            "summary": [line.to_json() for line in lines],
            "targets": [t.__dict__ for t in targets],
            "problems": w.problems,
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
        print(f"raw numbers written to {args.json}")
    return 1 if w.problems else 0
