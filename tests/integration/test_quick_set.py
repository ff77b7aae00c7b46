"""``castore set``'s quick path writes what the full command writes, or nothing at all.

:func:`castore.cli.quick.quick_set` (over :func:`castore.file.quickset.quick_set`)
appends a version without loading the library. The oracle is the CLI's own full
path (``COMMANDS["set"]`` over an ``Invocation``, the store's writer) on a twin
store, an exact copy, given the same arguments at the same frozen clock: after
every command both stores must hold the same bytes in every file, and print the
same line (or fail alike). Where the quick path declines, it must have written
nothing but a ``P`` (which only makes ``list`` read the key's log; FORMAT.md §5),
and the full path then runs on its store too, as the CLI does.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

import castore
from castore import Store
from castore.cli import COMMANDS
from castore.cli.args import build_parser
from castore.cli.invocation import Invocation
from castore.cli.quick import quick_set
from castore.errors import CastoreError, CorruptionError, LockTimeoutError
from castore.file import stateappend
from castore.file.frames import encode_frame, scan_frames
from castore.file.layout import Layout
from castore.file.stateappend import KIND_PENDING
from castore.keys import Ref
from tests.helpers import CASTORE_PATH

pytestmark = pytest.mark.integration

DAG = "flow"
_STAMP = re.compile(r"\d{8}T\d{6}\.\d+Z")  # a quarantine name's UTC time
MEDIUM = '{"rows": [' + ", ".join(['"a repeated row"'] * 9) + "]}"  # 128-255 bytes: zstd


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CASTORE_DIR", "DAG_NAME", "CASTORE_ROOT_DAG", "CASTORE_MODE", "DAG_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


class Twins:
    """Two stores that must stay byte-identical: ``quick`` (the CLI) and ``full`` (the store)."""

    def __init__(self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.quick = tmp_path / "quick"
        self.full = tmp_path / "full"
        self.answered = 0
        self.clock = 1_800_000_000_000_000_000
        monkeypatch.setattr(time, "time_ns", lambda: self.clock)

    def store(self) -> Store:
        """A handle on the quick store, to set things up (copied to the full one by sync)."""
        return Store(self.quick, dag=DAG)

    def sync(self) -> None:
        shutil.rmtree(self.full, ignore_errors=True)
        shutil.copytree(self.quick, self.full)

    def run(self, *argv: str) -> bytes | Exception:
        """``castore ARGV`` on both stores; assert they agree; return the line (or error)."""
        self.clock += 1_000_000
        before = files(self.quick)
        line = quick_set(self._args(self.quick, argv))
        if line is None:
            assert_nothing_but_p(before, files(self.quick))
            mine = full_set(self._args(self.quick, argv))
        else:
            self.answered += 1
            mine = line
        theirs = full_set(self._args(self.full, argv))
        if isinstance(theirs, Exception):
            same = str(mine).replace(str(self.quick), "") == str(theirs).replace(str(self.full), "")
            assert type(mine) is type(theirs), (argv, mine, theirs)
            assert same, (argv, mine, theirs)
        else:
            assert mine == theirs, (argv, mine, theirs)
        assert files(self.quick) == files(self.full), argv
        return mine

    @staticmethod
    def _args(root: pathlib.Path, argv: tuple[str, ...]) -> argparse.Namespace:
        return build_parser(castore.__version__).parse_args(["--dir", str(root), *argv])


def full_set(args: argparse.Namespace) -> bytes | Exception:
    cmd = Invocation(args)
    try:
        return b"".join(COMMANDS["set"](cmd))
    except CastoreError as exc:
        return exc
    finally:
        cmd.store.close()


def assert_nothing_but_p(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """A declined write changed no file but, at most, appended ``P`` frames to ``STATE``."""
    assert before.keys() == after.keys()
    for name, data in after.items():
        if data == before[name]:
            continue
        assert name.endswith("STATE"), name
        added = data[len(before[name]) :]
        assert data[8 : len(before[name])] == before[name][8:]
        frames = list(scan_frames(added))
        assert frames, added
        assert all(f.kind == KIND_PENDING for f in frames), added
        assert sum(f.end - f.start for f in frames) == len(added)


def files(root: pathlib.Path) -> dict[str, bytes]:
    """Every file below ``root`` and its bytes (quarantine names without their time)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[_STAMP.sub("<time>", str(path.relative_to(root)))] = path.read_bytes()
    return out


