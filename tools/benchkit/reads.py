"""Read workloads: warm get (1), get after many versions (2), list by prefix (4).

Workloads 2 and 4 read bulk data (N versions of one key, N keys in one namespace)
that their ``setup`` builds before any workload is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .context import Bench, Workload
from .measure import Batch, interleaved, p50_ratio, ratio, run_batch, summarize
from .peers import SCRATCH_NAMES, CastorePeer, Peer, SqlitePeer, make_peer, make_value
from .report import print_rate_rows
from .targets import fmt_ratio

__all__ = ["setup_history", "setup_list", "w1_get", "w2_history", "w4_list"]

_pc = time.perf_counter_ns
GET_BATCH_OPS = 1_000_000  # most gets per batch (the time budget ends it first)
LIST_BATCH_OPS = 100_000  # most list calls per batch
LIST_MATCHES = 100  # keys selected by the list prefix
HISTORY_DAG = "bench-hist"
LIST_DAG = "bench-list"


def w1_get(b: Bench, w: Workload) -> dict[str, Any]:
    """Warm get of one key's latest value (same handle, repeated)."""
    peers: dict[str, Peer] = {
        name: make_peer(name, b.scratch(f"w1-{SCRATCH_NAMES[name]}"), durable=True)
        for name in w.peers
    }
    last = make_value(7)
    for p in peers.values():
        p.set("k", make_value(6))
        p.set("k", last)
        for _ in range(100):
            p.get("k")

    def one(name: str, _rep: int) -> Batch:
        get = peers[name].get
        return run_batch(lambda _i: get("k"), GET_BATCH_OPS, b.cfg.batch_s)

    batches = interleaved(list(peers), one, b.cfg.reps)
    for name, p in peers.items():
        b.check(f"w1 {name} get returns the last value", p.get("k") == last)
        p.close()
    rows = [summarize(n, batch) for n, batch in batches.items()]
    print_rate_rows("1. warm get, latest value of one key (100 B)", rows)
    by = {r.name: r for r in rows}
    r_sq = ratio(by["castore"], by["sqlite3"])
    r_nv = ratio(by["castore"], by["naive"])
    print(
        f"castore / sqlite3 = {fmt_ratio(r_sq)}   castore / naive = {fmt_ratio(r_nv)}"
        f"   (by p50 latency: {p50_ratio(by['castore'], by['sqlite3']):.2f}x, "
        f"{p50_ratio(by['castore'], by['naive']):.2f}x)"
    )
    b.score(w, 0, r_sq)
    return {
        "rows": [r.to_json() for r in rows],
        "ratio_vs_sqlite3": r_sq,
        "ratio_vs_naive": r_nv,
    }


def setup_history(b: Bench) -> dict[str, Any]:
    """Write one version of key ``shallow`` and N versions of key ``deep``."""
    n = b.cfg.history_n
    peer = CastorePeer(b.scratch("w2-castore"), durable=False, dag=HISTORY_DAG)
    peer.set("shallow", make_value(1))
    t0 = _pc()
    for i in range(n):
        peer.set("deep", make_value(i))
    dt = (_pc() - t0) / 1e9
    peer.close()
    print(
        f"setup: {n:,} versions of one key, castore durable=False: "
        f"{dt:.1f} s ({dt / n * 1e6:.0f} us/set)"
    )
    return {"history_versions": n, "history_set_us": dt / n * 1e6}


def w2_history(b: Bench, w: Workload) -> dict[str, Any]:
    """Latest-version get after N versions vs after 1 version, warm and cold."""
    peer = CastorePeer(b.scratch("w2-castore"), durable=True, dag=HISTORY_DAG)
    n = b.cfg.history_n
    b.check("w2 deep key latest value", peer.get("deep") == make_value(n - 1))
    b.check("w2 deep key version", peer.store.get("deep").version == n)
    b.check("w2 shallow key latest value", peer.get("shallow") == make_value(1))
    variants: dict[str, Callable[[int], object]] = {
        "warm, 1 version": lambda _i: peer.get("shallow"),
        f"warm, {n:,} versions": lambda _i: peer.get("deep"),
        "cold, 1 version": lambda _i: peer.get_cold("shallow"),
        f"cold, {n:,} versions": lambda _i: peer.get_cold("deep"),
    }

    def one(name: str, _rep: int) -> Batch:
        op = variants[name]
        op(0)
        return run_batch(op, GET_BATCH_OPS, b.cfg.batch_s)

    batches = interleaved(list(variants), one, b.cfg.reps)
    peer.close()
    rows = [summarize(name, batch) for name, batch in batches.items()]
    print_rate_rows(f"2. castore get latest after {n:,} versions vs after 1 version", rows)
    out: dict[str, Any] = {"rows": [r.to_json() for r in rows], "versions": n}
    for kind in ("warm", "cold"):
        shallow = next(r for r in rows if r.name == f"{kind}, 1 version")
        deep = next(r for r in rows if r.name == f"{kind}, {n:,} versions")
        # cost ratio = time per op deep / time per op shallow = rate shallow / rate deep
        cost = ratio(shallow, deep)
        print(
            f"{kind}: cost({n:,} versions) / cost(1 version) = {fmt_ratio(cost)}"
            f"   (by p50 latency: {deep.p50_us / shallow.p50_us:.2f}x)"
        )
        b.score(w, 0, cost, kind=kind, n=n)
        out[f"cost_ratio_{kind}"] = cost
    return out


