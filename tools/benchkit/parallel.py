"""Workload 7: parallel durable writers on distinct keys, castore against sqlite.

* processes: ``PAR_WORKERS`` processes, each opening its own peer (a castore Store,
  or a sqlite connection), make ``par_each`` durable sets round-robin over their own
  ``PAR_KEYS`` keys, after a common start barrier.
* threads: ``PAR_WORKERS`` threads of this process do the same; castore's threads
  share one Store handle, sqlite's each open their own connection.

The rate is all sets / (last worker's end - first worker's start). castore is
durable=True; the peer is the shared harness's ``sqlite`` (kv upsert, WAL,
synchronous=FULL, busy timeout 120 s), whose writers take turns at the database's
one write lock. Values are the harness's 100 B value with a ``last_id`` never used
before; every key is created (and castore's blob-index shards are made) untimed,
before the first repetition.
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .cas import BARRIER_TIMEOUT_SECONDS, WorkerResult, run_workers
from .context import Bench, Workload
from .measure import Batch, Row, interleaved, summarize
from .peers import CastorePeer, Json, Peer, harness_value, make_peer
from .report import fmt_rate, print_table

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

__all__ = ["PAR_WORKERS", "w7_parallel", "worker_keys", "writer_worker"]

PAR_WORKERS = 4  # processes, and threads
PAR_KEYS = 4  # keys per worker, written round-robin
PAR_DAG = "bench-par"
PAR_PEERS = ("castore", "sqlite")
MODES = ("processes", "threads")  # the two rows, in the table's order
PAR_WARMUP_SETS = 2_000  # untimed sets that create castore's blob-index shard files
FIRST_ID = 2_000_000_000  # last_id of the first timed value; each worker-rep gets a block


def worker_keys(worker_id: int) -> list[str]:
    """The keys of one worker (no other worker writes them)."""
    return [f"w{worker_id}/k{j}" for j in range(PAR_KEYS)]


def _write(peer: Peer, keys: list[str], value: Json, first_id: int, n_sets: int) -> None:
    """``n_sets`` sets round-robin over ``keys``; set i carries ``last_id`` first_id + i."""
    nk = len(keys)
    for i in range(n_sets):
        value["last_id"] = first_id + i
        peer.set(keys[i % nk], value)


def _expected_last(first_id: int, n_sets: int) -> dict[int, int]:
    """Key index -> ``last_id`` of its last set, for ``_write(..., first_id, n_sets)``."""
    return {i % PAR_KEYS: first_id + i for i in range(max(0, n_sets - PAR_KEYS), n_sets)}


def writer_worker(
    name: str,
    root: str,
    first_id: int,
    n_sets: int,
    worker_id: int,
    barrier: Barrier,
    queue: Queue[WorkerResult],
) -> None:
    """One writer process: ``n_sets`` durable sets on its own keys; reports through ``queue``.

    Args:
        name: ``castore`` or ``sqlite``.
        root: The peer's scratch directory.
        first_id: ``last_id`` of the first value written.
        n_sets: Durable sets to make.
        worker_id: This worker's index: its keys, and the first field of its result.
        barrier: Start barrier shared with the other workers.
        queue: Where the result goes, errors included.
    """
    done = t0 = t1 = 0
    error = ""
    try:
        peer = make_peer(name, root, durable=True, dag=PAR_DAG)
        keys, value = worker_keys(worker_id), harness_value("100B")
        barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
        gc.collect()
        gc.disable()
        t0 = time.monotonic_ns()
        _write(peer, keys, value, first_id, n_sets)
        t1 = time.monotonic_ns()
        done = n_sets
        peer.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        error = f"{type(exc).__name__}: {exc}"
        t1 = t1 or time.monotonic_ns()
    finally:
        gc.enable()
    queue.put((worker_id, done, 0, t0, t1, error))


def _thread_rep(name: str, root: str, firsts: list[int], n_sets: int) -> list[WorkerResult]:
    """``PAR_WORKERS`` threads of durable sets; castore's share one handle."""
    shared = make_peer(name, root, durable=True, dag=PAR_DAG) if name == "castore" else None
    barrier = threading.Barrier(PAR_WORKERS)
    results: list[WorkerResult] = [(w, 0, 0, 0, 0, "did not run") for w in range(PAR_WORKERS)]

    def run(wid: int) -> None:
        t0 = 0
        try:
            peer = shared or make_peer(name, root, durable=True, dag=PAR_DAG)
            keys, value = worker_keys(wid), harness_value("100B")
            barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
            t0 = time.monotonic_ns()
            _write(peer, keys, value, firsts[wid], n_sets)
            results[wid] = (wid, n_sets, 0, t0, time.monotonic_ns(), "")
            if peer is not shared:
                peer.close()
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
            barrier.abort()
            results[wid] = (wid, 0, 0, t0, time.monotonic_ns(), f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(w,)) for w in range(PAR_WORKERS)]
    os.sync()
    gc.collect()
    gc.disable()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.enable()
    if shared is not None:
        shared.close()
    return results


