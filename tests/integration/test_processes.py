"""``castore serve --processes N``: forked server processes on one port, supervised.

Real server processes on loopback (:class:`tests.integration.test_server.Server`).
The oracles: counts in the store (every acknowledged increment is one
version, none lost or doubled, whichever process answered), the access log's
process ids (several answered, all children of the server), the
summed ``/metrics``, and the processes themselves (replaced, stopped, gone).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.helpers import CASTORE_PATH
from tests.integration.test_server import Server, base_env, sigterm_during_a_request

pytestmark = pytest.mark.integration

GONE_TIMEOUT = 10.0


@pytest.fixture
def start(tmp_path: pathlib.Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    (tmp_path / "tmp").mkdir()

    def make(*args: str) -> Server:
        where = tmp_path / f"server{len(servers)}"
        env = base_env(tmp_path, TMPDIR=str(tmp_path / "tmp"))  # where the metrics are counted
        server = Server(where, str(tmp_path / "store"), *args, env=env)
        servers.append(server)
        server.wait_healthy()
        return server

    yield make
    for server in servers:
        server.stop()


def events(server: Server, name: str) -> list[dict[str, object]]:
    """The server's stderr lines of event ``name`` (checking that every line is JSON)."""
    lines = server.stderr_path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == name]


def children_of(server: Server) -> set[int]:
    """The pids of the server processes running now (started, not exited: the stderr events)."""
    started = {int(str(e["pid"])) for e in events(server, "process-started")}
    return started - {int(str(e["pid"])) for e in events(server, "process-exited")}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = GONE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def parent_of(pid: int) -> int:
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def incr(url: str, count: int, key: str = "c") -> None:
    """``count`` increments, a new connection every 5 (so they spread over the processes)."""
    for start in range(0, count, 5):
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(min(5, count - start)):
                answer = client.post("/v1/incr", content=json.dumps({"key": key, "dag": "d"}))
                assert answer.status_code == 200, answer.text


