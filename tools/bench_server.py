"""Benchmark: ``castore serve`` against etcd (issue 13), durable sets and gets over HTTP.

Run from the checkout root::

    python3 tools/bench_server.py             # default: 5 rounds, about 100 s
    python3 tools/bench_server.py --quick     # smoke run, < 40 s
    python3 tools/bench_server.py --rounds 7 --requests 4000 --json out.json

Two servers on loopback, started here and stopped at the end:

* **castore**: ``sys.executable -m castore --dir TMP/castore/store serve --listen
  127.0.0.1:0 --processes N`` (the file store, durable sets: the default; its
  access log in ``TMP/castore/access.log``; ``--processes``, default two per core:
  etcd uses every core too, and a castore process waits for fdatasync about half
  the time). ``--castore-path DIR`` puts ``DIR`` first on the
  server's ``PYTHONPATH`` (``DIR/castore`` is then the code measured, e.g. a copy
  of another commit).
* **etcd**: Debian's ``etcd`` (``apt-get install -y etcd-server`` when it is not on
  ``PATH``; ``--no-install`` refuses), one member with a temporary ``--data-dir``,
  client and peer URLs on free loopback ports, its default durability (the WAL is
  fsynced before a put is answered; a range is linearizable). It is asked through
  its v3 JSON gateway: ``POST /v3/kv/put`` and ``/v3/kv/range``, key and value in
  base64.

Both are driven by the same load generator (``tools/loadtest.py``: one keep-alive
HTTP/1.1 connection per client, one request at a time per connection), with the
same engine for both peers: ``--engine asyncio`` (default: coroutines on one event
loop, raw connections) or ``threads`` (``http.client``, a thread per client). On the
2-core VM asyncio let etcd answer about 1.5x more requests per second at 8 and 32
clients than threads did, and castore the same (its server is the bottleneck), so
it is the default (docs/PERFORMANCE.md). The load: ``get`` and ``set`` at 1, 8
and 32 concurrent clients (``--clients``), about ``--requests`` requests per cell
(split over the clients), keys spread at random over ``--keys`` keys that are
all written once before any timing; values are JSON objects of ``--value-size``
bytes (100), new for every set. The cells run interleaved, the order of the
peers alternating, for ``--rounds`` rounds after one warm-up round of
``--warmup`` requests per cell; the table shows per cell the median over the rounds
of each peer's throughput and p50/p99 latency, the ratio castore/etcd of the
median throughputs and the range of the per-round ratios. The issue's target is
a ratio >= 0.5 for both operations (here: in every row). This is a measurement,
not a test: a FAIL is information, and the exit status is 0 unless a request
failed or something crashed.

Everything lives in one temporary directory (``--workdir`` to choose its parent;
never on tmpfs, where fsync is free), removed at the end; both servers are
stopped (SIGTERM, then SIGKILL after 60 s) on every exit, Ctrl-C and SIGTERM
included. ``--keep`` keeps the directory (the logs) for a look.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Final

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.benchkit import machine
from tools.loadtest import (
    ENGINES,
    Child,
    LoadResult,
    Op,
    Protocol,
    castore_protocol,
    error_label,
    key_name,
    prepare,
    run_load,
    start_castore,
)

PEERS: Final = ("castore", "etcd")
OPS: Final[tuple[Op, ...]] = ("get", "set")
TARGET_RATIO: Final = 0.5
ETCD_PREFIX: Final = "bench/"
ETCD_ATTEMPTS: Final = 5  # a free port may be taken between probing and binding it
ETCD_START_SECONDS: Final = 60.0
DAG: Final = "bench"


# -- etcd ----------------------------------------------------------------------------------------


def etcd_protocol(prefix: str = ETCD_PREFIX) -> Protocol:
    """The etcd v3 JSON gateway: ``/v3/kv/range`` and ``/v3/kv/put``, base64 key and value."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    def request(op: Op, key: int, value: bytes) -> tuple[str, bytes]:
        name = b64((prefix + key_name(key)).encode())
        if op == "get":
            return "/v3/kv/range", f'{{"key":"{name}"}}'.encode()
        return "/v3/kv/put", f'{{"key":"{name}","value":"{b64(value)}"}}'.encode()

    def verdict(op: Op, status: int, body: bytes) -> str:
        if status != 200:
            return error_label(status, body)
        if op == "get" and b'"kvs"' not in body:
            return "200 not_found"
        return ""

    return Protocol("etcd", request, verdict)