def _prepare(root: str, name: str) -> None:
    """Create every worker's keys (and castore's blob-index shards), untimed, not durable."""
    keys = [k for w in range(PAR_WORKERS) for k in worker_keys(w)]
    peer: Peer = (
        CastorePeer(root, durable=False, dag=PAR_DAG)
        if name == "castore"
        else make_peer(name, root, durable=False)
    )
    sets = PAR_WARMUP_SETS if name == "castore" else len(keys)
    for i in range(sets):
        peer.set(keys[i % len(keys)], harness_value("100B", i))
    peer.close()


def w7_parallel(b: Bench, w: Workload) -> dict[str, Any]:
    """Parallel durable writers on distinct keys: processes, then threads on one handle."""
    ids = itertools.count(FIRST_ID, b.cfg.par_each)
    return {mode: _w7_mode(b, w, goal, mode, ids) for goal, mode in enumerate(MODES)}


def _w7_mode(b: Bench, w: Workload, goal: int, mode: str, ids: Iterator[int]) -> dict[str, Any]:
    """One row: ``PAR_WORKERS`` writer processes or threads, castore and sqlite interleaved."""
    roots = {name: b.scratch(f"w7-{mode}-{name}") for name in PAR_PEERS}
    for name, root in roots.items():
        _prepare(root, name)
    details: dict[str, list[dict[str, Any]]] = {name: [] for name in PAR_PEERS}
    last_firsts: dict[str, list[int]] = {}

    def one(name: str, rep: int) -> Batch:
        firsts = [next(ids) for _ in range(PAR_WORKERS)]
        last_firsts[name] = firsts
        if mode == "processes":
            args = [(name, roots[name], f, b.cfg.par_each) for f in firsts]
            results = run_workers(b.cfg.start_method, writer_worker, args)
        else:
            results = _thread_rep(name, roots[name], firsts, b.cfg.par_each)
        errors = [r[5] for r in results if r[5]]
        b.check(f"w7 {mode} {name} rep {rep}: writers ran without error {errors}", not errors)
        t0 = min((r[3] for r in results if r[3]), default=0)
        t1 = max((r[4] for r in results if r[3]), default=0)
        done = sum(r[1] for r in results)
        details[name].append({"sets": done, "elapsed_s": (t1 - t0) / 1e9, "errors": errors})
        return Batch(done, t1 - t0, [])

    batches = interleaved(list(PAR_PEERS), one, b.cfg.cas_reps)
    for name, root in roots.items():
        peer = make_peer(name, root, durable=True, dag=PAR_DAG)
        ok = all(
            peer.get(worker_keys(wid)[j])["last_id"] == last_id
            for wid, first in enumerate(last_firsts[name])
            for j, last_id in _expected_last(first, b.cfg.par_each).items()
        )
        peer.close()
        b.check(f"w7 {mode} {name}: every key reads back its last value", ok)
    rows = {name: summarize(name, bs) for name, bs in batches.items()}
    _print_rows(b, mode, rows, details)
    b.compare(w, goal, rows["castore"], "sqlite", rows["sqlite"], workers=PAR_WORKERS)
    return {
        "rows": [{**r.to_json(), "reps": details[n]} for n, r in rows.items()],
        "sets_per_worker": b.cfg.par_each,
    }


def _print_rows(
    b: Bench, mode: str, rows: dict[str, Row], details: dict[str, list[dict[str, Any]]]
) -> None:
    how = "one shared castore handle, a sqlite connection each" if mode == "threads" else ""
    title = (
        f"7. parallel durable writers, {PAR_WORKERS} {mode} x {b.cfg.par_each} sets on "
        f"{PAR_KEYS} own keys each{f' ({how})' if how else ''}"
    )
    table = [
        [
            name,
            fmt_rate(r.median),
            f"{fmt_rate(min(r.rates))}-{fmt_rate(max(r.rates))}",
            f"{r.us_per_op:.0f}",
            f"{statistics.median(d['elapsed_s'] for d in details[name]):.2f}",
        ]
        for name, r in rows.items()
    ]
    print_table(title, ["peer", "sets/s (median)", "min-max", "us/set", "span s"], table)
