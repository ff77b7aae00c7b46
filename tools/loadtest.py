"""A bounded load test of a running ``castore serve``: N clients x M operations, then stop.

Run from the checkout root::

    python3 tools/loadtest.py --url http://127.0.0.1:7070 --clients 8 --ops 500 --mix get
    python3 tools/loadtest.py --start --clients 8 --ops 200 --mix mix   # its own server
    python3 tools/loadtest.py --url URL --token-file TOKEN --mix set --keys 16 --value-size 1000
    python3 tools/loadtest.py --start --clients 8 --ops 1500 --mix set --py-spy /tmp/set.txt

Each of ``--clients`` clients keeps one keep-alive HTTP/1.1 connection and sends
``--ops`` requests, one at a time: ``get`` (``POST /v1/get``), ``set`` (``POST
/v1/set``, durable unless the server runs with ``--no-sync``) or ``mix`` (each
request a get or a set with probability 1/2), on keys ``k000000`` ... spread
uniformly at random over ``--keys`` keys of the DAG namespace ``--dag`` (default
``loadtest``). A set writes a new JSON object of about ``--value-size`` bytes
(default 100). Before the clock starts, every key is written once (so gets find
a value and no set pays for a key's first write; ``--no-prepare`` skips it) and
every connection is opened. It then prints the throughput (successful requests
per second of wall time), p50/p99/max latency of the successful requests, and
the errors counted by ``STATUS CODE`` (``200 not_found`` for a get that found
nothing, ``conn ConnectionResetError`` for a broken connection, which is then
reopened). Nothing runs longer than ``--timeout`` seconds (default 300): clients
stop sending when it passes, and each request has a 30 s socket timeout.

``--engine asyncio`` (default) runs the clients as coroutines on one event loop,
each with a raw keep-alive connection (70-145 µs of client CPU per request at
8-32 clients on the 2-core VM); ``--engine threads`` runs each in a thread with
its own ``http.client.HTTPConnection`` (140-190 µs, a GIL convoy at 32 clients).
``tools/bench_server.py`` uses the same code against etcd (docs/PERFORMANCE.md,
"The server against etcd").

``--start`` starts a server of its own (``sys.executable -m castore --dir TMP/store
serve --listen 127.0.0.1:0 --processes N``, ``--processes`` 1 unless given, with
``--token-file`` when given, its access log in ``TMP``), runs, then stops it
(SIGTERM, wait) and removes ``TMP``. The castore it runs is the one
``sys.executable`` imports (``PYTHONPATH=DIR`` to run another).
With ``--start``, ``--py-spy FILE`` records the server with ``py-spy`` while the
load runs (samples of the thread holding the GIL, raw collapsed stacks, the
input of a flame graph) and prints where they fall: the store call, the hand-off
to worker threads, self time by module (``uvicorn``, ``h11``, ``starlette``, ...).

Importable, for tests and other tools::

    from tools.loadtest import main, run
    result = main(["--url", url, "--clients", "2", "--ops", "10"])   # prints, returns
    result = run(url, clients=2, ops=10, mix="get")                  # quiet
    result.throughput, result.p50_ms, result.p99_ms, result.errors

The exit status is 0 when every request succeeded, 1 when some failed, 2 on bad
options. This is a measurement, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

MIXES: Final = ("get", "set", "mix")
ENGINES: Final = ("threads", "asyncio")
DEFAULT_DAG: Final = "loadtest"
SOCKET_TIMEOUT_SECONDS: Final = 30.0
START_TIMEOUT_SECONDS: Final = 60.0
STOP_TIMEOUT_SECONDS: Final = 60.0
RUN_TIMEOUT_SECONDS: Final = 300.0

Op = Literal["get", "set"]


# -- what a request is, per kind of server ---------------------------------------------------


class Protocol(NamedTuple):
    """How one kind of server is asked: the request of an operation, and its judge.

    Attributes:
        name: shown in reports.
        request: ``(op, key index, value bytes or b"") -> (path, body)``.
        verdict: ``(op, status, body) -> ""`` when the answer is a success, else
            the error's label (``"404 not_found"``...).
        headers: extra request headers (e.g. the bearer token).
    """

    name: str
    request: Callable[[Op, int, bytes], tuple[str, bytes]]
    verdict: Callable[[Op, int, bytes], str]
    headers: tuple[tuple[str, str], ...] = ()


def key_name(index: int) -> str:
    """The name of key ``index``: ``k000042``."""
    return f"k{index:06d}"


def make_value(size: int, client: int, seq: int) -> bytes:
    """A JSON object of about ``size`` bytes (at least its fields), new for each ``seq``."""
    head = f'{{"client":{client},"seq":{seq},"pad":"'
    pad = max(0, size - len(head) - 2)
    return (head + "x" * pad + '"}').encode("ascii")


def error_label(status: int, body: bytes) -> str:
    """``"STATUS CODE"`` of an error answer: castore's ``error.code``, else a ``code`` member."""
    code = ""
    with contextlib.suppress(ValueError):
        doc = json.loads(body)
        if isinstance(doc, dict):
            err = doc.get("error")
            if isinstance(err, dict) and "code" in err:
                code = str(err["code"])
            elif "code" in doc:
                code = str(doc["code"])
    return f"{status} {code}".rstrip()


