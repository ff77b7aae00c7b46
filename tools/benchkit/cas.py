"""Worker processes of the multi-process workloads, and how the parent starts and collects them.

Each CAS worker makes a fixed number of successful increments of one counter:

* castore: get, then ``set(expected_version=version)``, retry on ConflictError.
* sqlite3: BEGIN IMMEDIATE; read; update; COMMIT (busy_timeout 60 s); a
  "database is locked" error counts as a retry.
* ``peer_cas_worker`` (workload 6, the shared harness's CAS loop): any peer of
  ``peers.make_peer``: ``read_versioned`` without a lock, then ``cas(key, version,
  {"n": n + 1, "by": worker})``; a False return counts as a retry.

Workers wait on a barrier so that all start together, and report one
``WorkerResult`` through a queue; the timed span is from the first worker's start
to the last worker's end.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from queue import Empty
from typing import TYPE_CHECKING, Any

import castore

from .peers import make_peer, make_value, sqlite_connect

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

__all__ = [
    "CAS_DAG",
    "WorkerResult",
    "cas_final",
    "cas_worker",
    "collect",
    "peer_cas_worker",
    "run_workers",
]

WorkerResult = tuple[int, int, int, int, int, str]  # id, ok, retries, t0, t1, error
CAS_DAG = "bench-cas"
BARRIER_TIMEOUT_SECONDS = 120.0  # workers wait this long for each other to start
COLLECT_TIMEOUT_SECONDS = 600.0  # 10 minutes for all workers to report
ABORT_GRACE_SECONDS = 30.0  # after aborting the barrier, wait this long for reports


def collect(
    procs: Sequence[BaseProcess],
    queue: Queue[WorkerResult],
    barrier: Barrier,
    timeout_s: float = COLLECT_TIMEOUT_SECONDS,
) -> list[WorkerResult]:
    """Gather one result per worker; a worker that dies first gets an error result.

    When a worker is dead without a result (e.g. it failed to import castore) or the
    timeout passes, the barrier is aborted so that the others stop waiting and report.

    Args:
        procs: The started workers, indexed by worker id.
        queue: Where workers put their results.
        barrier: The workers' start barrier.
        timeout_s: How long to wait before aborting the barrier.

    Returns:
        One result per worker, in worker-id order; every worker has been joined.
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
            deadline = time.monotonic() + ABORT_GRACE_SECONDS
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


def cas_final(name: str, root: str, key: str) -> tuple[int, int]:
    """(counter value, version) of ``key`` read through a fresh handle."""
    if name == "castore":
        got = castore.Store(root, dag=CAS_DAG).get(key)
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

    Args:
        name: The peer, ``castore`` or ``sqlite3``.
        root: The peer's scratch directory.
        key: The counter's key.
        n_success: Successful increments to make.
        worker_id: This worker's index, first field of its result.
        barrier: Start barrier shared with the other workers.
        queue: Where the result goes, errors included.
    """
    ok = retries = 0
    t0 = t1 = 0
    error = ""
    try:
        if name == "castore":
            store = castore.Store(root, dag=CAS_DAG, durable=True)
            step: Callable[[], bool] = _castore_cas_step(store, key)
        else:
            db = sqlite_connect(os.path.join(root, "store.sqlite"), durable=True)
            step = _sqlite_cas_step(db, key)
        barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
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


def run_workers(
    start_method: str, target: Callable[..., None], args: Sequence[tuple[Any, ...]]
) -> list[WorkerResult]:
    """Start one process per ``args`` item and collect one result from each.

    Worker ``i`` is called as ``target(*args[i], i, barrier, queue)``; all wait on
    the barrier before their timed part and put one ``WorkerResult`` on the queue.

    Args:
        start_method: ``spawn`` or ``fork``.
        target: The worker function (importable, for ``spawn``).
        args: Each worker's leading arguments.

    Returns:
        One result per worker, in worker order (see ``collect``).
    """
    ctx = (
        multiprocessing.get_context("fork")
        if start_method == "fork"
        else multiprocessing.get_context("spawn")
    )
    barrier = ctx.Barrier(len(args))
    queue: Queue[WorkerResult] = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, i, barrier, queue)) for i, a in enumerate(args)]
    os.sync()
    for proc in procs:
        proc.start()
    return collect(procs, queue, barrier)


def peer_cas_worker(
    name: str,
    root: str,
    dag: str,
    key: str,
    n_success: int,
    worker_id: int,
    barrier: Barrier,
    queue: Queue[WorkerResult],
) -> None:
    """The shared harness's CAS loop: ``n_success`` increments of ``{"n": ...}`` at ``key``.

    Args:
        name: A peer of ``peers.make_peer`` with ``read_versioned`` and ``cas``.
        root: The peer's scratch directory.
        dag: castore's DAG (other peers ignore it).
        key: The counter's key.
        n_success: Successful increments to make.
        worker_id: This worker's index, first field of its result.
        barrier: Start barrier shared with the other workers.
        queue: Where the result goes, errors included.
    """
    ok = retries = 0
    t0 = t1 = 0
    error = ""
    try:
        peer = make_peer(name, root, durable=True, dag=dag)
        barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
        gc.collect()
        gc.disable()
        t0 = time.monotonic_ns()
        while ok < n_success:
            version, value = peer.read_versioned(key)
            if peer.cas(key, version, {"n": value["n"] + 1, "by": worker_id}):
                ok += 1
            else:
                retries += 1
        t1 = time.monotonic_ns()
        peer.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        error = f"{type(exc).__name__}: {exc}"
        t1 = t1 or time.monotonic_ns()
    finally:
        gc.enable()
    queue.put((worker_id, ok, retries, t0, t1, error))
