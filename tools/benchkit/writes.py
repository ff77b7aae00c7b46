"""Write workloads: set with a new value each time (3) and multi-process CAS (5)."""

from __future__ import annotations

import multiprocessing
import os
from typing import TYPE_CHECKING, Any

from .cas import CAS_DAG, WorkerResult, cas_final, cas_worker, collect
from .context import Bench, Workload
from .measure import Batch, interleaved, ratio, run_batch, summarize
from .peers import SCRATCH_NAMES, CastorePeer, Json, Peer, make_peer, make_value
from .report import print_cas_table, print_rate_rows
from .targets import fmt_ratio

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

__all__ = ["CAS_PROCS", "w3_set", "w5_cas"]

W3_WARMUP_SETS = 2_000  # untimed sets that create castore's blob-index shard files
W3_PRIMING_SETS = 20  # untimed sets through every peer before timing
MAX_SETS_PER_S = 40_000  # fresh values per batch cover its time budget up to this rate
MAX_BATCH_VALUES = 100_000
CAS_PROCS = 4
KEYSETS = {"1 key": ["k"], "16 keys": [f"k{j:02d}" for j in range(16)]}
MODE_TITLES = {
    "durable": "durable: castore durable=True, sqlite3 synchronous=FULL, naive with fsyncs",
    "fast": "fast: castore durable=False, sqlite3 synchronous=NORMAL, naive no fsync",
}


def w3_set(b: Bench, w: Workload) -> dict[str, Any]:
    """Set with a new value each time: 1 key and 16 keys round-robin; durable and fast."""
    return {"durable": _w3_mode(b, w, True), "fast": _w3_mode(b, w, False)}


def _w3_peers(b: Bench, w: Workload, tag: str, durable: bool) -> dict[str, Peer]:
    """Open the peers and bring them to a steady state, untimed."""
    peers = {
        name: make_peer(name, b.scratch(f"w3-{tag}-{SCRATCH_NAMES[name]}"), durable=durable)
        for name in w.peers
    }
    all_keys = [key for keys in KEYSETS.values() for key in keys]
    for p in peers.values():
        for key in all_keys:
            p.set(key, make_value(0))
    # A fresh castore store creates its 256 blob-index shard files during its first
    # ~1,500 distinct values (ms each on this disk); write those through a
    # durable=False handle on the same directory.
    warm = CastorePeer(b.scratch(f"w3-{tag}-castore"), durable=False)
    for i, value in enumerate(b.values.fresh(W3_WARMUP_SETS)):
        warm.set(all_keys[i % len(all_keys)], value)
    warm.close()
    for p in peers.values():
        for i, value in enumerate(b.values.fresh(W3_PRIMING_SETS)):
            p.set(all_keys[i % len(all_keys)], value)
    return peers


def _w3_mode(b: Bench, w: Workload, durable: bool) -> dict[str, Any]:
    tag = "durable" if durable else "fast"
    peers = _w3_peers(b, w, tag, durable)
    last: dict[tuple[str, str], Json] = {}
    names = [f"{p} {k}" for k in KEYSETS for p in peers]
    t_max = b.cfg.durable_batch_s if durable else b.cfg.batch_s
    n_vals = min(MAX_BATCH_VALUES, int(t_max * MAX_SETS_PER_S) + 16)

    def one(name: str, _rep: int) -> Batch:
        pname, kname = name.split(" ", 1)
        keys = KEYSETS[kname]
        nk = len(keys)
        vals = b.values.fresh(n_vals)
        setter = peers[pname].set
        batch = run_batch(lambda i: setter(keys[i % nk], vals[i]), len(vals), t_max)
        for i in range(max(0, batch.ops - nk), batch.ops):
            last[(pname, keys[i % nk])] = vals[i]
        return batch

    batches = interleaved(names, one, b.cfg.durable_reps if durable else b.cfg.reps)
    for (pname, key), value in last.items():
        b.check(f"w3 {tag} {pname} {key} read-back", peers[pname].get(key) == value)
    for p in peers.values():
        p.close()
    rows = [summarize(name, batch) for name, batch in batches.items()]
    print_rate_rows(f"3. set, new 100 B value each time; {MODE_TITLES[tag]}", rows)
    by = {r.name: r for r in rows}
    res: dict[str, Any] = {"rows": [r.to_json() for r in rows]}
    for kname in KEYSETS:
        c = by[f"castore {kname}"]
        r_nv = ratio(c, by[f"naive {kname}"])
        r_sq = ratio(c, by[f"sqlite3 {kname}"])
        print(
            f"{tag}, {kname}: castore / naive = {fmt_ratio(r_nv)}   "
            f"castore / sqlite3 = {fmt_ratio(r_sq)}"
        )
        res[f"{kname}: ratio_vs_naive"] = r_nv
        res[f"{kname}: ratio_vs_sqlite3"] = r_sq
        if durable:
            b.score(w, 0, r_nv, keys=kname)
            b.score(w, 1, r_sq, keys=kname)
    return res