def castore_protocol(dag: str = DEFAULT_DAG, token: str | None = None) -> Protocol:
    """The castore API: ``POST /v1/get`` and ``/v1/set`` in the namespace of DAG ``dag``."""
    dag_json = json.dumps(dag)

    def request(op: Op, key: int, value: bytes) -> tuple[str, bytes]:
        head = f'{{"dag":{dag_json},"key":"{key_name(key)}"'.encode()
        if op == "get":
            return "/v1/get", head + b"}"
        return "/v1/set", head + b',"value":' + value + b"}"

    def verdict(op: Op, status: int, body: bytes) -> str:
        if status != 200:
            return error_label(status, body)
        if op == "get" and b'"found":true' not in body:
            return "200 not_found"
        return ""

    headers = (("Authorization", f"Bearer {token}"),) if token is not None else ()
    return Protocol("castore", request, verdict, headers)


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """What one load test measured.

    Attributes:
        ok: requests that succeeded.
        errors: failed requests by label (``"409 conflict"``, ``"conn TimeoutError"``).
        seconds: wall time from the start signal to the last client's end.
        throughput: successful requests per second of ``seconds``.
        p50_ms, p99_ms, max_ms: latency of the successful requests (nearest rank).
        clients, ops, mix, engine: what was run (``ops`` per client).
        stopped_early: the ``timeout`` passed before every request was sent.
    """

    ok: int
    errors: dict[str, int]
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    clients: int
    ops: int
    mix: str
    engine: str
    stopped_early: bool = False
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def error_count(self) -> int:
        """How many requests failed."""
        return sum(self.errors.values())

    def summary(self) -> str:
        """The result in a few lines, as the command line prints it."""
        errors = ", ".join(f"{n} x {label}" for label, n in sorted(self.errors.items()))
        lines = [
            f"{self.clients} clients x {self.ops} ops, mix {self.mix}, engine {self.engine}: "
            f"{self.ok} ok in {self.seconds:.3f} s"
            + (" (stopped by the timeout)" if self.stopped_early else ""),
            f"throughput {self.throughput:,.0f} ops/s",
            f"latency p50 {self.p50_ms:.3f} ms, p99 {self.p99_ms:.3f} ms, max {self.max_ms:.3f} ms",
            f"errors: {errors or 'none'}",
        ]
        return "\n".join(lines)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values (0.0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-round(fraction * len(sorted_values) * 1000) // 1000))
    return sorted_values[min(len(sorted_values), rank) - 1]


class _Tally:
    """One client's counts: latencies of successes, labels of failures."""

    __slots__ = ("errors", "latencies")

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()


def _request(
    proto: Protocol, op: Op, key: int, value_size: int, number: int, seq: int
) -> tuple[str, bytes]:
    """The path and body of one request of client ``number`` (a new value for each set)."""
    value = make_value(value_size, number, seq) if op == "set" else b""
    return proto.request(op, key, value)


def _count(
    tally: _Tally, proto: Protocol, op: Op, status: int, answer: bytes, elapsed: float
) -> None:
    """Record one answer: its latency if it succeeded, else its error label."""
    label = proto.verdict(op, status, answer)
    if label:
        tally.errors[label] += 1
    else:
        tally.latencies.append(elapsed)


def _plan(mix: str, ops: int, keys: int, seed: int) -> list[tuple[Op, int]]:
    """One client's requests: (op, key index), from its own seeded generator."""
    rng = random.Random(seed)
    plan: list[tuple[Op, int]] = []
    for _ in range(ops):
        if mix == "mix":
            op: Op = "get" if rng.random() < 0.5 else "set"
        else:
            op = "get" if mix == "get" else "set"
        plan.append((op, rng.randrange(keys)))
    return plan


def _result(
    tallies: Sequence[_Tally],
    seconds: float,
    *,
    clients: int,
    ops: int,
    mix: str,
    engine: str,
    stopped: bool,
) -> LoadResult:
    latencies = sorted(x for t in tallies for x in t.latencies)
    errors: Counter[str] = Counter()
    for t in tallies:
        errors.update(t.errors)
    ms = [x * 1000.0 for x in latencies]
    return LoadResult(
        ok=len(ms),
        errors=dict(errors),
        seconds=seconds,
        throughput=len(ms) / seconds if seconds > 0 else 0.0,
        p50_ms=percentile(ms, 0.50),
        p99_ms=percentile(ms, 0.99),
        max_ms=ms[-1] if ms else 0.0,
        clients=clients,
        ops=ops,
        mix=mix,
        engine=engine,
        stopped_early=stopped,
        latencies_ms=ms,
    )


# -- the threads engine ------------------------------------------------------------------------


def _thread_client(
    host: str,
    port: int,
    proto: Protocol,
    plan: list[tuple[Op, int]],
    value_size: int,
    number: int,
    start: threading.Barrier,
    deadline: list[float],
    tally: _Tally,
) -> None:
    headers = {"Content-Type": "application/json", **dict(proto.headers)}
    conn: http.client.HTTPConnection | None = None
    try:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT_SECONDS)
            conn.connect()
        start.wait(START_TIMEOUT_SECONDS)
        clock = time.perf_counter
        for seq, (op, key) in enumerate(plan):
            if clock() > deadline[0]:
                return
            path, body = _request(proto, op, key, value_size, number, seq)
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT_SECONDS)
            began = clock()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as exc:
                tally.errors[f"conn {type(exc).__name__}"] += 1
                conn.close()
                conn = None
                continue
            _count(tally, proto, op, response.status, answer, clock() - began)
            if response.will_close:
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