def list_key(i: int) -> str:
    """The ``i``-th key of the list namespace."""
    return f"item-{i:06d}"


def list_prefix(n: int) -> tuple[str, list[str]]:
    """A prefix selecting exactly LIST_MATCHES keys in the middle of ``n`` keys."""
    block = (n // 2) // LIST_MATCHES
    prefix = list_key(block * LIST_MATCHES)[: -len(str(LIST_MATCHES - 1))]
    expected = [list_key(i) for i in range(n) if list_key(i).startswith(prefix)]
    return prefix, expected


def setup_list(b: Bench) -> dict[str, Any]:
    """Write N keys in one namespace: castore one set per key, sqlite3 one executemany."""
    n = b.cfg.list_n
    peer = CastorePeer(b.scratch("w4-castore"), durable=False, dag=LIST_DAG)
    t0 = _pc()
    for i in range(n):
        peer.set(list_key(i), make_value(i))
    dt = (_pc() - t0) / 1e9
    peer.close()
    sq = SqlitePeer(b.scratch("w4-sqlite"), durable=False)
    t1 = _pc()
    sq.bulk_insert([(list_key(i), make_value(i)) for i in range(n)])
    dt_sq = (_pc() - t1) / 1e9
    sq.close()
    print(
        f"setup: {n:,} keys in one namespace, castore durable=False one set "
        f"per key: {dt:.1f} s ({dt / n * 1e6:.0f} us/key); sqlite3 one "
        f"executemany: {dt_sq:.2f} s"
    )
    return {"list_keys": n, "list_castore_set_us": dt / n * 1e6, "list_sqlite_bulk_s": dt_sq}


def w4_list(b: Bench, w: Workload) -> dict[str, Any]:
    """List with a prefix selecting 100 of N keys: warm and cold, castore and sqlite3."""
    n = b.cfg.list_n
    prefix, expected = list_prefix(n)
    cas = CastorePeer(b.scratch("w4-castore"), durable=True, dag=LIST_DAG)
    sq = SqlitePeer(b.scratch("w4-sqlite"), durable=True)
    variants: dict[str, Callable[[int], list[str]]] = {
        "castore warm": lambda _i: cas.list_keys(prefix),
        "castore cold (new Store)": lambda _i: cas.list_keys_cold(prefix),
        "sqlite3 warm": lambda _i: sq.list_keys(prefix),
        "sqlite3 cold (new connection)": lambda _i: sq.list_keys_cold(prefix),
    }
    for name, op in variants.items():
        ok = op(0) == expected
        b.check(f"w4 {name} returns the {len(expected)} expected keys in order", ok)

    def one(name: str, _rep: int) -> Batch:
        op = variants[name]
        if "warm" in name:
            op(0)
        return run_batch(op, LIST_BATCH_OPS, b.cfg.batch_s)

    batches = interleaved(list(variants), one, b.cfg.reps)
    cas.close()
    sq.close()
    rows = [summarize(name, batch) for name, batch in batches.items()]
    title = f"4. list prefix {prefix!r}: {len(expected)} of {n:,} keys in one namespace"
    print_rate_rows(title, rows, unit="ms")
    by = {r.name: r for r in rows}
    res: dict[str, Any] = {"rows": [r.to_json() for r in rows], "keys": n, "prefix": prefix}
    for kind, sqname in (
        ("warm", "sqlite3 warm"),
        ("cold (new Store)", "sqlite3 cold (new connection)"),
    ):
        c = by[f"castore {kind}"]
        ms = 1e3 / c.median
        r_sq = ratio(c, by[sqname])
        print(f"castore {kind}: {ms:.3f} ms/call; castore / sqlite3 calls/s = {fmt_ratio(r_sq)}")
        b.score(w, 0, ms, kind=kind, n=n)
        res[f"castore {kind}: ratio_vs_sqlite3"] = r_sq
    return res