def etcd_binary(install: bool) -> str:
    """The path of ``etcd``, installing Debian's ``etcd-server`` when allowed and missing.

    Raises:
        RuntimeError: not found and not installed.
    """
    found = shutil.which("etcd")
    if found:
        return found
    if not install:
        raise RuntimeError("etcd is not on PATH: apt-get install -y etcd-server")
    print("etcd not found: apt-get install -y etcd-server", flush=True)
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "etcd-server"], check=True, env=apt)  # noqa: S607
    found = shutil.which("etcd")
    if not found:
        raise RuntimeError("etcd-server installed, but no etcd on PATH")
    return found


def etcd_version(binary: str) -> str:
    """``etcd --version``'s first line, e.g. ``etcd Version: 3.4.23``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout.splitlines() or ["etcd ?"])[0]


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _etcd_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:  # noqa: S310  # http://127.0.0.1
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


def start_etcd(binary: str, directory: pathlib.Path) -> tuple[Child, str]:
    """One etcd member on free loopback ports, data in ``directory/data``: child, client URL.

    Raises:
        RuntimeError: it did not become healthy in :data:`ETCD_ATTEMPTS` attempts.
    """
    directory.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(ETCD_ATTEMPTS):
        shutil.rmtree(directory / "data", ignore_errors=True)
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        argv = [
            binary,
            "--name=bench",
            f"--data-dir={directory / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=bench={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        child = Child(argv, directory / f"etcd-{attempt}.err", cwd=directory)
        stop = time.monotonic() + ETCD_START_SECONDS
        while child.process.poll() is None and time.monotonic() < stop:
            if _etcd_healthy(client):
                return child, client
            time.sleep(0.1)
        child.stop()
        last = child.stderr_text()[-2000:]
    raise RuntimeError(f"etcd did not start in {ETCD_ATTEMPTS} attempts:\n{last}")


# -- the run -------------------------------------------------------------------------------------


class Servers:
    """The two servers of a run, stopped by :meth:`stop` (idempotent)."""

    def __init__(self) -> None:
        self.children: dict[str, Child] = {}
        self.urls: dict[str, str] = {}

    def stop(self) -> None:
        """Stop every server still running (SIGTERM, wait, SIGKILL)."""
        for name, child in list(self.children.items()):
            code = child.stop()
            if code not in (0, None) and not (name == "etcd" and code == -signal.SIGTERM):
                print(f"{name} exited with {code}", file=sys.stderr)
            del self.children[name]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def scratch(parent: str | None, keep: bool) -> Iterator[pathlib.Path]:
    """A temporary directory for the run (not on tmpfs), removed after unless ``keep``."""
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    directory = pathlib.Path(tempfile.mkdtemp(prefix="bench-server-", dir=parent))
    if machine.fs_type(str(directory)).startswith("tmpfs"):
        shutil.rmtree(directory)
        raise RuntimeError(f"{directory} is on tmpfs (fsync is free there): give --workdir")
    try:
        yield directory
    finally:
        if keep:
            print(f"kept {directory}", flush=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)


def per_client(requests: int, clients: int) -> int:
    """Requests per client so that a cell makes about ``requests`` in all (at least 20 each)."""
    return max(20, -(-requests // clients))


def measure(
    servers: Servers,
    protocols: dict[str, Protocol],
    *,
    rounds: int,
    requests: int,
    warmup: int,
    clients: Sequence[int],
    keys: int,
    value_size: int,
    engine: str,
) -> dict[tuple[str, str, int], list[LoadResult]]:
    """Every (peer, op, clients) cell, interleaved, ``rounds`` times after one warm-up round."""
    results: dict[tuple[str, str, int], list[LoadResult]] = {}
    for number in range(-1 if warmup else 0, rounds):
        began = time.monotonic()
        for op in OPS:
            for count in clients:
                order = PEERS if (number + count) % 2 == 0 else PEERS[::-1]
                for peer in order:
                    total = warmup if number < 0 else requests
                    result = run_load(
                        servers.urls[peer],
                        protocols[peer],
                        clients=count,
                        ops=per_client(total, count),
                        mix=op,
                        keys=keys,
                        value_size=value_size,
                        engine=engine,
                        seed=number + 2,
                    )
                    if result.errors:
                        print(f"  {peer} {op} x{count}: errors {result.errors}", flush=True)
                    if number >= 0:
                        results.setdefault((peer, op, count), []).append(result)
        label = "warm-up" if number < 0 else f"round {number + 1}/{rounds}"
        print(f"{label} done in {time.monotonic() - began:.1f} s", flush=True)
    return results


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: a cell's medians over the rounds, for both peers."""

    op: str
    clients: int
    castore_ops: float
    etcd_ops: float
    ratio: float  # of the median throughputs
    ratio_min: float  # the range of the per-round ratios
    ratio_max: float
    castore_p50_ms: float
    castore_p99_ms: float
    etcd_p50_ms: float
    etcd_p99_ms: float
    castore_runs: list[float]
    etcd_runs: list[float]

    @property
    def passed(self) -> bool:
        """The issue's target: castore/etcd >= 0.5."""
        return self.ratio >= TARGET_RATIO

    def line(self) -> str:
        """The row in Markdown."""
        return (
            f"| {self.op} | {self.clients} | {self.castore_ops:,.0f} | {self.etcd_ops:,.0f} "
            f"| **{self.ratio:.2f}x** [{self.ratio_min:.2f}-{self.ratio_max:.2f}] "
            f"| {self.castore_p50_ms:.2f} / {self.castore_p99_ms:.2f} "
            f"| {self.etcd_p50_ms:.2f} / {self.etcd_p99_ms:.2f} "
            f"| {'PASS' if self.passed else 'FAIL'} |"
        )