def _run_threads(
    host: str,
    port: int,
    proto: Protocol,
    plans: list[list[tuple[Op, int]]],
    value_size: int,
    timeout: float,
) -> tuple[list[_Tally], float, bool]:
    tallies = [_Tally() for _ in plans]
    start = threading.Barrier(len(plans) + 1)
    deadline = [float("inf")]
    threads = [
        threading.Thread(
            target=_thread_client,
            args=(host, port, proto, plan, value_size, n, start, deadline, tallies[n]),
            name=f"loadtest-{n}",
            daemon=True,
        )
        for n, plan in enumerate(plans)
    ]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + START_TIMEOUT_SECONDS + timeout
    start.wait(START_TIMEOUT_SECONDS)
    began = time.perf_counter()
    deadline[0] = began + timeout
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    sent = sum(len(t.latencies) + sum(t.errors.values()) for t in tallies)
    return tallies, seconds, sent < sum(len(p) for p in plans)


# -- the asyncio engine ------------------------------------------------------------------------


class _Gate:
    """The start line of the asyncio clients: all connected, then all go."""

    def __init__(self, clients: int) -> None:
        self.waiting = clients
        self.all_ready = asyncio.Event()
        self.start = asyncio.Event()

    def ready(self) -> None:
        """One client is connected (or failed to): the last one opens the gate."""
        self.waiting -= 1
        if self.waiting == 0:
            self.all_ready.set()


