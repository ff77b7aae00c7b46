from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from types import EllipsisType
from typing import IO, TYPE_CHECKING, Any, Final, NamedTuple, cast

import castore
from castore.file.frames import Frame, scan_frames
from castore.file.records import KIND_BLOB, KIND_ENTRY, decode_blob, decode_entry
from castore.records import Entry

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


class Cli:
    """Runs castore's command line in a subprocess, isolated from the host.

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
        return subprocess.run(
            self.argv(*args),
            input=feed,
            stdin=source,
            capture_output=True,
            env={**self.env, **(env or {})},
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
        """Run ``castore --dir STORE [--dag DAG] ARGS``; ``kw`` as for :meth:`raw`."""
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


def assert_modes_below(root: str | os.PathLike[str], file_mode: int, dir_mode: int) -> None:
    """Every path below ``root`` is a directory of ``dir_mode`` or a file of ``file_mode``."""
    for rel, mode in paths_below(root).items():
        assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), rel
        want = dir_mode if stat.S_ISDIR(mode) else file_mode
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