def _cas_rep(b: Bench, name: str, root: str, rep: int) -> tuple[Batch, dict[str, Any]]:
    """One repetition for one peer: CAS_PROCS workers increment a new counter."""
    ctx = (
        multiprocessing.get_context("fork")
        if b.cfg.start_method == "fork"
        else multiprocessing.get_context("spawn")
    )
    total = CAS_PROCS * b.cfg.cas_each
    key = f"ctr-{rep}"
    p = make_peer(name, root, durable=True, dag=CAS_DAG)
    p.set(key, make_value(0))
    p.close()
    barrier = ctx.Barrier(CAS_PROCS)
    queue: Queue[WorkerResult] = ctx.Queue()
    procs = [
        ctx.Process(target=cas_worker, args=(name, root, key, b.cfg.cas_each, i, barrier, queue))
        for i in range(CAS_PROCS)
    ]
    os.sync()
    for proc in procs:
        proc.start()
    results = collect(procs, queue, barrier)
    errors = [r[5] for r in results if r[5]]
    t0 = min((r[3] for r in results if r[3]), default=0)
    t1 = max((r[4] for r in results if r[3]), default=0)
    final_n, final_version = cas_final(name, root, key)
    ok = sum(r[1] for r in results)
    detail = {
        "ok": ok,
        "retries": sum(r[2] for r in results),
        "elapsed_s": (t1 - t0) / 1e9,
        "final_n": final_n,
        "final_version": final_version,
        "exact": final_n == total and final_version == total + 1 and not errors,
        "errors": errors,
    }
    b.check(f"w5 {name} rep {rep}: workers ran without error {errors}", not errors)
    return Batch(ok, t1 - t0, []), detail


def w5_cas(b: Bench, w: Workload) -> dict[str, Any]:
    """CAS_PROCS processes x a fixed number of successful CAS increments of one counter."""
    total = CAS_PROCS * b.cfg.cas_each
    roots = {name: b.scratch(f"w5-{SCRATCH_NAMES[name]}") for name in w.peers}
    for name, root in roots.items():
        make_peer(name, root, durable=True, dag=CAS_DAG).close()
    details: dict[str, list[dict[str, Any]]] = {n: [] for n in roots}

    def one(name: str, rep: int) -> Batch:
        batch, detail = _cas_rep(b, name, roots[name], rep)
        details[name].append(detail)
        return batch

    batches = interleaved(list(roots), one, b.cfg.cas_reps)
    rows = []
    for name, bs in batches.items():
        row = summarize(name, bs)
        row.extra = {"reps": details[name]}
        rows.append(row)
    print_cas_table(
        f"5. CAS increments, {CAS_PROCS} processes x {b.cfg.cas_each} successes "
        f"({total} per rep), durable, start method {b.cfg.start_method}",
        rows,
        details,
        total,
    )
    by = {r.name: r for r in rows}
    r_sq = ratio(by["castore"], by["sqlite3"])
    print(f"castore / sqlite3 = {fmt_ratio(r_sq)}")
    for name in roots:
        exact = all(x["exact"] for x in details[name])
        print(f"{name}: final count exact ({total}) in every rep: {'yes' if exact else 'NO'}")
    b.score(w, 0, r_sq, procs=CAS_PROCS)
    return {
        "rows": [r.to_json() for r in rows],
        "ratio_vs_sqlite3": r_sq,
        "total_per_rep": total,
    }