class _BadResponseError(Exception):
    """A response that cannot be framed (no length, cut short)."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response: status, body, and whether the server closes the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or len(head) < 12:
        raise _BadResponseError("not an HTTP/1.x response")
    status = int(head[9:12])
    fields = head.lower()
    closes = b"\r\nconnection: close" in fields
    at = fields.find(b"\r\ncontent-length:")
    if at >= 0:
        end = fields.index(b"\r\n", at + 2)
        return status, await reader.readexactly(int(fields[at + 17 : end])), closes
    if b"\r\ntransfer-encoding: chunked" in fields:
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                while data != b"\r\n":  # trailers
                    data = await reader.readuntil(b"\r\n")
                return status, b"".join(chunks), closes
            chunks.append(data[:-2])
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", closes
    raise _BadResponseError("a response without a length")


async def _async_client(
    host: str,
    port: int,
    proto: Protocol,
    plan: list[tuple[Op, int]],
    value_size: int,
    number: int,
    gate: _Gate,
    deadline: list[float],
    tally: _Tally,
) -> None:
    extra = "".join(f"{k}: {v}\r\n" for k, v in proto.headers)
    prefix = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n{extra}Content-Length: "
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        try:
            with contextlib.suppress(OSError):
                conn = await asyncio.open_connection(host, port)
        finally:
            gate.ready()
        await gate.start.wait()
        clock = time.perf_counter
        for seq, (op, key) in enumerate(plan):
            if clock() > deadline[0]:
                return
            path, body = _request(proto, op, key, value_size, number, seq)
            message = f"POST {path} HTTP/1.1\r\n{prefix}{len(body)}\r\n\r\n".encode() + body
            began = clock()
            try:
                async with asyncio.timeout(SOCKET_TIMEOUT_SECONDS):
                    if conn is None:
                        conn = await asyncio.open_connection(host, port)
                        began = clock()
                    conn[1].write(message)
                    status, answer, closes = await _read_response(conn[0])
            except (OSError, TimeoutError, asyncio.IncompleteReadError, _BadResponseError) as exc:
                tally.errors[f"conn {type(exc).__name__}"] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            _count(tally, proto, op, status, answer, clock() - began)
            if closes:
                conn[1].close()
                conn = None
    finally:
        if conn is not None:
            conn[1].close()


async def _run_asyncio_main(
    host: str,
    port: int,
    proto: Protocol,
    plans: list[list[tuple[Op, int]]],
    value_size: int,
    timeout: float,
) -> tuple[list[_Tally], float, bool]:
    tallies = [_Tally() for _ in plans]
    gate = _Gate(len(plans))
    deadline = [float("inf")]
    tasks = [
        asyncio.create_task(
            _async_client(host, port, proto, plan, value_size, n, gate, deadline, tallies[n])
        )
        for n, plan in enumerate(plans)
    ]
    async with asyncio.timeout(START_TIMEOUT_SECONDS):
        await gate.all_ready.wait()
    began = time.perf_counter()
    deadline[0] = began + timeout
    gate.start.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - began
    sent = sum(len(t.latencies) + sum(t.errors.values()) for t in tallies)
    return tallies, seconds, sent < sum(len(p) for p in plans)


def _run_asyncio(
    host: str,
    port: int,
    proto: Protocol,
    plans: list[list[tuple[Op, int]]],
    value_size: int,
    timeout: float,
) -> tuple[list[_Tally], float, bool]:
    return asyncio.run(_run_asyncio_main(host, port, proto, plans, value_size, timeout))


# -- running a load test -----------------------------------------------------------------------


def split_url(url: str) -> tuple[str, int]:
    """Host and port of an ``http://HOST:PORT`` URL.

    Raises:
        ValueError: not an http URL with a host.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r}: give http://HOST:PORT (TLS is not spoken here)")
    return parts.hostname, parts.port or 80


