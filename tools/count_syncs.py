"""Count fsync-class system calls per castore ``set`` (durable=True), with strace.

Run from the checkout root::

    .venv/bin/python tools/count_syncs.py            # 50 sets per case
    .venv/bin/python tools/count_syncs.py -n 200 --json syncs.json

For each case the store is prepared in this process (untimed, not traced); then
a child Python process opens the store and runs N sets under
``strace -f -c -e trace=fsync,fdatasync,sync_file_range,msync,syncfs``. A second
child that opens the store and runs 0 sets gives the fixed overhead (interpreter
start, imports, opening the store), which is subtracted before dividing by N.

Cases (target: at most 2 fsync-class calls per durable set):

* existing key, new value each time;
* existing key, the same value as the current one (the blob is deduplicated);
* a new key each time (information: the key's log file is created, and KEYS and
  the directory entry are made durable too, 3 calls once per key);
* existing key, new value, durable=False (information: should be 0).

This is a measurement, not a test: a FAIL row is information.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import castore

SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "msync", "syncfs")
TARGET_PER_SET = 2.0
DAG = "syncs"
# case id -> (description, durable, has a target)
CASES: dict[str, tuple[str, bool, bool]] = {
    "new-value": ("existing key, new value", True, True),
    "same-value": ("existing key, same value (dedup)", True, True),
    # A key's first write also makes KEYS and the new file's directory entry durable
    # (FORMAT.md §6): 3 calls, once per key; the target is about sets of existing keys.
    "new-key": ("new key each time (first write of a key)", True, False),
    "fast": ("existing key, new value, durable=False", False, False),
}


def make_value(i: int) -> dict[str, Any]:
    """A dict whose ``json.dumps`` is 100 bytes; distinct for every ``i``."""
    value: dict[str, Any] = {"n": i, "cursor": "", "updated_at": "2026-01-01T00:00:00Z"}
    room = 100 - len(json.dumps(value))
    value["cursor"] = (hashlib.sha256(b"%d" % i).hexdigest() * 2)[: max(0, room)]
    return value


def prepare(root: str) -> None:
    """Create the store, the existing key ``k`` (value 0) and a seed key, outside strace."""
    store = castore.Store(root, dag=DAG, durable=True)
    store.set("seed", make_value(-1))
    store.set("k", make_value(0))
    store.close()


def child(case: str, root: str, n: int) -> None:
    """The traced process: open the store and run ``n`` sets of ``case``."""
    durable = CASES[case][1]
    store = castore.Store(root, dag=DAG, durable=durable)
    for i in range(1, n + 1):
        if case == "same-value":
            store.set("k", make_value(0))
        elif case == "new-key":
            store.set(f"new-{i:06d}", make_value(i))
        else:
            store.set("k", make_value(i))
    if n:
        got = store.get(f"new-{n:06d}" if case == "new-key" else "k")
        expected = make_value(0 if case == "same-value" else n)
        if got.value != expected:
            raise SystemExit(f"read-back mismatch in case {case}: {got.value!r}")


def parse_strace_summary(text: str) -> dict[str, int]:
    """Calls per syscall from ``strace -c`` output (the ``calls`` column)."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[-1] not in SYNC_CALLS:
            continue
        try:
            calls[parts[-1]] = int(parts[3])
        except ValueError:
            continue
    return calls


def traced(strace: str, case: str, root: str, n: int, out_dir: str) -> dict[str, int]:
    """Run the child under strace; return its fsync-class call counts."""
    out = os.path.join(out_dir, f"strace-{case}-{n}.txt")
    cmd = [
        strace,
        "-f",
        "-c",
        "-o",
        out,
        "-e",
        "trace=" + ",".join(SYNC_CALLS),
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        case,
        root,
        str(n),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"traced child failed ({proc.returncode}):\n{proc.stderr}")
    with open(out, encoding="utf-8") as fh:
        return parse_strace_summary(fh.read())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(
        prog="count_syncs.py",
        description="Count fsync-class syscalls per castore set (durable=True) under strace.",
    )
    ap.add_argument("-n", "--sets", type=int, default=50, help="sets per case (default 50)")
    ap.add_argument(
        "--workdir",
        default=None,
        help="parent directory for scratch stores (default ./bench-results; avoid tmpfs)",
    )
    ap.add_argument("--strace", default="/usr/bin/strace", help="strace binary")
    ap.add_argument("--json", metavar="OUT", default=None, help="write the counts to OUT")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "ROOT", "N"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every case; print a table; return 0 (a FAIL row is information)."""
    args = parse_args(argv)
    if args.child:
        case, root, n = args.child
        child(case, root, int(n))
        return 0
    if not os.access(args.strace, os.X_OK):
        print(f"strace not found at {args.strace}; nothing measured")
        return 2
    n = args.sets
    parent = os.path.abspath(args.workdir or os.path.join(os.getcwd(), "bench-results"))
    os.makedirs(parent, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="castore-syncs-", dir=parent)
    rows: list[list[str]] = []
    results: dict[str, Any] = {"sets": n, "cases": {}}
    try:
        for case, (what, durable, has_target) in CASES.items():
            root = os.path.join(workdir, case)
            prepare(root)
            base = traced(args.strace, case, root, 0, workdir)
            got = traced(args.strace, case, root, n, workdir)
            per_call = {c: (got.get(c, 0) - base.get(c, 0)) / n for c in SYNC_CALLS}
            per_set = sum(per_call.values())
            ok = per_set <= TARGET_PER_SET
            verdict = ("PASS" if ok else "FAIL") if has_target else "info"
            rows.append(
                [
                    what,
                    "yes" if durable else "no",
                    *(f"{per_call[c]:.2f}" for c in SYNC_CALLS),
                    f"{per_set:.2f}",
                    f"<= {TARGET_PER_SET:g}" if has_target else "-",
                    verdict,
                ]
            )
            results["cases"][case] = {
                "what": what,
                "durable": durable,
                "baseline_calls": base,
                "calls": got,
                "per_set": per_call,
                "total_per_set": per_set,
                "verdict": verdict,
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    headers = ["case", "durable", *SYNC_CALLS, "per set", "target", "result"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(f"fsync-class calls per castore set ({n} sets per case, 0-set baseline subtracted)")
    for cells in [headers, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
        print(f"counts written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