def test_processes_share_the_port_and_lose_no_increment(start):
    server = start("--processes", "3")
    children = children_of(server)
    assert len(children) == 3
    assert {parent_of(pid) for pid in children} == {server.proc.pid}
    threads = [threading.Thread(target=incr, args=(server.url, 30)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        got = client.post("/v1/get", content=b'{"key":"c","dag":"d"}').json()
        history = client.post("/v1/history", content=b'{"key":"c","dag":"d","limit":1000}')
    assert (got["version"], got["value"]) == (180, 180)
    assert [e["version"] for e in history.json()["entries"]] == list(range(180, 0, -1))
    answered = {line["pid"] for line in server.log_lines() if line["path"] == "/v1/incr"}
    assert len(answered) >= 2  # several processes answered,
    assert answered <= children  # all of them this server's
    for _ in range(6):  # each a new connection: any process answers with every one's counts
        text = httpx.get(f"{server.url}/metrics").text
        assert 'castore_requests_total{operation="incr",status="200"} 180.0' in text
        assert 'castore_request_seconds_count{operation="incr"} 180.0' in text


def test_a_killed_process_is_replaced_and_sigterm_stops_every_one(start):
    server = start("--processes", "2")
    victim, survivor = sorted(children_of(server))
    os.kill(victim, signal.SIGKILL)
    others: list[int] = []

    def replaced() -> bool:  # one reading of the children: the new one is in it
        now = children_of(server)
        others[:] = sorted(now - {survivor, victim})
        return len(now) == 2 and survivor in now and len(others) == 1

    wait_for(replaced, "a new one")
    second = others[0]
    os.kill(second, signal.SIGRTMIN + 6)  # a signal without a name
    wait_for(lambda: len(children_of(server)) == 2 and second not in children_of(server), "another")
    exited = [(e["pid"], e["status"]) for e in events(server, "process-exited")]
    named = f"killed by signal {signal.SIGRTMIN + 6}"
    assert exited == [(victim, "killed by SIGKILL"), (second, named)]
    incr(server.url, 20)
    children = children_of(server)
    assert server.stop() == 0
    assert not any(map(running, children))
    statuses = {e["pid"]: e["status"] for e in events(server, "process-exited")}
    assert {pid: statuses[pid] for pid in children} == dict.fromkeys(children, "exit 0")
    assert survivor in children


def metrics_dirs(tmp_path: pathlib.Path) -> list[str]:
    """The metrics directories of the servers started by ``start`` (in their ``TMPDIR``)."""
    return sorted(p.name for p in (tmp_path / "tmp").glob("castore-metrics-*"))


def test_children_stop_when_the_parent_is_killed(start, tmp_path):
    server = start("--processes", "2")
    children = children_of(server)
    assert len(metrics_dirs(tmp_path)) == 1
    server.proc.kill()
    server.proc.wait(10)
    wait_for(lambda: not any(map(running, children)), "the orphaned children to stop")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=5)
    assert metrics_dirs(tmp_path) == []  # the last children removed it


def test_a_stopped_server_leaves_no_metrics_directory(start, tmp_path):
    server = start("--processes", "2")
    assert len(metrics_dirs(tmp_path)) == 1
    assert server.stop() == 0
    assert metrics_dirs(tmp_path) == []


def test_sigterm_lets_a_child_finish_the_request_in_flight(start, tmp_path):
    server = start("--processes", "2")
    status, answer = sigterm_during_a_request(server)
    assert status == 200, answer
    assert server.stop() == 0
    argv = [sys.executable, "-m", "castore", "--dir", str(tmp_path / "store"), "--dag", "d"]
    got = subprocess.run(
        [*argv, "get", "late"],
        env=base_env(tmp_path),
        capture_output=True,
        check=True,
    )
    assert json.loads(got.stdout)["value"] == {"in": "flight"}


def test_children_that_keep_failing_stop_the_server(tmp_path):
    """A child that exits within a second of its start is replaced, up to 5 in a row: exit 1."""
    script = textwrap.dedent(
        """
        import socket, sys
        from castore.server.prefork import Supervisor
        sockets = [socket.socket(), socket.socket()]
        sys.exit(Supervisor(sockets, lambda sock: 3, stop_timeout=1).run())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**base_env(tmp_path), "PYTHONPATH": CASTORE_PATH},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    exits = [line for line in lines if line["event"] == "process-exited"]
    assert [line["status"] for line in exits] == ["exit 3"] * len(exits)
    assert 5 <= len(exits) <= 6  # the fifth fast failure stops the other (it may exit first)
    stops = [line["reason"] for line in lines if line["event"] == "stopping"]
    assert stops == ["5 processes in a row exited within a second"]


@pytest.mark.parametrize("count", ["0", "-3", "65"])
def test_processes_must_be_1_to_64(tmp_path, count):
    argv = [sys.executable, "-m", "castore", "--dir", str(tmp_path / "s"), "serve"]
    done = subprocess.run(
        [*argv, "--processes", count],
        env=base_env(tmp_path),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"castore: --processes {count}: give 1 to 64\n".encode()
    assert not (tmp_path / "s").exists()


def test_a_stop_right_after_the_start_is_clean(tmp_path):
    """SIGTERM as soon as the children exist (before their servers run): each exits 0."""
    for attempt in range(3):
        where = tmp_path / f"server{attempt}"
        server = Server(where, str(tmp_path / "store"), "--processes", "2", env=base_env(tmp_path))
        wait_for(lambda: len(events(server, "process-started")) == 2, "two processes")  # noqa: B023
        code = server.stop()
        said = server.stderr_path.read_text()  # what went wrong, if anything (seen once: exit 1)
        assert code == 0, said
        statuses = [e["status"] for e in events(server, "process-exited")]
        assert statuses == ["exit 0", "exit 0"], said


def test_a_port_in_use_is_refused_not_shared(start, tmp_path):
    """A second server on the port of one with --processes exits 1; the first keeps it alone."""
    server = start("--processes", "2")
    argv = [sys.executable, "-m", "castore", "--dir", str(tmp_path / "other"), "serve"]
    argv += ["--listen", f"127.0.0.1:{server.port}", "--processes", "2"]
    done = subprocess.run(
        argv, env=base_env(tmp_path), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert b"Address already in use" in done.stderr
    assert not (tmp_path / "other").exists()