@pytest.fixture
def twins(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Twins:
    pair = Twins(tmp_path, monkeypatch)
    handle = pair.store()
    handle.set("k", {"cursor": 0})
    handle.close()
    pair.sync()
    return pair


def log_of(root: pathlib.Path, key: str = "k") -> pathlib.Path:
    layout = Layout(str(root), durable=False, lock_timeout=1)
    return pathlib.Path(layout.log_path(Ref("dag", DAG, key)))


def test_plain_sets_are_written_as_the_store_writes_them(twins):
    d = ("--dag", DAG)
    for value in ('{"cursor": 1}', "[1, 2.50, -0, 1E+3]", '"<tag> & text"', "null", MEDIUM):
        twins.run(*d, "set", "k", value)
    twins.run(*d, "set", "k", MEDIUM)  # the same value again: the entry points at its frame
    twins.run(*d, "--no-sync", "set", "k", "true")
    twins.run(*d, "set", "k", '{"b": 1, "a": {"d": [], "c": {}}}', "--reason", "why not")
    twins.run(*d, "--actor", "ci", "--run-id", "r-1", "--step", "s", "set", "k", "7")
    twins.run(*d, "set", "k", '{"text": "caf\u00e9 \\u2028 \\n\\t \\"q\\" \\ud83d\\ude00"}')
    assert twins.answered == 10


def test_guards_and_deletes(twins, monkeypatch):
    d = ("--dag", DAG)
    line = twins.run(*d, "set", "k", "1", "--expected-version", "1")
    assert isinstance(line, bytes)
    assert b'"version":2' in line
    assert isinstance(twins.run(*d, "set", "k", "1", "--expected-version", "1"), CastoreError)
    assert isinstance(twins.run(*d, "set", "k", "1", "--create-only"), CastoreError)
    answered = twins.answered
    handle = twins.store()
    handle.delete("k")
    handle.close()
    twins.sync()
    line = twins.run(*d, "set", "k", "2", "--create-only")  # the store lists the key again
    assert isinstance(line, bytes)
    assert b'"created":true' in line
    assert twins.answered == answered
    monkeypatch.setenv("DAG_RUN_ID", "run-9")
    monkeypatch.setenv("DAG_RUN_ATTEMPT_ID", "3")
    twins.run(*d, "set", "k", "3", "--expected-version", "4")
    assert twins.answered == answered + 1


def test_with_a_state_file_every_write_leaves_its_p_record(twins):
    handle = twins.store()
    handle.list()  # makes STATE
    handle.close()
    twins.sync()
    for n in range(3):
        twins.run("--dag", DAG, "set", "k", str(n))
    assert twins.answered == 3
    listed = Store(twins.quick, dag=DAG).list().entries
    assert [(e.key, e.version) for e in listed] == [("k", 4)]


def test_what_it_leaves_to_the_store(twins, monkeypatch):
    d = ("--dag", DAG)
    for argv in (
        ("set", "new", "1"),  # no log yet: KEYS and GRAVES are the store's
        ("set", "k", '"\\ud800"'),  # a lone surrogate: Go writes U+FFFD
        ("set", "k", '"\\u0000"'),  # NUL: the normalizer's number marker
        ("set", "k", '"' + "x" * 300 + '"'),  # large enough to be deduplicated
        ("set", "\u00e9", "1"),  # a name the line would escape
        ("set", "k", "1", "--reason", "caf\u00e9"),  # an audit field msgspec writes its way
        ("--mode", "group", "set", "k", "1"),
        ("set", "k", "{"),  # not JSON: the store words the error
    ):
        twins.run(*d, *argv)
    monkeypatch.setenv("CASTORE_MODE", "private")
    twins.run(*d, "set", "k", "2")
    assert twins.answered == 0


def test_a_torn_or_damaged_tail_is_never_written_after(twins):
    d = ("--dag", DAG)
    twins.run(*d, "set", "k", "1")
    for log in (log_of(twins.quick), log_of(twins.full)):
        with open(log, "ab") as fh:
            fh.write(b"\x30\x00\x00\x00E{")  # a torn append: the store quarantines and cuts it
    twins.run(*d, "set", "k", "2")
    assert twins.answered == 1
    for log in (log_of(twins.quick), log_of(twins.full)):
        data = bytearray(log.read_bytes())
        data[-30] ^= 0x01  # inside the newest entry: the newest version is unknown
        log.write_bytes(bytes(data))
    error = twins.run(*d, "set", "k", "3")
    assert isinstance(error, CorruptionError)
    assert twins.answered == 1


@pytest.mark.parametrize("hash_of", [str.upper, lambda digest: digest[:40]], ids=["upper", "short"])
def test_a_newest_entry_whose_hash_is_not_a_digest_is_never_written_after(twins, hash_of):
    # Found by a review (thirty-second session): the quick set wrote version 3 over a
    # checksummed newest entry whose hash was not a sha256 digest, which the store refuses
    # as damage (FORMAT.md §3, §7); the damaged version was then no longer the newest.
    d = ("--dag", DAG)
    twins.run(*d, "set", "k", "1")
    twins.run(*d, "set", "k", "2")
    for log in (log_of(twins.quick), log_of(twins.full)):
        data = log.read_bytes()
        last = list(scan_frames(data))[-1]
        entry = json.loads(last.payload)
        entry["hash"] = hash_of(entry["hash"])
        payload = json.dumps(entry, separators=(",", ":")).encode()
        log.write_bytes(data[: last.start] + encode_frame(last.kind, payload))
    error = twins.run(*d, "set", "k", "3")
    assert isinstance(error, CorruptionError), error
    assert "not a sha256 digest" in str(error)


def test_a_state_file_held_locked_is_named_as_the_full_command_names_it(twins, monkeypatch):
    # Found by a review (thirty-second session): the quick set named the key, as if its
    # log's lock had timed out ("dag/flow/k (…/STATE) not locked"), where the full command
    # names STATE alone.
    store = twins.store()
    store.set("k", 1)
    store.list()  # makes STATE
    twins.sync()
    monkeypatch.setattr(stateappend, "LOCK_SECONDS", 0.2)
    held = [os.open(next(root.rglob("STATE")), os.O_RDWR) for root in (twins.quick, twins.full)]
    try:
        for fd in held:
            fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockTimeoutError) as quick:
            quick_set(twins._args(twins.quick, ("--dag", DAG, "set", "k", "2")))
        full = full_set(twins._args(twins.full, ("--dag", DAG, "set", "k", "2")))
    finally:
        for fd in held:
            os.close(fd)
    assert isinstance(full, LockTimeoutError), full
    assert str(quick.value).replace(str(twins.quick), "") == str(full).replace(str(twins.full), "")
    assert str(full).endswith("STATE not locked within 0.2 s"), full