TABLE_HEAD: Final = (
    "| op | clients | castore ops/s | etcd ops/s | castore/etcd [per-round range] "
    "| castore p50 / p99 ms | etcd p50 / p99 ms | target >= 0.5 |\n"
    "|---|---|---|---|---|---|---|---|"
)


def rows_of(
    results: dict[tuple[str, str, int], list[LoadResult]], clients: Sequence[int]
) -> list[Row]:
    """The table's rows, one per (op, clients), from every round's results."""
    rows: list[Row] = []
    for op in OPS:
        for count in clients:
            mine, theirs = results[("castore", op, count)], results[("etcd", op, count)]
            tc, te = _median([r.throughput for r in mine]), _median([r.throughput for r in theirs])
            per_round = [
                a.throughput / b.throughput if b.throughput else 0.0
                for a, b in zip(mine, theirs, strict=True)
            ]
            rows.append(
                Row(
                    op=op,
                    clients=count,
                    castore_ops=tc,
                    etcd_ops=te,
                    ratio=tc / te if te else 0.0,
                    ratio_min=min(per_round),
                    ratio_max=max(per_round),
                    castore_p50_ms=_median([r.p50_ms for r in mine]),
                    castore_p99_ms=_median([r.p99_ms for r in mine]),
                    etcd_p50_ms=_median([r.p50_ms for r in theirs]),
                    etcd_p99_ms=_median([r.p99_ms for r in theirs]),
                    castore_runs=[r.throughput for r in mine],
                    etcd_runs=[r.throughput for r in theirs],
                )
            )
    return rows


_ORIGIN_PROBE: Final = """
import importlib.util, os, castore, uvicorn
http = "httptools" if importlib.util.find_spec("httptools") else "h11"
loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
print(f"{os.path.dirname(castore.__file__)}; uvicorn {uvicorn.__version__} ({http}, {loop} loop)")
"""


def castore_origin(env: dict[str, str], cwd: pathlib.Path) -> str:
    """Where the server's ``castore`` comes from, and what uvicorn it runs on (for the header).

    uvicorn picks httptools and uvloop when they are installed, h11 and asyncio else.
    """
    out = subprocess.run(
        [sys.executable, "-c", _ORIGIN_PROBE],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
    )
    return out.stdout.strip() or f"? ({out.stderr.strip()[-200:]})"


def busy() -> str:
    """How busy the machine is: load average, and the CPU pressure of the last minute."""
    load = os.getloadavg()
    text = f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    with contextlib.suppress(OSError, IndexError, ValueError):
        some = pathlib.Path("/proc/pressure/cpu").read_text(encoding="ascii").split()
        text += f", CPU pressure (some, avg60) {float(some[2].split('=')[1]):.0f}%"
    return text