def prepare(
    url: str, proto: Protocol, keys: int, value_size: int = 100, *, timeout: float = 300.0
) -> None:
    """Write every key once, one request at a time, on one connection (not timed).

    Raises:
        RuntimeError: a write failed.
    """
    host, port = split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT_SECONDS)
    headers = {"Content-Type": "application/json", **dict(proto.headers)}
    stop = time.monotonic() + timeout
    try:
        for key in range(keys):
            if time.monotonic() > stop:
                raise RuntimeError(f"writing {keys} keys took over {timeout:g} s")
            path, body = proto.request("set", key, make_value(value_size, -1, key))
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            answer = response.read()
            label = proto.verdict("set", response.status, answer)
            if label:
                raise RuntimeError(f"preparing key {key}: {label}: {answer[:200]!r}")
    finally:
        conn.close()


def run_load(
    url: str,
    proto: Protocol,
    *,
    clients: int = 8,
    ops: int = 100,
    mix: str = "get",
    keys: int = 100,
    value_size: int = 100,
    engine: str = "asyncio",
    timeout: float = RUN_TIMEOUT_SECONDS,
    seed: int = 1,
) -> LoadResult:
    """``clients`` concurrent clients x ``ops`` requests of ``proto`` against ``url``.

    The keys must exist already for gets to succeed (see :func:`prepare`).
    """
    if mix not in MIXES or engine not in ENGINES or clients < 1 or ops < 0 or keys < 1:
        raise ValueError(f"bad load: mix {mix}, engine {engine}, {clients} x {ops}, {keys} keys")
    host, port = split_url(url)
    plans = [_plan(mix, ops, keys, seed * 1_000_003 + n) for n in range(clients)]
    runner = _run_threads if engine == "threads" else _run_asyncio
    tallies, seconds, stopped = runner(host, port, proto, plans, value_size, timeout)
    return _result(
        tallies, seconds, clients=clients, ops=ops, mix=mix, engine=engine, stopped=stopped
    )


def read_token(path: str | None) -> str | None:
    """The token of a ``--token-file`` (trailing newline dropped), or None."""
    if path is None:
        return None
    return pathlib.Path(path).read_text(encoding="utf-8").rstrip("\r\n")


def run(
    url: str,
    *,
    clients: int = 8,
    ops: int = 100,
    mix: str = "get",
    keys: int = 100,
    value_size: int = 100,
    token: str | None = None,
    dag: str = DEFAULT_DAG,
    engine: str = "asyncio",
    do_prepare: bool = True,
    timeout: float = RUN_TIMEOUT_SECONDS,
) -> LoadResult:
    """A load test of the castore server at ``url`` (keys written first unless told not to)."""
    proto = castore_protocol(dag, token)
    if do_prepare:
        prepare(url, proto, keys, value_size, timeout=timeout)
    return run_load(
        url,
        proto,
        clients=clients,
        ops=ops,
        mix=mix,
        keys=keys,
        value_size=value_size,
        engine=engine,
        timeout=timeout,
    )


# -- a server of its own -------------------------------------------------------------------------


