from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.process import BaseProcess
from types import EllipsisType
from typing import IO, TYPE_CHECKING, Any, Final, NamedTuple, TextIO, cast

import castore
from castore.file.frames import Frame, scan_frames
from castore.file.records import KIND_BLOB, KIND_ENTRY, decode_blob, decode_entry
from castore.records import Entry
from tests import forkedcli as forked_cli

if TYPE_CHECKING:
    from castore import Store
    from castore.file.backend import FileBackend

JOIN_TIMEOUT_SECONDS = 120.0
CLI_TIMEOUT_SECONDS: Final = 60.0
# The castore under test, for subprocesses: the one this process imported.
CASTORE_PATH: Final = str(pathlib.Path(castore.__file__).resolve().parents[1])
# Environment variables castore reads (docs/CLI.md): no test sees the caller's values.
CASTORE_ENV: Final = (
    "DAG_NAME",
    "DAG_RUN_ID",
    "DAG_RUN_STEP_NAME",
    "DAG_RUN_ATTEMPT_ID",
    "CASTORE_ACTOR",
    "CASTORE_ROOT_DAG",
    "CASTORE_DIR",
    "CASTORE_FAILPOINTS",
)


# -- the command line ---------------------------------------------------------------------

Arg = str | bytes | os.PathLike[str]


WHOLE_STORE: Final = frozenset({"audit", "export", "compact"})  # --dag narrows them


