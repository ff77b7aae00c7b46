"""Workload 6: the issue-10 table, castore against sqlite3 with and without a history table.

Each row times castore and one peer in interleaved, rotated repetitions (``measure``)
and scores castore / peer against the row's goal (``Bench.compare``). Keys, values
(``peers.harness_value``), batch limits and the peers' statements follow
../shared/bench/run.py and peers.py, so that ``run.py --extra-peers castore_peer``
measures the same things:

* durable set, 100 B / 10 KB: 16 keys ``bench/set-NN`` round-robin, a new ``last_id``
  each set; castore durable vs ``sqlite`` (kv upsert, WAL, synchronous=FULL).
* set without sync, 100 B / 10 KB: the same, castore durable=False vs the history
  peer (synchronous=NORMAL).
* warm get, 100 B (one key) and get random of N keys (``ns/job-NNNNNN``, a fixed
  random order): vs the history peer.
* get version k after N versions of one key (random k): the history peer's indexed
  lookup in its versions table.
* list prefix (100 of N keys) and list all N keys (the get-random keys): vs the
  history peer; every entry is ``(key, version)``.
* compare-and-swap on one key from 4 processes: castore vs ``sqlite``, the harness's
  loop (``cas.peer_cas_worker``: read without a lock, then CAS; sqlite inserts into
  its ``hist`` table under BEGIN IMMEDIATE).

The history peer is ``sqlite3+history`` (current row + versions table in one
transaction), or the harness's own ``sqlite+hist`` with ``--history-peer``.
``setup_issue10`` builds the bulk data (stores opened durable=False, as the harness
does) before any workload is timed; the read rows open them durable=False too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from .cas import peer_cas_worker, run_workers
from .context import Bench, Workload
from .measure import Batch, Row, interleaved, run_batch, summarize
from .peers import (
    CastorePeer,
    Json,
    Peer,
    entry_key,
    harness_value,
    harness_value_source,
    make_peer,
)
from .report import print_cas_table, print_rate_rows

__all__ = ["CAS_PROCS", "job_key", "setup_issue10", "w6_issue10"]

_pc = time.perf_counter_ns
SIZES = {"100B": "100 B", "10KB": "10 KB"}  # the harness's size names and the rows' labels
SET_KEYS = [f"bench/set-{i:02d}" for i in range(16)]  # the harness's round-robin set keys
SET_MAX_OPS = {"100B": 5_000, "10KB": 2_000}  # most sets per batch (the harness's SET_NMAX)
SET_MIN_OPS = 5
SET_WARMUP_SETS = 2_000  # untimed sets that create castore's blob-index shard files
WARMUP_FIRST_ID = 1_000_000_000  # last_id of warm-up values: never that of a timed set
GET_KEY = "bench/get"
GET_MAX_OPS = 200_000
GET_ORDER_LEN = 100_000  # random key indexes, read in a cycle
GET_ORDER_SEED = 7
HIST_KEY = "bench/hist"
VERSION_MAX_OPS = 50_000
LIST_MAX_OPS = 10_000
LIST_MATCHES = 100  # keys selected by the list prefix
LIST_ALL_PREFIX = "ns/"
CAS_PROCS = 4
CAS_KEY = "bench/counter"
DAG = "bench"  # the harness's castore adapter uses this DAG name


def job_key(i: int) -> str:
    """The ``i``-th key of the get-random and list namespaces (the harness's names)."""
    return f"ns/job-{i:06d}"


def _slug(name: str) -> str:
    return name.replace("+", "-")


def _dir(b: Bench, what: str, name: str) -> str:
    return b.scratch(f"w6-{what}-{_slug(name)}")


def _open(b: Bench, what: str, name: str, durable: bool = False) -> Peer:
    return make_peer(name, _dir(b, what, name), durable=durable, dag=DAG)


def setup_issue10(b: Bench) -> dict[str, Any]:
    """Build the read rows' data for castore and the history peer, untimed.

    One key (warm get); ``keys_n`` keys (get random, list all); ``history_n``
    versions of one key, version v holding ``last_id`` v - 1; ``list_n`` keys
    (list prefix). castore sets one value at a time; sqlite uses one transaction.
    """
    n_keys, n_hist, n_list = b.cfg.keys_n, b.cfg.history_n, b.cfg.list_n
    out: dict[str, Any] = {"issue10_values": harness_value_source()}
    for name in ("castore", b.cfg.history_peer):
        t0 = _pc()
        for what, items in (
            ("get1", [(GET_KEY, harness_value("100B", 0))]),
            ("keys", ((job_key(i), harness_value("100B", i)) for i in range(n_keys))),
            ("list", ((job_key(i), harness_value("100B", i)) for i in range(n_list))),
        ):
            peer = _open(b, what, name)
            peer.bulk_set(items)
            peer.close()
        peer = _open(b, "hist", name)
        peer.bulk_append(HIST_KEY, (harness_value("100B", v) for v in range(n_hist)))
        peer.close()
        dt = (_pc() - t0) / 1e9
        out[f"issue10_build_{name}_s"] = dt
        print(
            f"setup: issue 10, {name}: 1 + {n_keys:,} + {n_list:,} keys and {n_hist:,} "
            f"versions of one key: {dt:.1f} s"
        )
    return out


def w6_issue10(b: Bench, w: Workload) -> dict[str, Any]:
    """The issue-10 rows, in the table's order (each row is one goal of ``w``)."""
    hp = b.cfg.history_peer
    return {
        "history_peer": hp,
        "values": harness_value_source(),
        "set": _sets(b, w, hp),
        "get": _gets(b, w, hp),
        "get_version": _get_version(b, w, hp),
        "list": _lists(b, w, hp),
        "cas": _cas(b, w),
    }


def _time_pair(
    title: str,
    ops: dict[str, Callable[[int], object]],
    batch: Callable[[Callable[[int], object]], Batch],
    reps: int,
    unit: str = "ops/s",
) -> dict[str, Row]:
    """Time ``ops`` (castore first, then its peer) interleaved; print and return their rows."""
    batches = interleaved(list(ops), lambda name, _rep: batch(ops[name]), reps)
    rows = {name: summarize(name, bs) for name, bs in batches.items()}
    print_rate_rows(title, list(rows.values()), unit=unit)
    return rows


def _row_json(rows: dict[str, Row]) -> list[dict[str, Any]]:
    return [r.to_json() for r in rows.values()]


def _warm_castore(root: str) -> None:
    """Create castore's blob-index shards through a durable=False handle (untimed)."""
    warm = CastorePeer(root, durable=False, dag=DAG)
    for i in range(SET_WARMUP_SETS):
        warm.set(SET_KEYS[i % len(SET_KEYS)], harness_value("100B", WARMUP_FIRST_ID + i))
    warm.close()


def _sets(b: Bench, w: Workload, hp: str) -> dict[str, Any]:
    """Rows 1-4: durable sets vs sqlite, sets without sync vs the history peer."""
    out: dict[str, Any] = {}
    goal = 0
    for durable in (True, False):
        for size, label in SIZES.items():
            tag = f"{'durable' if durable else 'fast'}-{size}"
            out[tag] = _set_row(b, w, goal, tag, size, label, durable, "sqlite" if durable else hp)
            goal += 1
    return out


def _set_row(
    b: Bench, w: Workload, goal: int, tag: str, size: str, label: str, durable: bool, other: str
) -> list[dict[str, Any]]:
    """One set row: 16 keys round-robin, a new ``last_id`` each set (the harness's loop)."""
    peers = {name: _open(b, f"set-{tag}", name, durable=durable) for name in ("castore", other)}
    _warm_castore(_dir(b, f"set-{tag}", "castore"))
    counter = dict.fromkeys(peers, 0)
    last: dict[str, dict[str, int]] = {name: {} for name in peers}

    def setter(name: str) -> Callable[[int], object]:
        peer, value, seen = peers[name], harness_value(size), last[name]

        def op(i: int) -> None:
            counter[name] += 1
            value["last_id"] = counter[name]
            key = SET_KEYS[i % len(SET_KEYS)]
            peer.set(key, value)
            seen[key] = counter[name]

        return op

    ops = {name: setter(name) for name in peers}
    for op in ops.values():  # the harness's warm-up: every key once
        for i in range(len(SET_KEYS)):
            op(i)
    t_max = b.cfg.durable_batch_s if durable else b.cfg.batch_s
    rows = _time_pair(
        f"6. {'durable set' if durable else 'set without sync'}, {label}, 16 keys round-robin: "
        f"castore durable={durable} vs {other}",
        ops,
        lambda op: run_batch(op, SET_MAX_OPS[size], t_max, SET_MIN_OPS),
        b.cfg.durable_reps if durable else b.cfg.reps,
    )
    for name, peer in peers.items():
        ok = all(peer.get(k)["last_id"] == v for k, v in last[name].items())
        b.check(f"w6 {tag} {name}: every key reads back its last value", ok)
        peer.close()
    b.compare(w, goal, rows["castore"], other, rows[other])
    return _row_json(rows)


def _gets(b: Bench, w: Workload, hp: str) -> dict[str, Any]:
    """Rows 5-6: warm get of one key, and of random keys among ``keys_n``."""
    n = b.cfg.keys_n
    keys = [job_key(i) for i in range(n)]
    rnd = random.Random(GET_ORDER_SEED)
    order = [keys[rnd.randrange(n)] for _ in range(GET_ORDER_LEN)]
    return {
        "get1": _get_row(b, w, 4, "get1", "warm get, 100 B, one key", [GET_KEY], [GET_KEY], hp),
        "keys": _get_row(b, w, 5, "keys", f"get random of {n:,} keys, 100 B", keys, order, hp),
    }


def _get_row(
    b: Bench,
    w: Workload,
    goal: int,
    what: str,
    title: str,
    keys: list[str],
    order: list[str],
    hp: str,
) -> list[dict[str, Any]]:
    """One get row: read ``order`` in a cycle; ``keys[i]`` holds ``last_id`` i."""
    peers = {name: _open(b, what, name) for name in ("castore", hp)}
    for name, peer in peers.items():  # warm: read every key once, and check it
        ok = all(peer.get(k)["last_id"] == i for i, k in enumerate(keys))
        b.check(f"w6 {what} {name}: values read back", ok)

    def getter(name: str) -> Callable[[int], object]:
        get, cycle = peers[name].get, len(order)
        return lambda i: get(order[i % cycle])

    rows = _time_pair(
        f"6. {title}: castore vs {hp}",
        {name: getter(name) for name in peers},
        lambda op: run_batch(op, GET_MAX_OPS, b.cfg.batch_s, SET_MIN_OPS),
        b.cfg.reps,
    )
    for peer in peers.values():
        peer.close()
    b.compare(w, goal, rows["castore"], hp, rows[hp], n=len(keys))
    return _row_json(rows)


def _get_version(b: Bench, w: Workload, hp: str) -> dict[str, Any]:
    """Row 7: get a random version k of one key with ``history_n`` versions."""
    n = b.cfg.history_n
    peers = {name: _open(b, "hist", name) for name in ("castore", hp)}
    for name, peer in peers.items():  # also extends castore's version index, untimed
        version, value = peer.read_versioned(HIST_KEY)
        ok = version == n and value["last_id"] == n - 1
        ok = ok and all(peer.get_version(HIST_KEY, k)["last_id"] == k - 1 for k in {1, n // 2, n})
        b.check(f"w6 get version {name}: latest and versions 1, n/2, n read back", ok)
    rnd = random.Random(n)
    ks = [rnd.randint(1, n) for _ in range(VERSION_MAX_OPS)]

    def getter(name: str) -> Callable[[int], object]:
        get_version = peers[name].get_version
        return lambda i: get_version(HIST_KEY, ks[i])

    rows = _time_pair(
        f"6. get version k (random) after {n:,} versions of one key: castore vs {hp}",
        {name: getter(name) for name in peers},
        lambda op: run_batch(op, VERSION_MAX_OPS, b.cfg.batch_s, 3),
        b.cfg.reps,
    )
    for peer in peers.values():
        peer.close()
    b.compare(w, 6, rows["castore"], hp, rows[hp], n=n)
    return {"versions": n, "rows": _row_json(rows)}


def _lists(b: Bench, w: Workload, hp: str) -> dict[str, Any]:
    """Rows 8-9: list a prefix selecting 100 of ``list_n`` keys; list all ``keys_n`` keys."""
    n_list, n_keys = b.cfg.list_n, b.cfg.keys_n
    block = (n_list // 2) // LIST_MATCHES
    first = block * LIST_MATCHES
    matches = [job_key(first + i) for i in range(LIST_MATCHES)]
    return {
        "prefix": _list_row(b, w, 7, "list", f"ns/job-{block:04d}", matches, n_list, hp),
        "all": _list_row(
            b, w, 8, "keys", LIST_ALL_PREFIX, [job_key(i) for i in range(n_keys)], n_keys, hp
        ),
    }


def _list_row(
    b: Bench,
    w: Workload,
    goal: int,
    what: str,
    prefix: str,
    expected: list[str],
    n: int,
    hp: str,
) -> dict[str, Any]:
    """One list row: ``list_entries(prefix)`` must return ``expected`` (at version 1)."""
    peers = {name: _open(b, what, name) for name in ("castore", hp)}
    for name, peer in peers.items():
        got = peer.list_entries(prefix)
        ok = [entry_key(e) for e in got] == expected
        ok = ok and all(e[1] == 1 for e in got if isinstance(e, tuple))
        b.check(f"w6 list {prefix!r} {name}: the {len(expected):,} keys, in order", ok)

    def lister(name: str) -> Callable[[int], object]:
        list_entries = peers[name].list_entries
        return lambda _i: list_entries(prefix)

    rows = _time_pair(
        f"6. list {prefix!r}: {len(expected):,} of {n:,} keys, castore vs {hp}",
        {name: lister(name) for name in peers},
        lambda op: run_batch(op, LIST_MAX_OPS, b.cfg.batch_s, 1),
        b.cfg.reps,
        unit="ms",
    )
    for peer in peers.values():
        peer.close()
    b.compare(w, goal, rows["castore"], hp, rows[hp], n=n)
    return {"prefix": prefix, "keys": n, "rows": _row_json(rows)}


def _cas(b: Bench, w: Workload) -> dict[str, Any]:
    """Row 10: CAS_PROCS processes x ``cas_each`` successful increments of one counter."""
    total = CAS_PROCS * b.cfg.cas_each
    names = ("castore", "sqlite")
    roots = {name: _dir(b, "cas", name) for name in names}
    details: dict[str, list[dict[str, Any]]] = {name: [] for name in names}

    def one(name: str, rep: int) -> Batch:
        key = f"{CAS_KEY}-{rep}"
        peer = make_peer(name, roots[name], durable=True, dag=DAG)
        first: Json = {"n": 0, "by": -1}
        b.check(f"w6 cas {name} rep {rep}: counter created", peer.cas(key, 0, first))
        peer.close()
        args = [(name, roots[name], DAG, key, b.cfg.cas_each)] * CAS_PROCS
        results = run_workers(b.cfg.start_method, peer_cas_worker, args)
        errors = [r[5] for r in results if r[5]]
        t0 = min((r[3] for r in results if r[3]), default=0)
        t1 = max((r[4] for r in results if r[3]), default=0)
        peer = make_peer(name, roots[name], durable=True, dag=DAG)
        version, value = peer.read_versioned(key)
        peer.close()
        ok = sum(r[1] for r in results)
        exact = value["n"] == total and version == total + 1 and not errors
        details[name].append(
            {
                "ok": ok,
                "retries": sum(r[2] for r in results),
                "elapsed_s": (t1 - t0) / 1e9,
                "final_n": value["n"],
                "final_version": version,
                "exact": exact,
                "errors": errors,
            }
        )
        b.check(f"w6 cas {name} rep {rep}: exact count, no errors {errors}", exact)
        return Batch(ok, t1 - t0, [])

    batches = interleaved(list(names), one, b.cfg.cas_reps)
    rows = {}
    for name, bs in batches.items():
        rows[name] = summarize(name, bs)
        rows[name].extra = {"reps": details[name]}
    print_cas_table(
        f"6. CAS increments of one key, {CAS_PROCS} processes x {b.cfg.cas_each} successes "
        f"({total} per rep), durable, the harness's loop: castore vs sqlite",
        list(rows.values()),
        details,
        total,
    )
    b.compare(w, 9, rows["castore"], "sqlite", rows["sqlite"], procs=CAS_PROCS)
    return {"rows": _row_json(rows), "total_per_rep": total}
