"""The command line's standard streams as a parent may give them (docs/CLI.md, "Exit codes").

Non-blocking pipes (``O_NONBLOCK`` belongs to the open file description, which
the parent shares: castore waits instead of changing it), closed or unwritable
stderr, a stdout whose reader left or that cannot take the output, and
endless stdin. Each test runs the CLI as a real subprocess with the
descriptors made here (the fork server gives its commands pipes of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pty
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from castore import Store
from castore.cli import main
from tests.crash_worker import wait_stopped
from tests.helpers import Arg, Cli, one_line_error
from tests.unit.test_dagu import build_dagu_dir

pytestmark = pytest.mark.integration

BIG = json.dumps({"a": "x" * 500_000})  # bigger than a pipe's buffer (64 KiB)
LIMIT = 1 << 20  # a value's JSON text, read from stdin


@pytest.fixture
def cli(tmp_path: pathlib.Path) -> Cli:
    """The command line on a directory store below ``tmp_path``, ``--dag d``."""
    return Cli(tmp_path, tmp_path / "store", dag="d")


def _popen(cli: Cli, args: Sequence[Arg], **kw: Any) -> subprocess.Popen[bytes]:
    kw.setdefault("env", cli.env)
    proc: subprocess.Popen[bytes] = subprocess.Popen(cli.argv(*args), cwd=cli.cwd, **kw)
    return proc


def _fill(fd: int) -> int:
    """Write to the non-blocking ``fd`` until its pipe is full; how many bytes went in."""
    size = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            size += os.write(fd, b"x" * 4096)
    return size


def _drain(fd: int, proc: subprocess.Popen[bytes]) -> bytes:
    """Everything ``proc`` writes to the pipe read through the non-blocking ``fd``."""
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            if proc.poll() is not None:
                with contextlib.suppress(BlockingIOError):
                    while chunk := os.read(fd, 1 << 16):
                        chunks.append(chunk)
                return b"".join(chunks)
            time.sleep(0.01)
            continue
        chunks.append(chunk)
    proc.kill()
    raise TimeoutError("the command did not end")


def _through_a_full_non_blocking_pipe(cli: Cli, args: Sequence[Arg]) -> tuple[int, bytes, bytes]:
    """Run ``castore ARGS`` with stdout a full non-blocking pipe, read late and slowly.

    Returns the exit code, what it wrote after the filler, and its stderr.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    os.set_blocking(read_end, False)
    filled = _fill(write_end)
    try:
        proc = _popen(cli, args, stdout=write_end, stderr=subprocess.PIPE)
        time.sleep(1.0)  # it writes into the full pipe meanwhile
        out = _drain(read_end, proc)
        _, err = proc.communicate(timeout=60)
        assert not os.get_blocking(write_end)  # the parent's description is as it was
    finally:
        os.close(write_end)
        os.close(read_end)
    assert out[:filled] == b"x" * filled
    return proc.returncode, out[filled:], err


@pytest.mark.parametrize(
    "args",
    [
        ("get", "big"),  # the quick path
        ("get", "big", "--version", "1"),  # the library's
        ("get", "small"),
        ("export",),
        ("--help",),
        ("export", "--help"),
    ],
)
def test_a_non_blocking_stdout_gets_every_byte(cli: Cli, args: tuple[str, ...]) -> None:
    """Was: 65,536 bytes of a 500 KB value, part of an export, exit 0 (review)."""
    cli.ok("set", "big", BIG)
    cli.ok("set", "small", "1")
    argv = [*cli.options(), *args]
    code, out, err = _through_a_full_non_blocking_pipe(cli, argv)
    assert (code, err) == (0, b"")
    expected = cli.raw(*argv)
    assert expected.returncode == 0
    assert out == expected.stdout


def _slowly(pieces: Sequence[bytes], fd: int) -> None:
    for piece in pieces:
        time.sleep(0.5)  # the command has started reading, and found nothing
        os.write(fd, piece)