class Cli:
    """Runs castore's command line in a process of its own, isolated from the host.

    A forked process of the CLI fork server (:mod:`tests.forkedcli`) where nothing
    of the start-up is under test, else (or with ``CASTORE_TEST_REAL_CLI=1``) a
    real ``python`` subprocess.

    The environment holds only ``PATH``, ``HOME`` (``cwd/home``), ``PYTHONPATH``
    (the castore under test) and ``LC_ALL``; :meth:`run` adds the global options
    ``--dir`` (``location``) and ``--dag``. ``entry`` is what runs after the
    interpreter (``-m castore``, or ``-c`` and a script).
    """

    def __init__(
        self,
        cwd: pathlib.Path,
        location: str | os.PathLike[str] | None = None,
        *,
        dag: str | None = "d",
        entry: Sequence[str] = ("-m", "castore"),
        timeout: float = CLI_TIMEOUT_SECONDS,
    ) -> None:
        self.cwd = cwd
        self.dir = location
        self.dag = dag
        self.entry = list(entry)
        self.timeout = timeout
        self.home = cwd / "home"
        self.home.mkdir(exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "PYTHONPATH": CASTORE_PATH,
            "LC_ALL": "C.UTF-8",
        }

    def argv(self, *args: Arg) -> list[Arg]:
        """The command line of ``castore ARGS`` (no global options added)."""
        return [sys.executable, *self.entry, *args]

    def options(self, store: Arg | None = None, dag: str | EllipsisType | None = ...) -> list[Arg]:
        """``--dir`` (``store``, else this location) and ``--dag`` (``dag``; ``...``: this one)."""
        where = store if store is not None else self.dir
        assert where is not None, "no store location: give one, or use raw()"
        head: list[Arg] = ["--dir", where]
        name = self.dag if dag is ... else dag
        if name is not None:
            head += ["--dag", name]
        return head

    def raw(
        self,
        *args: Arg,
        stdin: bytes | IO[bytes] | int | None = b"",
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``castore ARGS`` as given; ``stdin`` is its input bytes, or a file for it."""
        feed, source = (stdin, None) if isinstance(stdin, bytes) else (None, stdin)
        environment = {**self.env, **(env or {})}
        if self.entry == ["-m", "castore"] and forked_cli.serves(environment, source):
            return forked_cli.run(self.argv(*args), environment, self.cwd, feed, self.timeout)
        return subprocess.run(
            self.argv(*args),
            input=feed,
            stdin=source,
            capture_output=True,
            env=environment,
            cwd=self.cwd,
            timeout=self.timeout,
            check=False,
        )

    def run(
        self,
        *args: Arg,
        store: Arg | None = None,
        dag: str | EllipsisType | None = ...,
        **kw: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``castore --dir STORE [--dag DAG] ARGS``; ``kw`` as for :meth:`raw`.

        The whole-store commands (:data:`WHOLE_STORE`) get no ``--dag`` unless
        ``dag`` is given: a DAG named on their command line narrows them to its
        namespace (docs/CLI.md, "audit").
        """
        if dag is ... and args and args[0] in WHOLE_STORE:
            dag = None
        return self.raw(*self.options(store, dag), *args, **kw)

    def ok(self, *args: Arg, **kw: Any) -> dict[str, Any]:
        """Run a command that must succeed with one JSON line; that line, parsed."""
        return json_line(self.run(*args, **kw))

    def line(self, *args: Arg, **kw: Any) -> str:
        """Run a command that must succeed with one line; that line."""
        lines = self.lines(*args, **kw)
        assert len(lines) == 1, lines
        return lines[0]

    def lines(self, *args: Arg, **kw: Any) -> list[str]:
        """Run a command that must succeed, silent on stderr; its output lines."""
        out = self.raw_ok(*args, **kw).decode("utf-8")
        assert out == "" or out.endswith("\n")
        return out.splitlines()

    def raw_ok(self, *args: Arg, **kw: Any) -> bytes:
        """Run a command that must succeed, silent on stderr; its output bytes."""
        proc = self.run(*args, **kw)
        assert proc.returncode == 0, (proc.args, proc.returncode, proc.stderr)
        assert proc.stderr == b"", proc.stderr  # not a terminal: no progress bar, no warning
        return proc.stdout

    def fail(self, code: int, *args: Arg, **kw: Any) -> str:
        """Run a command that must fail with exit ``code`` and one error line; its message."""
        return one_line_error(self.run(*args, **kw), code)


def json_line(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """Assert a CLI success: exit 0, nothing on stderr, one JSON line; that line, parsed."""
    assert proc.returncode == 0, (proc.args, proc.returncode, proc.stderr)
    assert proc.stderr == b"", proc.stderr
    assert proc.stdout.endswith(b"\n"), proc.stdout
    assert proc.stdout.count(b"\n") == 1, proc.stdout
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def one_line_error(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    """Assert a CLI failure: exit ``code``, empty stdout, one ``castore: ...`` stderr line."""
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == code, (proc.args, proc.returncode, err, proc.stdout)
    assert proc.stdout == b""
    assert "Traceback" not in err
    assert err.startswith("castore: ")
    assert err.endswith("\n")
    assert err.count("\n") == 1
    return err[len("castore: ") : -1]


def file_id(name: str) -> str:
    # docs/FORMAT.md §1: file names are the hex sha256 of the name's UTF-8.
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def ns_dir(root: str | os.PathLike[str], scope: str, namespace: str) -> str:
    return os.path.join(os.fspath(root), "refs", scope, file_id(namespace))


def log_path(root: str | os.PathLike[str], scope: str, namespace: str, key: str) -> str:
    return os.path.join(ns_dir(root, scope, namespace), file_id(key) + ".log")


def removed_beside_its_index(root: str | os.PathLike[str]) -> tuple[str, pathlib.Path, bytes]:
    """Key ``a`` (versions 1-2, deleted at 3) compacted away, its emptied log kept by gc.

    Returns the log's path, its version index's path and the index's bytes from
    before the removal (records of versions 1 to 3), for a test to put back.
    """
    store = castore.Store(root, dag="d")
    store.set("a", 1)
    store.set("a", 2)
    store.set("b", 1)  # b's value is a's first: gc keeps a's emptied log
    store.delete("a")
    path = log_path(root, "dag", "d", "a")
    vix = pathlib.Path(path[: -len(".log")] + ".vix")
    assert store.get("a", version=1).value == 1  # the index records versions 1 to 3
    older = vix.read_bytes()
    time.sleep(0.02)
    assert store.compact(keep_within_seconds=0.01, prefix="a").keys_removed == 1
    store.close()
    return path, vix, older


def opened_at(store: Store) -> str:
    """The location ``store`` was opened with, credentials kept (``Store.root`` shows none).

    For a fresh handle on the same store: ``Store(opened_at(store))``.
    """
    return store._location


def file_backend(store: Store) -> FileBackend:
    """The file backend behind ``store``, for tests of the file format and its internals."""
    return cast("FileBackend", store.backend)


def ref_log_path(store: Store, key: str, scope: str = "dag", namespace: str | None = None) -> str:
    """The ref log file of ``key`` in ``store`` (a file store), resolved as ``store.ref`` does."""
    return file_backend(store).log_path(store.ref(key, scope, namespace))


def keys_path(root: str | os.PathLike[str], scope: str, namespace: str) -> str:
    return os.path.join(ns_dir(root, scope, namespace), "KEYS")


def tree(root: str | os.PathLike[str]) -> list[str]:
    out: list[str] = []
    for base, _dirs, files in os.walk(root):
        out.extend(os.path.relpath(os.path.join(base, name), root) for name in files)
    return sorted(out)


def paths_below(root: str | os.PathLike[str]) -> dict[str, int]:
    """Every path below ``root``, directories included: path relative to ``root`` -> lstat mode."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            out[os.path.relpath(path, root)] = os.lstat(path).st_mode
    return out


MARKED_NAMES = (".log", "KEYS", ".idx")  # files created with the namesync mark


def assert_modes_below(root: str | os.PathLike[str], file_mode: int, dir_mode: int) -> None:
    """Every path below ``root`` is a directory of ``dir_mode`` or a file of ``file_mode``.

    A log, ``KEYS`` or blob index shard may also carry the marks of a file whose name or
    data is not known durable (``castore.file.namesync``: a store written with
    ``durable=False``).
    """
    for rel, mode in paths_below(root).items():
        assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), rel
        want = dir_mode if stat.S_ISDIR(mode) else file_mode
        if stat.S_ISREG(mode) and rel.endswith(MARKED_NAMES) and "quarantine" not in rel:
            marks = stat.S_IXUSR | stat.S_IXGRP  # the name's and the data's
            assert stat.S_IMODE(mode) & ~marks == want, (rel, oct(mode))
        else:
            assert stat.S_IMODE(mode) == want, (rel, oct(mode))


def assert_modes(root: str | os.PathLike[str], file_mode: int, dir_mode: int) -> None:
    """:func:`assert_modes_below`, of a store holding every kind of file; the root too."""
    found = paths_below(root)
    kinds = {"quarantine", "torn", "index", "gc.lock", "FORMAT", "GRAVES", "KEYS"}
    assert kinds <= {part for rel in found for part in rel.split("/")}, sorted(found)
    assert any(rel.endswith(".vix") for rel in found), sorted(found)
    assert any(rel.startswith("quarantine/2") for rel in found), sorted(found)
    assert stat.S_IMODE(os.stat(root).st_mode) == dir_mode
    assert_modes_below(root, file_mode, dir_mode)


def snapshot(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file below a store directory: its path relative to ``root`` -> its bytes."""
    out = {}
    for rel in tree(root):
        with open(os.path.join(root, rel), "rb") as fh:
            out[rel] = fh.read()
    return out


def frames_of(path: str | os.PathLike[str]) -> tuple[list[Frame], int]:
    with open(path, "rb") as fh:
        buf = fh.read()
    return list(scan_frames(buf)), len(buf)


def assert_clean_log(path: str | os.PathLike[str]) -> list[Frame]:
    """The log is a gapless chain of valid frames from byte 0 to its end."""
    frames, size = frames_of(path)
    pos = 0
    for frame in frames:
        assert frame.start == pos, f"{path}: gap or garbage at {pos}..{frame.start}"
        pos = frame.end
    assert pos == size, f"{path}: {size - pos} bytes of garbage after the last frame at {pos}"
    return frames


class Version(NamedTuple):
    entry: Entry
    value: bytes | None  # normalized JSON of a set, None for a tombstone


def read_versions(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> list[Version]:
    """Every entry of a ref log in order, with its blob read through ``Entry.blob``."""
    frames, _size = frames_of(path)
    by_start = {frame.start: frame for frame in frames}
    out = []
    for frame in frames:
        if frame.kind != KIND_ENTRY:
            continue
        entry = decode_entry(frame.payload)
        value = None
        if entry.live:
            loc = entry.blob
            assert loc is not None, f"{path}: version {entry.version} has no blob location"
            if loc.log:
                with open(os.path.join(os.fspath(root), "refs", loc.log), "rb") as fh:
                    other = {f.start: f for f in scan_frames(fh.read())}
                blob = other.get(loc.offset)
            else:
                blob = by_start.get(loc.offset)
            assert blob is not None, f"{path}: version {entry.version}: no frame at {loc}"
            assert blob.kind == KIND_BLOB
            assert blob.end - blob.start == loc.length
            value = decode_blob(blob.payload, entry.hash)
        out.append(Version(entry, value))
    return out


def corrupt(path: str | os.PathLike[str], offset: int, xor: int = 0x01) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ xor]))


@contextlib.contextmanager
def reap_processes(timeout: float = JOIN_TIMEOUT_SECONDS) -> Iterator[list[BaseProcess]]:
    """Yield a list to put started processes in; on exit join each, killing stragglers."""
    procs: list[BaseProcess] = []
    failed = True
    try:
        yield procs
        failed = False
    finally:
        for proc in procs:
            if proc.pid is None:
                continue
            proc.join(1.0 if failed else timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# -- a castore server in the test process (the remote store backends) ---------------------

REMOTE_PORTS: Final = 64  # remote stores open at once (one test holds 50 fresh stores)
_SERVER_START_SECONDS: Final = 30.0
_NO_STORE: Final = (
    b'{"error":{"code":"store_unavailable","message":"no store is served on this port now"}}'
)


async def _answer_lifespan(receive: Any, send: Any) -> None:
    """The dispatcher's own lifespan: nothing to start or stop (the stores are per test)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class LoopbackServer:
    """A real castore server in a thread of the test process: uvicorn, Starlette, the app.

    One ``uvicorn.Server`` runs for the whole session in a daemon thread, on
    :data:`REMOTE_PORTS` free ports of 127.0.0.1 (a store's ``http://`` location
    has no path, so each store served at once needs a port of its own). Its ASGI
    app is a dispatcher: a request goes to the app :meth:`mount` put on the port
    it came in on (``castore.server.app.create_app`` over one test's store), or
    answers 503 when none is. The dispatcher answers lifespan events itself and
    never forwards them: a mounted app's lifespan never runs, so its store is
    closed by whoever mounted it, after :meth:`unmount`. Ports are reused
    least recently first, so a late request of a finished test finds no store
    rather than the next test's.
    """

    def __init__(self) -> None:
        import socket
        import time

        import uvicorn

        self._sockets = []
        for _ in range(REMOTE_PORTS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self._sockets.append(sock)
        self._free = [sock.getsockname()[1] for sock in self._sockets]
        self._apps: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.log: TextIO = open(os.devnull, "w")  # noqa: SIM115  # the apps' access log
        config = uvicorn.Config(  # log_config None: the process's logging is left as it is
            self._dispatch, interface="asgi3", lifespan="on", log_config=None, ws="none"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": self._sockets},
            name="castore-test-server",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + _SERVER_START_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process castore server did not start")
            time.sleep(0.005)

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _answer_lifespan(receive, send)
            return
        app = self._apps.get(scope["server"][1])
        if app is not None:
            await app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _NO_STORE})

    def mount(self, app: Any) -> str:
        """Serve ``app`` on a port of its own until :meth:`unmount`; its ``http://`` URL."""
        with self._lock:
            if not self._free:
                raise RuntimeError(f"more than {REMOTE_PORTS} remote stores open at once")
            port = self._free.pop(0)
            self._apps[port] = app
        return f"http://127.0.0.1:{port}"

    def unmount(self, url: str) -> None:
        """Stop serving the app of ``url`` (the port is reused last)."""
        port = int(url.rsplit(":", 1)[1])
        with self._lock:
            del self._apps[port]
            self._free.append(port)

    def stop(self) -> None:
        """Stop the server (requests in flight finish) and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(_SERVER_START_SECONDS)
        self.log.close()


_LOOPBACK: list[LoopbackServer] = []  # the session's server, started by the first remote store
UNDERLYING: dict[str, str] = {}  # a remote store's URL -> the location of the store it serves


def loopback_server() -> LoopbackServer:
    """The session's in-process castore server, started on first use."""
    if not _LOOPBACK:
        _LOOPBACK.append(LoopbackServer())
    return _LOOPBACK[0]


def stop_loopback_server() -> None:
    """Stop the session's server if it was started."""
    while _LOOPBACK:
        _LOOPBACK.pop().stop()


@contextlib.contextmanager
def served_location(inner: contextlib.AbstractContextManager[str]) -> Iterator[str]:
    """A store served by :func:`loopback_server` over the fresh location ``inner`` opens.

    Yields its ``http://127.0.0.1:PORT`` URL; afterwards the app is unmounted,
    its store closed, then the underlying location dropped.
    """
    from castore import Store
    from castore.server.app import create_app

    server = loopback_server()
    with inner as location:
        store = Store(location)
        try:
            url = server.mount(create_app(store, access_log=server.log))
            UNDERLYING[url] = location
            try:
                yield url
            finally:
                server.unmount(url)
                del UNDERLYING[url]
        finally:
            store.close()


def underlying(location: str) -> str:
    """The location of the store behind ``location``: itself unless a remote test store."""
    return UNDERLYING.get(location, location)


def is_remote_location(location: str) -> bool:
    """True for a store served by the in-process server (an ``http://`` location)."""
    return location in UNDERLYING


def read_response(conn: socket.socket) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 response (Content-Length, or read to the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "-1"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), rest


def key_answers(root: pathlib.Path, key: str, dag: str) -> dict[str, Any]:
    """What the library answers for ``key`` of ``dag``: each read, or the error it raised.

    ``get``, ``get v1`` (version 1), ``history`` and ``export`` (of the
    namespace): the oracle of the lost-log tests, compared with an undamaged copy.
    """
    from castore.transfer import export_lines

    store = castore.Store(root, dag=dag)
    out: dict[str, Any] = {}
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: store.get(key),
        "get v1": lambda: store.get(key, version=1),
        "history": lambda: store.history(key),
        "export": lambda: list(export_lines(store, namespace=dag)),
    }
    for name, call in calls.items():
        try:
            out[name] = call()
        except (castore.CorruptionError, castore.NotFoundError) as exc:
            out[name] = type(exc).__name__
    store.close()
    return out


def run_threads_for(threads: list[threading.Thread], stop: threading.Event, seconds: float) -> None:
    """Start ``threads``, let them run ``seconds`` (or until ``stop`` is set), stop, join."""
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()


def import_starting_at(
    root: str | os.PathLike[str], source_root: str | os.PathLike[str], first: int, count: int
) -> None:
    """Import into ``root`` key ``dag/d/k`` with versions ``first`` .. ``first + count - 1``.

    Written at 1 .. ``count`` in a store at ``source_root`` (values ``{"n": 0}`` ..),
    exported, and its version numbers raised: a key whose log starts far above 1.
    """
    from castore.transfer import export_lines, import_lines

    source = castore.Store(source_root, dag="d")
    for n in range(count):
        source.set("k", {"n": n})
    lines = []
    for line in export_lines(source, scope="dag", namespace="d"):
        record = json.loads(line)
        old = f'"version":{record.get("version")},'.encode()
        new = f'"version":{first + record.get("version", 1) - 1},'.encode()
        lines.append(line.replace(old, new, 1) if "key" in record else line)
    source.close()
    import_lines(castore.Store(root, dag="d"), lambda: lines)


def twin_with_six_versions(
    twin: pathlib.Path, root: pathlib.Path
) -> tuple[pathlib.Path, dict[int, Frame]]:
    """Key ``dag/d/k`` at versions 1-6 (indexed) in ``twin``, copied to ``root``.

    Returns the copy's log and its ``E`` frames by version: ``twin`` stays the undamaged
    oracle of what is done to the copy.
    """
    import shutil

    store = castore.Store(twin, dag="d")
    for v in range(1, 7):
        store.set("k", {"v": v})
    assert [e.version for e in store.history("k").entries] == [6, 5, 4, 3, 2, 1]  # indexed
    store.close()
    shutil.copytree(twin, root)
    log = pathlib.Path(log_path(root, "dag", "d", "k"))
    frames = scan_frames(log.read_bytes())
    return log, {decode_entry(f.payload).version: f for f in frames if f.kind == KIND_ENTRY}