class Child:
    """A child process started in its own process group, with its stderr in a file."""

    def __init__(
        self,
        argv: Sequence[str],
        stderr_path: pathlib.Path,
        *,
        env: dict[str, str] | None = None,
        cwd: pathlib.Path | None = None,
    ) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.process = subprocess.Popen(  # our own argv
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def stderr_text(self) -> str:
        """What the child wrote so far."""
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL its group; its exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def wait_for_line(child: Child, needle: str, timeout: float = START_TIMEOUT_SECONDS) -> str:
    """The first line of the child's stderr that holds ``needle``.

    Raises:
        RuntimeError: the child exited, or ``timeout`` passed, first.
    """
    stop = time.monotonic() + timeout
    while True:
        for line in child.stderr_text().splitlines():
            if needle in line:
                return line
        if child.process.poll() is not None:
            raise RuntimeError(
                f"exited with {child.process.returncode} before listening:\n"
                + child.stderr_text()[-2000:]
            )
        if time.monotonic() > stop:
            raise RuntimeError(
                f"not listening after {timeout:g} s:\n" + child.stderr_text()[-2000:]
            )
        time.sleep(0.02)


def start_castore(
    directory: pathlib.Path,
    *,
    token_file: str | None = None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> tuple[Child, str]:
    """``castore serve`` on ``directory/store`` and a free loopback port: the child, its URL.

    It runs in ``directory`` (so the current directory does not shadow the
    installed castore), with ``env`` when given (e.g. ``PYTHONPATH`` naming another
    checkout). The access log goes to ``directory/access.log``, stderr to
    ``directory/serve.err``.
    """
    argv = [sys.executable, "-m", "castore", "--dir", str(directory / "store"), "serve"]
    argv += ["--listen", "127.0.0.1:0", "--access-log", str(directory / "access.log")]
    if token_file is not None:
        argv += ["--token-file", os.path.abspath(token_file)]
    child = Child([*argv, *extra], directory / "serve.err", env=env, cwd=directory)
    try:
        line = wait_for_line(child, '"event":"listening"')
        url = str(json.loads(line)["url"])
    except BaseException:
        child.stop()
        raise
    return child, url


@contextlib.contextmanager
def castore_server(
    *, token_file: str | None = None, extra: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[tuple[Child, str]]:
    """A ``castore serve`` on a temporary store for the ``with`` block; stopped, removed after."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="castore-loadtest-"))
    try:
        child, url = start_castore(directory, token_file=token_file, extra=extra, env=env)
        try:
            yield child, url
        finally:
            child.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- profiling the server it started -------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, output: str) -> Iterator[None]:
    """``py-spy record`` of process ``pid`` for the ``with`` block: GIL-holding samples, raw.

    The file holds one collapsed stack per line with its sample count (flame-graph
    input); only samples of the thread holding the GIL are kept (``--gil``), so it
    shows where the server's Python CPU time goes.

    Raises:
        RuntimeError: py-spy is not installed (``pip install py-spy``) or failed.
    """
    binary = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if binary is None:
        raise RuntimeError("--py-spy needs py-spy on PATH: pip install py-spy")
    argv = [binary, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    argv += ["--threads", "--gil", "--nonblocking", "--output", output]
    log = pathlib.Path(output + ".log")
    spy = Child(argv, log)
    time.sleep(1.0)  # attached and sampling before the load starts
    if spy.process.poll() is not None:
        raise RuntimeError(f"py-spy exited with {spy.process.returncode}: {spy.stderr_text()}")
    try:
        yield
    finally:
        if spy.process.poll() is None:
            spy.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            spy.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            spy.stop(0)
        with contextlib.suppress(OSError):
            log.unlink()


def _group(frame: str) -> str:
    """The module group of a py-spy frame ``func (path/file.py:line)``: ``castore/file``..."""
    inside = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    parts = inside.removesuffix(".py").split("/")
    if parts[0] == "castore" and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0] or "?"


#: Where a sample belongs: the innermost frame that matches one of these (first match wins).
PROFILE_GROUPS: Final = (
    ("the store call (decode to line)", ("castore/server/operations.py",)),
    ("hand-off to a worker thread", ("run_sync_in_worker_thread", "WorkerThread.run (anyio")),
    ("hand-off to a worker thread", ("_write_to_self", "_read_from_self", "call_soon_threadsafe")),
    ("uvicorn + h11: HTTP parse, send", ("uvicorn/protocols/http/", "h11/")),
    ("starlette: routing, middleware", ("starlette/",)),
    ("access log, metrics, request id", ("_Observe._write", "_Metrics.observe", "token_hex")),
    ("reading and decoding the body", ("_read_body", "_decode (")),
)


def _profile_group(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        for name, needles in PROFILE_GROUPS:
            if any(needle in frame for needle in needles):
                return name
    return "the rest: event loop, selectors, socket writes"


def profile_summary(path: str, top: int = 10) -> list[str]:
    """Where the samples of a raw py-spy file fall: by part of the server, and by module.

    Each sample goes to the innermost of its frames that matches
    :data:`PROFILE_GROUPS` (so the store call's own work is not counted in the
    middleware around it), else to the rest; "self" is the module of the
    innermost frame.
    """
    parts: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = [f for f in stack.split(";") if not f.startswith("thread (")]
            if not count.isdigit() or not frames:
                continue
            total += int(count)
            parts[_profile_group(frames)] += int(count)
            modules[_group(frames[-1])] += int(count)
    if not total:
        return [f"py-spy: no samples in {path}"]
    lines = [f"py-spy: {total} samples of the thread holding the GIL ({path})"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in parts.most_common()]
    lines.append("  self time by module:")
    lines += [f"  {n / total:6.1%}  {group}" for group, n in modules.most_common(top)]
    return lines


# -- command line --------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a number >= 1")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    p = argparse.ArgumentParser(
        description="A bounded load test of a castore server (see the module docstring)."
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the server, http://HOST:PORT")
    where.add_argument(
        "--start", action="store_true", help="start a castore serve of its own (temp store)"
    )
    p.add_argument("--token-file", help="bearer token file (also given to --start's server)")
    p.add_argument("--clients", type=_positive, default=8, help="concurrent clients (8)")
    p.add_argument("--ops", type=_positive, default=200, help="requests per client (200)")
    p.add_argument("--mix", choices=MIXES, default="get", help="get, set or mix (50/50)")
    p.add_argument("--keys", type=_positive, default=100, help="keys spread over (100)")
    p.add_argument("--value-size", type=_positive, default=100, help="bytes per value (100)")
    p.add_argument("--dag", default=DEFAULT_DAG, help="the DAG namespace (loadtest)")
    p.add_argument("--engine", choices=ENGINES, default="asyncio", help="client engine (asyncio)")
    p.add_argument("--no-prepare", action="store_true", help="do not write every key first")
    p.add_argument(
        "--timeout", type=float, default=RUN_TIMEOUT_SECONDS, help="seconds at most (300)"
    )
    p.add_argument("--py-spy", metavar="FILE", help="with --start: profile the server into FILE")
    p.add_argument("--processes", type=_positive, default=1, help="with --start: serve --processes")
    return p


def main(argv: Sequence[str] | None = None) -> LoadResult:
    """Parse ``argv``, run the load test, print its summary, return its result."""
    p = parser()
    args = p.parse_args(argv)
    if args.py_spy and not args.start:
        p.error("--py-spy needs --start (it profiles the server it starts)")
    if args.py_spy and args.processes > 1:
        p.error("--py-spy profiles one process: use it with --processes 1")
    token = read_token(args.token_file)

    def go(url: str, do_prepare: bool) -> LoadResult:
        return run(
            url,
            clients=args.clients,
            ops=args.ops,
            mix=args.mix,
            keys=args.keys,
            value_size=args.value_size,
            token=token,
            dag=args.dag,
            engine=args.engine,
            do_prepare=do_prepare,
            timeout=args.timeout,
        )

    if args.start:
        extra = ["--processes", str(args.processes)]
        with castore_server(token_file=args.token_file, extra=extra) as (child, url):
            print(f"started castore serve at {url}", flush=True)
            if args.py_spy:
                if not args.no_prepare:
                    proto = castore_protocol(args.dag, token)
                    prepare(url, proto, args.keys, args.value_size, timeout=args.timeout)
                with py_spy(child.pid, args.py_spy):
                    result = go(url, False)
            else:
                result = go(url, not args.no_prepare)
    else:
        result = go(args.url, not args.no_prepare)
    print(result.summary(), flush=True)
    if args.py_spy:
        print("\n".join(profile_summary(args.py_spy)), flush=True)
    return result


if __name__ == "__main__":
    try:
        sys.exit(1 if main().error_count else 0)
    except KeyboardInterrupt:
        sys.exit(130)
