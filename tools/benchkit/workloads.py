"""The workload table: what each numbered workload times, against whom, and its targets.

Every timed workload runs its variants in rotated repetitions (see ``measure``);
``setup`` functions build bulk data before any workload is timed. Goal labels take
``{fields}`` that the workload fills in (``n`` keys or versions, ``kind`` warm or
cold, ``keys`` the key set, ``procs`` the process count, ``workers`` the writers).

Workloads 6 and 7 are issue 10's table: one goal per row, in the table's order, each
a castore / peer ratio (``Bench.compare``; the peer's name is added to the label).
"""

from __future__ import annotations

from .context import Workload
from .issue10 import CAS_PROCS, setup_issue10, w6_issue10
from .parallel import w7_parallel
from .peers import PEER_NAMES
from .reads import setup_history, setup_list, w1_get, w2_history, w4_list
from .targets import Goal
from .writes import w3_set, w5_cas

__all__ = ["NUMBERS", "WORKLOADS"]

WORKLOADS: tuple[Workload, ...] = (
    Workload(
        number=1,
        key="w1_get",
        measures="warm get of one key's latest value (same handle, repeated)",
        peers=PEER_NAMES,
        run=w1_get,
        goals=(Goal("warm get ops/s, castore / sqlite3", ">=", 1.0),),
    ),
    Workload(
        number=2,
        key="w2_history",
        measures="get latest after N versions vs after 1 version, warm and cold (new Store)",
        peers=("castore",),
        setup=setup_history,
        run=w2_history,
        goals=(Goal("get latest, {kind}: cost {n:,} versions / 1 version", "<=", 1.2),),
    ),
    Workload(
        number=3,
        key="w3_set",
        measures="set a new value, 1 key and 16 keys round-robin; durable, then fast (info)",
        peers=PEER_NAMES,
        run=w3_set,
        goals=(
            Goal("durable set ops/s, {keys}: castore / naive", ">=", 1.5),
            Goal("durable set ops/s, {keys}: castore / sqlite3"),
        ),
    ),
    Workload(
        number=4,
        key="w4_list",
        measures="list a prefix selecting 100 of N keys, warm and cold (new handle)",
        peers=("castore", "sqlite3"),
        setup=setup_list,
        run=w4_list,
        goals=(Goal("list 100 of {n:,}, {kind}: castore ms/call", "<", 5.0, "ms"),),
    ),
    Workload(
        number=5,
        key="w5_cas",
        measures="4 processes making compare-and-swap increments of one counter, durable",
        peers=("castore", "sqlite3"),
        run=w5_cas,
        goals=(Goal("CAS increments/s, {procs} procs: castore / sqlite3", ">=", 1.0),),
    ),
    Workload(
        number=6,
        key="w6_issue10",
        measures="issue-10 table: sets, gets, get version k, lists and CAS, castore vs "
        "sqlite (WAL) and sqlite with a history table",
        peers=("castore", "sqlite", "sqlite3+history"),
        setup=setup_issue10,
        run=w6_issue10,
        goals=(
            Goal("durable set, 100 B", ">=", 1.0),
            Goal("durable set, 10 KB", ">=", 1.0),
            Goal("set without sync, 100 B", ">=", 1.0),
            Goal("set without sync, 10 KB", ">=", 1.0),
            Goal("warm get, 100 B", ">=", 1.0),
            Goal("get random of {n:,} keys", ">=", 1.0),
            Goal("get version k after {n:,} versions", ">=", 0.67),
            Goal("list prefix (100 of {n:,} keys)", ">=", 0.5),
            Goal("list all {n:,} keys", ">=", 0.5),
            Goal(f"{CAS_PROCS}-process compare-and-swap on one key", ">=", 1.0),
        ),
    ),
    Workload(
        number=7,
        key="w7_parallel",
        measures="parallel durable writers on distinct keys: 4 processes, 4 threads on one "
        "handle; castore vs sqlite (WAL, synchronous=FULL)",
        peers=("castore", "sqlite"),
        run=w7_parallel,
        goals=(
            Goal("parallel durable writers on distinct keys: {workers} processes", ">=", 2.0),
            Goal("{workers} threads on one shared handle doing durable sets", ">=", 2.0),
        ),
    ),
)

NUMBERS = frozenset(w.number for w in WORKLOADS)
