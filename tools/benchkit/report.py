"""Everything the benchmark prints: the header, the per-workload tables and the targets.

Tables are plain aligned text. Rates print as ops/s (or ms per call) with the
min-max over repetitions and pooled latency percentiles; ratios print as
``median x [per-rep min-max]``.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .measure import Row
from .targets import Comparison, Target

__all__ = [
    "fmt_rate",
    "print_cas_table",
    "print_comparisons",
    "print_footer",
    "print_header",
    "print_probes",
    "print_rate_rows",
    "print_table",
    "print_targets",
]

CAS_HEADERS = ["peer", "incr/s (median)", "min-max", "us/incr", "retries/incr"]
BUSY_LOADAVG = 0.5  # above this, warn that other processes add noise


def fmt_rate(x: float) -> str:
    """An ops/s figure: no decimals from 100 up, one below."""
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


def _ms_cells(r: Row) -> list[str]:
    return [
        r.name,
        f"{1e3 / r.median:.3f}",
        f"{1e3 / max(r.rates):.3f}-{1e3 / min(r.rates):.3f}",
        f"{r.p50_us / 1e3:.3f}",
        f"{r.p99_us / 1e3:.3f}",
        str(r.ops_total),
    ]


def _rate_cells(r: Row) -> list[str]:
    return [
        r.name,
        fmt_rate(r.median),
        f"{fmt_rate(min(r.rates))}-{fmt_rate(max(r.rates))}",
        f"{r.us_per_op:.1f}",
        f"{r.p50_us:.1f}",
        f"{r.p99_us:.1f}",
        str(r.ops_total),
    ]


def print_rate_rows(title: str, rows: Sequence[Row], unit: str = "ops/s") -> None:
    """Table of rows as ops/s (or ms per call) with min-max and latency percentiles."""
    if unit == "ms":
        headers = ["variant", "ms/call (median)", "min-max", "p50 ms", "p99 ms", "calls"]
        print_table(title, headers, [_ms_cells(r) for r in rows])
    else:
        headers = ["variant", "ops/s (median)", "min-max", "us/op", "p50 us", "p99 us", "ops"]
        print_table(title, headers, [_rate_cells(r) for r in rows])


def print_cas_table(
    title: str, rows: Sequence[Row], details: Mapping[str, Sequence[Mapping[str, Any]]], total: int
) -> None:
    """Table of the CAS workload: rates, retries per increment and the exactness check.

    Args:
        title: The table's title line.
        rows: One row per peer.
        details: Per peer, one dict per repetition with ``retries``, ``final_n`` and
            ``exact``.
        total: Successful increments per repetition, over all processes.
    """
    table = []
    for r in rows:
        d = details[r.name]
        table.append(
            [
                r.name,
                fmt_rate(r.median),
                f"{fmt_rate(min(r.rates))}-{fmt_rate(max(r.rates))}",
                f"{r.us_per_op:.0f}",
                f"{statistics.median(x['retries'] for x in d) / total:.2f}",
                ", ".join(f"{x['final_n']}" for x in d),
                "yes" if all(x["exact"] for x in d) else "NO",
            ]
        )
    headers = [*CAS_HEADERS, "final count per rep", f"exact ({total})"]
    print_table(title, headers, table)


def print_comparisons(rows: Sequence[Comparison]) -> None:
    """The castore-vs-peer table (workloads 6 and 7): ops/s of each, ratio, target, result."""
    if not rows:
        return
    table = [
        [
            str(r.workload),
            r.row,
            fmt_rate(r.castore_ops),
            r.peer,
            fmt_rate(r.peer_ops),
            f"{r.ratio[0]:.2f}x",
            f"{r.ratio[1]:.2f}-{r.ratio[2]:.2f}",
            r.target,
            "PASS" if r.passed else "FAIL",
        ]
        for r in rows
    ]
    print_table(
        "castore vs its peer (issue 10): ops/s are medians over interleaved repetitions; "
        "ratio = castore / peer, median [min-max] of the per-repetition ratios",
        ["#", "row", "castore ops/s", "peer", "peer ops/s", "ratio", "min-max", "target", "result"],
        table,
        left=2,
    )


def print_header(meta: Mapping[str, Any], trash: Sequence[str], parent: str) -> None:
    """The run's settings, versions, scratch place, load and warnings.

    Args:
        meta: The run's metadata (``mode``, ``config``, versions, ``loadavg_start``...).
        trash: Earlier scratch directories still being deleted.
        parent: The directory holding the scratch directories.
    """
    cfg = meta["config"]
    print(
        f"castore bench, mode {cfg['mode']}: reps {cfg['reps']} x {cfg['batch_s']} s batches, "
        f"durable sets {cfg['durable_reps']} x {cfg['durable_batch_s']} s, CAS "
        f"{cfg['cas_reps']} reps, workloads {','.join(map(str, meta['workloads']))}"
    )
    print(
        f"python {meta['python']}, sqlite {meta['sqlite']}, castore {meta['castore']}, "
        f"{meta['cpus']} cpus"
    )
    print(f"workdir {meta['workdir']} on {meta['fs']}")
    load = meta["loadavg_start"]
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", end="")
    busy = load[0] > BUSY_LOADAVG
    print(" (other processes are busy: expect noise, compare ratios)" if busy else "")
    if trash:
        print(
            f"WARNING: {len(trash)} earlier scratch dir(s) still being deleted in {parent} "
            f"({', '.join(trash)}): disk contention and slow file creation likely"
        )
    if meta["fs"].startswith("tmpfs"):
        print("WARNING: workdir is on tmpfs: fsync is free there, durable numbers mean nothing")


def print_probes(meta: Mapping[str, Any]) -> None:
    """The file-creation and fdatasync probes made before the workloads."""
    print(
        f"probe: create empty file {meta['create_probe_us_start']:.0f} us (~15 us normal; "
        f"0.2-0.8 ms after mass deletions), 4 KiB append + fdatasync "
        f"{meta['fdatasync_4k_us']:.0f} us"
    )
    sys.stdout.flush()


def print_targets(targets: Sequence[Target]) -> None:
    """The target table: one row per target, PASS, FAIL or info."""
    rows = [
        [str(t.workload), t.what, t.target, t.measured, "PASS" if t.passed else "FAIL"]
        for t in targets
    ]
    rows = [r if r[2] != "(info)" else [*r[:4], "info"] for r in rows]
    print_table(
        "Targets (ratio [per-rep min-max]; a FAIL is information)",
        ["#", "what", "target", "measured", "result"],
        rows,
        left=5,
    )


def print_footer(meta: Mapping[str, Any], problems: Sequence[str]) -> None:
    """End probe, run time, cleanup line and any failed read-back checks."""
    end_probe = meta.get("create_probe_us_end", float("nan"))
    print(
        f"\nprobe: create empty file at end {end_probe:.0f} us; run time {meta['elapsed_s']:.0f} s"
    )
    print(meta["cleanup"])
    if problems:
        print("read-back checks FAILED:\n  " + "\n  ".join(problems))