def _fed(
    cli: Cli, args: Sequence[Arg], feed: Callable[[int], None], *, non_blocking: bool, eof: bool
) -> subprocess.CompletedProcess[bytes]:
    """Run ``castore ARGS`` while a thread runs ``feed`` on its stdin pipe's write end.

    ``non_blocking``: the command's end of the pipe is ``O_NONBLOCK``; ``eof``: the
    feeder closes its end when done (else only after the command ended).
    """
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, not non_blocking)
    proc = _popen(
        cli, [*cli.options(), *args], stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    os.close(read_end)

    def run() -> None:
        feed(write_end)
        if eof:
            os.close(write_end)

    writer = threading.Thread(target=run)
    writer.start()
    try:
        out, err = proc.communicate(timeout=60)  # without EOF, before the fix: forever
    finally:
        if not eof:
            os.close(write_end)
        writer.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _with_non_blocking_stdin(
    cli: Cli, args: Sequence[Arg], pieces: Sequence[bytes]
) -> subprocess.CompletedProcess[bytes]:
    """Run ``castore ARGS`` reading ``pieces`` from a non-blocking pipe, a pause before each."""
    return _fed(cli, args, lambda fd: _slowly(pieces, fd), non_blocking=True, eof=True)


@pytest.mark.parametrize(
    ("args", "pieces", "value"),
    [
        (("set", "k"), (b"12", b"34"), 1234),
        (("set", "k", "-"), (b'{"a": ', b"[1, 2]}"), {"a": [1, 2]}),
        (("diff", "k"), (b"56", b"78"), 5678),
        (("patch", "k", "--merge"), (b'{"b": ', b"2}"), {"a": 0, "b": 2}),
        (("patch", "k"), (b'[{"op": "add", "path": "/c", ', b'"value": 3}]'), {"a": 0, "c": 3}),
    ],
)
def test_a_non_blocking_stdin_is_read_to_its_end(
    cli: Cli, args: tuple[str, ...], pieces: tuple[bytes, ...], value: object
) -> None:
    """Was: ``12`` stored for ``1234`` (exit 0), or a TypeError traceback (review)."""
    cli.ok("set", "k", '{"a": 0}')
    proc = _with_non_blocking_stdin(cli, args, pieces)
    assert proc.returncode == 0, proc.stderr
    assert cli.ok("get", "k")["value"] == value


def test_an_import_reads_a_non_blocking_stdin_to_its_end(cli: Cli, tmp_path: pathlib.Path) -> None:
    source = Cli(tmp_path, tmp_path / "source", dag="d")
    for n in range(3):
        source.ok("set", f"k{n}", str(n))
    dump = source.raw_ok("export")
    half = len(dump) // 2
    proc = _with_non_blocking_stdin(cli, ["import", "-"], (dump[:half], dump[half:]))
    assert proc.returncode == 0, proc.stderr
    assert cli.raw_ok("export") == dump


def _held_open(cli: Cli, args: Sequence[Arg], data: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run ``castore ARGS`` with ``data`` on stdin, the pipe left open after it (no EOF)."""
    return _fed(cli, args, lambda fd: _write_quietly(fd, data), non_blocking=False, eof=False)


def _write_quietly(fd: int, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError):
        os.write(fd, data)  # blocking: all of it, unless the reader left


@pytest.mark.parametrize("args", [("set", "k"), ("diff", "k"), ("patch", "k", "-", "--merge")])
def test_stdin_past_the_limit_is_refused_at_its_first_byte_past_it(
    cli: Cli, args: tuple[str, ...]
) -> None:
    """Was: ``castore set k < /dev/zero`` grew by about 1 GB/s until out of memory (review)."""
    cli.ok("set", "k", "{}")
    proc = _held_open(cli, args, b" " * LIMIT + b"1")
    message = one_line_error(proc, 2)
    assert message == (
        f"value too large: standard input holds more than {LIMIT} bytes, the limit of a value's"
        " JSON text (refused at its first byte past the limit)"
    )
    assert cli.ok("get", "k")["value"] == {}


def test_stdin_at_the_limit_is_read_as_before(cli: Cli) -> None:
    """What was accepted stays accepted: 1 MiB of JSON text, whitespace included."""
    cli.ok("set", "k", "0")
    written = cli.ok("set", "k", stdin=b" " * (LIMIT - 1) + b"1")
    assert written["version"] == 2
    assert cli.ok("get", "k")["value"] == 1
    with open("/dev/zero", "rb") as endless:
        message = one_line_error(cli.run("set", "k", stdin=endless), 2)
    assert message.startswith(f"value too large: standard input holds more than {LIMIT} bytes")


def _redirected(cli: Cli, redirect: str, args: Sequence[Arg]) -> subprocess.CompletedProcess[bytes]:
    """``castore ARGS`` started by ``sh`` with ``redirect`` (``2>&-``, ``2>/dev/full``)."""
    return subprocess.run(
        ["/bin/sh", "-c", f'exec "$@" {redirect}', "sh", *cli.argv(*args)],
        capture_output=True,
        env=cli.env,
        cwd=cli.cwd,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "operation"),
    [
        (("export",), None),  # its end line
        (("audit",), "set"),  # the record of the set
        (("check",), "check"),
        (("gc",), "gc"),
        (("compact", "--keep-last", "1"), "compact"),
        (("stats",), "stats"),
        (("import", "{dump}"), "import"),
    ],
)
def test_a_closed_stderr_hides_no_command(
    cli: Cli, tmp_path: pathlib.Path, args: tuple[str, ...], operation: str | None
) -> None:
    """Was: exit 1 doing nothing, ``progress()`` called ``isatty`` on None (review)."""
    cli.ok("set", "k", "1")
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(cli.raw_ok("export"))
    given = [a.format(dump=dump) for a in args]
    store = str(tmp_path / "other") if args[0] == "import" else str(cli.dir)
    proc = _redirected(cli, "2>&-", ["--dir", store, *given])
    assert proc.returncode == 0, proc
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last.get("operation") == operation
    assert operation is not None or last["end"] == "castore-export"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("get", "missing", "--required"), 4),  # the full path
        (("get", "k", "--required"), 0),
        (("set", "k", "{bad"), 2),
        (("set", "k", "2", "--expected-version", "7"), 3),  # the quick path refuses
        (("--bogus",), 2),
        (("get", "k", "--by", "2"), 2),
    ],
)
@pytest.mark.parametrize("redirect", ["2>/dev/full", "2>&-"])
def test_an_unwritable_stderr_keeps_the_exit_code(
    cli: Cli, args: tuple[str, ...], code: int, redirect: str
) -> None:
    """Was: ``_fail`` raised, and every documented exit code became 1 (review)."""
    cli.ok("set", "k", "1")
    proc = _redirected(cli, redirect, [*cli.options(), *args])
    assert proc.returncode == code, proc
    assert proc.stderr == b""


def test_a_stderr_pipe_nobody_reads_keeps_the_exit_code(cli: Cli) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to it fails: EPIPE
    try:
        proc = _popen(
            cli,
            [*cli.options(), "get", "missing", "--required"],
            stdout=subprocess.PIPE,
            stderr=write_end,
        )
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(write_end)
    assert (proc.returncode, out) == (4, b"")


def test_an_output_lost_after_a_write_says_the_write_was_made(cli: Cli) -> None:
    """Was: "cannot write the output: No space left on device": a retry counted twice."""
    cli.ok("incr", "c")
    proc = _redirected(cli, ">/dev/full", [*cli.options(), "incr", "c"])
    assert one_line_error(proc, 1) == (
        "cannot write the output: No space left on device"
        " (the command completed: what it wrote is stored)"
    )
    assert cli.ok("get", "c")["value"] == 2
    read = _redirected(cli, ">/dev/full", [*cli.options(), "get", "c"])
    assert one_line_error(read, 1) == "cannot write the output: No space left on device"


def test_an_interrupt_after_the_commit_point_says_the_write_may_be_made(cli: Cli) -> None:
    """Was: "castore: interrupted" (exit 130) for a write that was durable (review)."""
    proc = _popen(
        cli,
        [*cli.options(), "set", "k", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**cli.env, "CASTORE_FAILPOINTS": "after-append:stop"},
        # as from a terminal: a test run in the background (`bash .ci/run &`) ignores SIGINT,
        # and an ignored SIGINT is inherited; castore keeps it ignored, as it should
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert wait_stopped(proc), proc.communicate(timeout=60)
        os.kill(proc.pid, signal.SIGINT)  # pending until it runs again
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (130, b"")
    assert err == (
        b"castore: interrupted: the write may have been made (castore history KEY shows)\n"
    )
    assert cli.ok("get", "k")["value"] == 1  # it was


def test_an_interrupted_read_says_interrupted(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "history", interrupted)
    assert main(["--dir", str(tmp_path / "s"), "--dag", "d", "history", "k"]) == 130
    assert capsys.readouterr().err == "castore: interrupted\n"


@contextlib.contextmanager
def _closed_pipe() -> Iterator[int]:
    """A pipe's write end whose reader has left: every write fails (EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


def _into_a_closed_pipe(cli: Cli, args: Sequence[Arg]) -> tuple[int, bytes]:
    with _closed_pipe() as stdout:
        proc = _popen(cli, args, stdout=stdout, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_a_closed_stdout_pipe_keeps_check_failing(cli: Cli, tmp_path: pathlib.Path) -> None:
    """Was: ``castore check | …`` exited 0 on a damaged store once the reader left (review)."""
    cli.ok("set", "k", "1")
    cli.ok("set", "k", "2")
    (log,) = (tmp_path / "store").rglob("*.log")
    data = bytearray(log.read_bytes())
    data[-20] ^= 0x55  # inside the newest entry
    log.write_bytes(bytes(data))
    code, err = _into_a_closed_pipe(cli, [*cli.options(dag=None), "check"])
    assert (code, err) == (1, b"castore: 1 problem(s) found; see the report\n")


def test_a_closed_stdout_pipe_keeps_import_dagu_failing(cli: Cli, tmp_path: pathlib.Path) -> None:
    dagu = build_dagu_dir(tmp_path / "dag-state")
    code, err = _into_a_closed_pipe(cli, [*cli.options(dag=None), "import-dagu", str(dagu.root)])
    assert code == 1
    assert b"record(s) not imported" in err
    assert Store(cli.dir, dag="daily").get("cursor").version == 3  # the whole import was done


def test_a_reader_leaving_an_export_ends_it_quietly(cli: Cli) -> None:
    for n in range(20):
        cli.ok("set", f"k{n}", BIG)
    code, err = _into_a_closed_pipe(cli, [*cli.options(dag=None), "export"])
    assert (code, err) == (0, b"")


def test_output_to_a_closed_pipe_after_a_write_exits_0(cli: Cli) -> None:
    code, err = _into_a_closed_pipe(cli, [*cli.options(), "set", "k", "1"])
    assert (code, err) == (0, b"")
    assert cli.ok("get", "k")["value"] == 1


def test_a_help_to_a_full_device_says_so(cli: Cli) -> None:
    proc = _redirected(cli, ">/dev/full", ["--help"])
    assert one_line_error(proc, 1) == "cannot write the output: No space left on device"


def test_a_value_read_from_a_terminal_says_how_to_end_it(tmp_path: pathlib.Path) -> None:
    """Was: ``castore set k`` at a terminal waited for standard input without a word,
    so a user who forgot VALUE saw the command hang. It now says it reads the value,
    on the terminal only (a pipe or a file hears nothing: scripts see one line)."""
    cli = Cli(tmp_path, str(tmp_path / "store"), dag="d")
    leader, follower = pty.openpty()
    try:
        os.write(leader, b'{"a": 1}\n\x04')  # the line discipline holds it until read
        proc = subprocess.run(
            cli.argv(*cli.options(), "set", "k"),
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=follower,
            env=cli.env,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while select.select([leader], [], [], 0.5)[0]:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed, all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0, shown
    assert json.loads(proc.stdout)["version"] == 1
    assert b"castore: reading the value from standard input: end it with Ctrl-D" in shown
    assert cli.ok("get", "k")["value"] == {"a": 1}
    piped = cli.run("set", "k", stdin=b"2")  # not a terminal: nothing on stderr
    assert (piped.returncode, piped.stderr) == (0, b"")