def header(etcd: str, origin: str, directory: pathlib.Path, args: argparse.Namespace) -> list[str]:
    """The run's context: date, machine, versions, options."""
    return [
        f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {os.cpu_count()} cores, {platform.platform()}; {busy()}",
        f"disk: {machine.fs_type(str(directory))}; 4 KiB append + fdatasync "
        f"{machine.probe_fdatasync_us(str(directory)):.0f} us (median of 20)",
        f"python {platform.python_version()}; castore from {origin}; {etcd}",
        f"load: engine {args.engine}, {args.rounds} rounds (+1 warm-up), ~{args.requests} "
        f"requests per cell, {args.keys} keys, values {args.value_size} B, "
        f"clients {','.join(map(str, args.clients))}; castore serve --processes {args.processes}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (``--quick`` sets smaller defaults)."""
    p = argparse.ArgumentParser(description="castore serve against etcd (see the docstring).")
    p.add_argument("--quick", action="store_true", help="smoke run, < 40 s")
    p.add_argument("--rounds", type=int, help="interleaved rounds (5; quick 1)")
    p.add_argument("--requests", type=int, help="requests per cell (2500; quick 600)")
    p.add_argument("--warmup", type=int, help="requests per cell of the warm-up round (400)")
    p.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 8, 32],
        help="concurrency levels, comma-separated (1,8,32)",
    )
    p.add_argument("--keys", type=int, default=1000, help="keys the requests spread over")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (100)")
    p.add_argument("--engine", choices=ENGINES, default="asyncio", help="client engine (asyncio)")
    p.add_argument("--castore-path", help="directory put first on the server's PYTHONPATH")
    p.add_argument(
        "--processes",
        type=int,
        default=2 * (os.cpu_count() or 1),
        help="castore serve --processes (2 per core: each waits for fdatasync half the time)",
    )
    p.add_argument("--workdir", help="parent of the temporary directory (not tmpfs)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--no-install", action="store_true", help="never apt-get install etcd")
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.requests = args.requests or (600 if args.quick else 2500)
    args.warmup = args.warmup if args.warmup is not None else (200 if args.quick else 400)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; 0 unless a request failed."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    binary = etcd_binary(install=not args.no_install)
    env = dict(os.environ)
    if args.castore_path:
        path = os.path.abspath(args.castore_path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    servers = Servers()
    started = time.monotonic()
    with scratch(args.workdir, args.keep) as directory:
        try:
            lines = header(etcd_version(binary), castore_origin(env, directory), directory, args)
            print("\n".join(lines), flush=True)
            (directory / "castore").mkdir()
            servers.children["castore"], servers.urls["castore"] = start_castore(
                directory / "castore", env=env, extra=["--processes", str(args.processes)]
            )
            servers.children["etcd"], servers.urls["etcd"] = start_etcd(binary, directory / "etcd")
            protocols = {"castore": castore_protocol(DAG), "etcd": etcd_protocol()}
            for peer in PEERS:
                prepare(servers.urls[peer], protocols[peer], args.keys, args.value_size)
            results = measure(
                servers,
                protocols,
                rounds=args.rounds,
                requests=args.requests,
                warmup=args.warmup,
                clients=args.clients,
                keys=args.keys,
                value_size=args.value_size,
                engine=args.engine,
            )
        finally:
            servers.stop()
        rows = rows_of(results, args.clients)
        print("\n" + TABLE_HEAD + "\n" + "\n".join(row.line() for row in rows))
        verdict = "PASS" if all(row.passed for row in rows) else "FAIL"
        print(f"\ntarget castore/etcd >= {TARGET_RATIO} for get and set in every row: {verdict}")
        errors = sum(r.error_count for cell in results.values() for r in cell)
        print(f"failed requests: {errors}; wall time {time.monotonic() - started:.0f} s")
        print(f"at the end: {busy()}")
        if args.json:
            doc = {
                "header": lines,
                "options": vars(args),
                "rows": [dataclasses.asdict(row) for row in rows],
            }
            pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: servers stopped, temporary files removed", file=sys.stderr)
        sys.exit(130)