def test_a_repeated_value_whose_frame_is_damaged_gets_a_fresh_frame(twins):
    d = ("--dag", DAG)
    twins.run(*d, "set", "k", '"same"')
    for log in (log_of(twins.quick), log_of(twins.full)):
        data = bytearray(log.read_bytes())
        blob = data.rindex(b'"same"')  # the newest blob frame's value
        data[blob + 1] ^= 0x20
        log.write_bytes(bytes(data))
    twins.run(*d, "set", "k", '"same"')
    assert twins.answered == 1  # the first; the second was the store's
    assert Store(twins.quick, dag=DAG).get("k").value == "same"


def test_a_link_in_place_of_the_log_is_never_followed(twins, tmp_path):
    outside = tmp_path / "outside.log"
    for root in (twins.quick, twins.full):
        log = log_of(root)
        shutil.copy(log, outside)
        os.unlink(log)
        os.symlink(outside, log)
    before = outside.read_bytes()
    error = twins.run("--dag", DAG, "set", "k", "1")
    assert isinstance(error, CastoreError)
    assert "symbolic link" in str(error)
    assert outside.read_bytes() == before
    assert twins.answered == 0


@pytest.mark.parametrize(
    ("options", "words", "marker"),
    [
        (["--dir", "{file}"], b"is not a directory: not a castore store", None),
        (["--dir", "{store}", "--lock-timeout", "x"], b"--lock-timeout: expected a number", None),
        (["--dir", "{store}"], b"an upgrade of this store was interrupted", b"upgrading-to-2"),
        (["--dir", "{store}"], b"run `castore upgrade`", b"1"),
        (["--dir", "{store}"], b"FORMAT", b"2 x"),
        (["--dir", "{plain}"], b"has no FORMAT file: not a castore store", None),
    ],
    ids=["not-a-store", "bad-lock-timeout", "upgrading", "format-1", "bad-format", "no-format"],
)
def test_a_value_on_stdin_is_read_only_after_the_options_and_the_store_pass(
    tmp_path, options, words, marker
):
    # Found by a review: the quick path read stdin first, so with an open pipe it
    # waited for the value where the command refuses its options at once; a later
    # review: it checked only that the store was a directory, not its FORMAT.
    (tmp_path / "file").write_text("x")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes").write_text("x")
    Store(tmp_path / "store", dag=DAG).set("k", 1)
    stored = (tmp_path / "store" / "FORMAT").read_bytes()
    if marker is not None:
        (tmp_path / "store" / "FORMAT").write_bytes(b"castore-store " + marker + b"\n")
    where = {"file": tmp_path / "file", "store": tmp_path / "store", "plain": tmp_path / "plain"}
    argv = [o.format(**where) for o in options]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": CASTORE_PATH, "LC_ALL": "C.UTF-8"}
    with subprocess.Popen(
        [sys.executable, "-m", "castore", *argv, "--dag", DAG, "set", "k", "-"],
        stdin=subprocess.PIPE,  # open, never written: the value never comes
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        try:
            proc.wait(timeout=30)  # not communicate(): it would close stdin
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("castore set waited for stdin before refusing its options")
        assert proc.stdout is not None
        assert proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode in (1, 2)
    assert out == b""
    assert words in err
    assert err.count(b"\n") == 1
    (tmp_path / "store" / "FORMAT").write_bytes(stored)
    assert Store(tmp_path / "store", dag=DAG).get("k").version == 1
