"""Hostile input to ``castore import`` and ``castore import-dagu`` (issue 8, "Bounded input").

Each case runs the command line in a fresh subprocess that reports its own peak
RSS, so the memory bound is measured, not assumed: the increase over a tiny
import of the same kind stays below ten times the largest record either reader
accepts (docs/CLI.md, import and import-dagu). Run with ``-s`` or ``-rA`` to
see the figures.
"""

import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

import pytest

from castore import InvalidValueError, Store
from castore.codec import MAX_VALUE_BYTES
from tests.helpers import Cli, one_line_error
from tests.unit.test_dagu import dagu_record, hexname, rel_path, write_file

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 20  # a reader blocked on a FIFO is killed and the test fails, never hangs
MIB = 1 << 20
LIMIT_BYTES = 2 * MAX_VALUE_BYTES + (64 << 10)  # MAX_RECORD_BYTES of transfer.py and dagu.py
MEMORY_BOUND_BYTES = 10 * LIMIT_BYTES
HUGE_BYTES = 300_000_000  # the size of the finding; sparse, so it costs no disk
HEADER = b'{"format":"castore-export","version":1}\n'

# Runs the CLI, then writes its peak RSS in KiB: VmHWM, the high-water mark of this
# image only. ru_maxrss (and so RUSAGE_CHILDREN and wait4) would not do on Linux: it
# carries the parent's peak across fork and exec, so it would measure pytest's size.
RUNNER = """\
import os, resource, sys
from castore.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
try:
    with open("/proc/self/status") as fh:
        peak = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
except OSError:
    peak = str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
with open(os.environ["PEAK_RSS_FILE"], "w") as fh:
    fh.write(peak)
sys.exit(code)
"""


class Run(NamedTuple):
    code: int
    stdout: bytes
    stderr: bytes
    peak_kib: int
    proc: subprocess.CompletedProcess[bytes]


def castore(tmp_path: Path, *args: str | Path, stdin: IO[bytes] | None = None) -> Run:
    """Run ``castore ARGS`` in a subprocess (killed after TIMEOUT_SECONDS) with its peak RSS."""
    peak_file = tmp_path / f"peak-rss-{len(list(tmp_path.glob('peak-rss-*')))}"
    cli = Cli(tmp_path, entry=("-c", RUNNER), timeout=TIMEOUT_SECONDS)
    proc = cli.raw(
        *args,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        env={"PEAK_RSS_FILE": str(peak_file)},
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, int(peak_file.read_text()), proc)


def report(text: str) -> None:
    sys.stdout.write(text + "\n")  # shown by pytest -s and in -rA's captured output


def check_peak(case: str, run: Run, baseline_kib: int) -> None:
    increase = max(0, run.peak_kib - baseline_kib) * 1024
    report(
        f"[peak RSS] {case}: {run.peak_kib / 1024:.1f} MiB, baseline {baseline_kib / 1024:.1f}"
        f" MiB, increase {increase / MIB:.1f} MiB (bound {MEMORY_BOUND_BYTES / MIB:.1f} MiB)"
    )
    assert increase < MEMORY_BOUND_BYTES, f"{case}: {increase / MIB:.1f} MiB over the baseline"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_at(path: Path) -> Store:
    return Store(path, dag="d", durable=False, actor="", run_id="", step="")


def sparse_file(path: Path, size: int, head: bytes = b"", tail: bytes = b"") -> Path:
    """``head``, then a hole of zero bytes up to ``size``, then ``tail``: cheap at any size."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
        fh.seek(size)
        fh.write(tail)
    return path


# -- castore import ----------------------------------------------------------------------


def export_line(
    key: str, value_json: bytes, reason: str = "", audit: dict[str, str] | None = None
) -> bytes:
    """One export line (no newline) for version 1 of ``dag/d/KEY``."""
    record = {
        "scope": "dag",
        "namespace": "d",
        "key": key,
        "version": 1,
        "op": "set",
        "time_ns": 1,
        "created_ns": 1,
        "hash": sha256(value_json),
        "audit": audit if audit is not None else {"reason": reason} if reason else {},
    }
    head = json.dumps(record, separators=(",", ":"))[:-1].encode()
    return head + b',"value":' + value_json + b"}"


def padded_export_line(key: str, size: int) -> bytes:
    """An export line of exactly ``size`` bytes: the largest value, a long reason."""
    value = b'"' + b"v" * (MAX_VALUE_BYTES - 2) + b'"'
    bare = export_line(key, value, reason="r")
    line = export_line(key, value, reason="r" * (1 + size - len(bare)))
    assert len(line) == size
    return line


@pytest.fixture(scope="module")
def import_baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("import-baseline")
    (tmp / "tiny.jsonl").write_bytes(HEADER + export_line("tiny", b"1") + b"\n")
    run = castore(tmp, "--dir", tmp / "store", "import", tmp / "tiny.jsonl")
    assert run.code == 0, run.stderr
    return run.peak_kib


@pytest.fixture
def target(tmp_path):
    """A store that already holds ``dag/d/existing`` at version 2."""
    s = store_at(tmp_path / "store")
    s.set("existing", {"mine": 1})
    s.set("existing", {"mine": 2})
    s.close()
    return tmp_path / "store"


def state(path: Path) -> list[tuple[str, list[tuple[int, str]], object]]:
    s = store_at(path)
    try:
        out = []
        for entry in s.list().entries:
            history = [(e.version, e.hash) for e in s.history(entry.key).entries]
            out.append((entry.key, history, s.get(entry.key).value))
        return out
    finally:
        s.close()


def huge_export(tmp_path: Path, line_number: int) -> Path:
    """An export whose line ``line_number`` (1 or 3) is a 300 MB line; the rest is valid."""
    good = export_line("good", b'{"n":1}') + b"\n"
    prefix = export_line("huge", b'"x"')[: -len(b'"x"}')] + b'"'
    head = b"" if line_number == 1 else HEADER + good
    after = b'"}\n' + export_line("after", b"2") + b"\n"
    return sparse_file(tmp_path / "huge.jsonl", HUGE_BYTES, head + prefix, after)


@pytest.mark.parametrize(
    ("case", "line_number", "via_stdin"),
    [
        ("300 MB record line, file", 3, False),
        ("300 MB record line, stdin", 3, True),
        ("300 MB first line, stdin", 1, True),
    ],
)
def test_import_refuses_an_oversized_line_in_bounded_memory(
    tmp_path, target, import_baseline, case, line_number, via_stdin
):
    path = huge_export(tmp_path, line_number)
    before = state(target)
    if via_stdin:
        with open(path, "rb") as fh:
            run = castore(tmp_path, "--dir", target, "import", "-", stdin=fh)
    else:
        run = castore(tmp_path, "--dir", target, "import", path)
    message = one_line_error(run.proc, 2)
    report(f"[import] {case}: exit {run.code}, castore: {message}")
    assert f"line {line_number}:" in message
    assert str(LIMIT_BYTES) in message
    assert state(target) == before  # nothing imported, nothing changed
    check_peak(case, run, import_baseline)


def test_import_reads_a_line_at_the_limit_and_refuses_one_byte_more(
    tmp_path, target, import_baseline
):
    at_limit = tmp_path / "at-limit.jsonl"
    at_limit.write_bytes(HEADER + padded_export_line("big", LIMIT_BYTES) + b"\n")
    over = tmp_path / "over.jsonl"
    over.write_bytes(HEADER + padded_export_line("big", LIMIT_BYTES + 1) + b"\n")
    before = state(target)

    refused = castore(tmp_path, "--dir", target, "import", over)
    message = one_line_error(refused.proc, 2)
    report(f"[import] line of limit + 1 bytes: castore: {message}")
    assert "line 2:" in message
    assert str(LIMIT_BYTES) in message
    assert state(target) == before

    # A line at the limit is read whole; its reason (over 1 MB) is then refused, as a
    # write's would be (audit fields hold at most 8,192 characters: every line fits).
    refused = castore(tmp_path, "--dir", target, "import", at_limit)
    message = one_line_error(refused.proc, 2)
    assert message.startswith("invalid value: line 2: audit field reason holds"), message
    assert state(target) == before
    check_peak(f"an export line of {LIMIT_BYTES} bytes", refused, import_baseline)


def test_import_takes_the_longest_line_a_store_writes(tmp_path, target, import_baseline):
    # The largest value and every audit text field at its bound, in characters JSON
    # escapes to six bytes each: the longest line export writes, well within the limit.
    value = b'"' + b"v" * (MAX_VALUE_BYTES - 2) + b'"'
    fields = ("dag_name", "run_id", "step_name", "attempt", "user", "host", "actor", "reason")
    longest = export_line("big", value, audit=dict.fromkeys(fields, "\x01" * 8192))
    assert 1_400_000 < len(longest) < LIMIT_BYTES
    dump = tmp_path / "longest.jsonl"
    dump.write_bytes(HEADER + longest + b"\n")
    run = castore(tmp_path, "--dir", target, "import", dump)
    assert run.code == 0, run.stderr
    s = store_at(target)
    assert len(s.get("big").value_json or b"") == MAX_VALUE_BYTES
    assert s.history("big").entries[0].reason == "\x01" * 8192
    s.close()
    check_peak(f"the longest export line ({len(longest)} bytes)", run, import_baseline)


def test_import_lines_refuses_an_oversized_line_from_any_reader(tmp_path, target):
    """The library limit holds for lines given by a caller, too: nothing is decoded or written."""
    from castore import dagu, transfer

    assert transfer.MAX_RECORD_BYTES == dagu.MAX_RECORD_BYTES == LIMIT_BYTES
    lines = [HEADER, export_line("good", b"1") + b"\n", b" " * (LIMIT_BYTES + 1) + b"\n"]
    s = store_at(target)
    with pytest.raises(InvalidValueError, match=f"line 3: .*{LIMIT_BYTES}"):
        transfer.import_lines(s, lambda: iter(lines))
    assert s.get("good").found is False
    s.close()


# -- castore import-dagu -----------------------------------------------------------------


class Expect(NamedTuple):
    skipped: dict[str, str]  # file -> fragment of the reason
    imported: set[str]  # files imported; every other record must not be
    outside_key: str = ""  # a key that exists only outside the source directory


GOOD_KEYS = ("a-first", "z-last")


def good_files() -> set[str]:
    return {rel_path("dag", "daily", key) for key in GOOD_KEYS}


def make_fifo(root: Path, outside: Path) -> Expect:
    rel = rel_path("dag", "daily", "fifo")
    os.mkfifo(root / rel)
    return Expect({rel: "not a regular file (named pipe)"}, good_files())


def make_socket(root: Path, outside: Path) -> Expect:
    rel = rel_path("dag", "daily", "socket")
    here = os.getcwd()
    os.chdir((root / rel).parent)  # AF_UNIX paths are limited to 108 bytes: bind by name
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind((root / rel).name)
    finally:
        os.chdir(here)
    return Expect({rel: "not a regular file (socket)"}, good_files())


def make_device(root: Path, outside: Path) -> Expect:
    rel = rel_path("dag", "daily", "device")
    try:
        os.mknod(root / rel, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    return Expect({rel: "not a regular file (character device)"}, good_files())


def make_huge(root: Path, outside: Path) -> Expect:
    rel = rel_path("dag", "daily", "huge")
    record = dagu_record("dag", "daily", "huge", "x", 1)
    sparse_file(root / rel, HUGE_BYTES, record)  # valid JSON, then 300 MB of zero bytes
    return Expect({rel: f"{HUGE_BYTES} bytes, over the {LIMIT_BYTES}-byte limit"}, good_files())


def make_file_symlink(root: Path, outside: Path) -> Expect:
    write_file(outside, "secret.json", dagu_record("dag", "daily", "outside", "secret", 1))
    rel = rel_path("dag", "daily", "outside")
    os.symlink(outside / "secret.json", root / rel)
    return Expect({rel: "symbolic link, not followed"}, good_files(), "outside")


def make_directory_symlinks(root: Path, outside: Path) -> Expect:
    write_file(
        outside,
        rel_path("dag", "linked", "outside"),
        dagu_record("dag", "linked", "outside", "secret", 1),
    )
    ns_rel = f"v1/dag/{hexname('linked')}"
    os.symlink(outside / ns_rel, root / ns_rel)  # a namespace directory
    os.symlink(outside / "v1" / "dag", root / "v1" / "global")  # a scope directory
    skipped = {ns_rel: "symbolic link, not followed", "v1/global": "symbolic link, not followed"}
    return Expect(skipped, good_files(), "outside")


def make_v1_symlink(root: Path, outside: Path) -> Expect:
    os.rename(root / "v1", outside / "v1")
    os.symlink(outside / "v1", root / "v1")
    return Expect({"v1": "symbolic link, not followed"}, set())


HOSTILE: dict[str, Callable[[Path, Path], Expect]] = {
    "FIFO among the records": make_fifo,
    "UNIX socket among the records": make_socket,
    "character device among the records": make_device,
    "300 MB record file": make_huge,
    "record symlinked outside the source": make_file_symlink,
    "symlinked scope and namespace directories": make_directory_symlinks,
    "symlinked v1 directory": make_v1_symlink,
}


def dagu_source(root: Path) -> Path:
    for key in GOOD_KEYS:
        write_file(root, rel_path("dag", "daily", key), dagu_record("dag", "daily", key, key, 1))
    return root


@pytest.fixture(scope="module")
def dagu_baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dagu-baseline")
    run = castore(tmp, "--dir", tmp / "store", "import-dagu", dagu_source(tmp / "dag-state"))
    assert run.code == 0, run.stderr
    return run.peak_kib


def import_dagu(tmp_path: Path, root: Path) -> tuple[Run, dict[str, dict[str, object]]]:
    run = castore(tmp_path, "--dir", tmp_path / "store", "import-dagu", root)
    # exit 1 and one stderr line when records were skipped that could not be imported
    assert run.code == (1 if run.stderr else 0), run.stderr
    assert run.stderr == b"" or re.fullmatch(
        rb"castore: \d+ record\(s\) not imported .*\n", run.stderr
    )
    *lines, summary = [json.loads(line) for line in run.stdout.splitlines()]
    outcomes = {o["file"]: o for o in lines}
    assert len(outcomes) == len(lines)
    counts = {"imported": 0, "skipped": 0}
    for o in lines:
        counts[o["status"]] += 1
    assert summary == {"operation": "import-dagu", **counts}
    return run, outcomes


@pytest.mark.parametrize("case", list(HOSTILE))
def test_import_dagu_skips_hostile_entries_in_bounded_memory(tmp_path, dagu_baseline, case):
    root = dagu_source(tmp_path / "dag-state")
    outside = tmp_path / "outside"
    outside.mkdir()
    expect = HOSTILE[case](root, outside)

    run, outcomes = import_dagu(tmp_path, root)
    for rel, fragment in expect.skipped.items():
        report(f"[import-dagu] {case}: {json.dumps(outcomes.get(rel))}")
        assert outcomes[rel]["status"] == "skipped", outcomes[rel]
        assert fragment in str(outcomes[rel]["reason"]), outcomes[rel]
    imported = {rel for rel, o in outcomes.items() if o["status"] == "imported"}
    assert imported == expect.imported
    assert set(outcomes) == expect.imported | set(expect.skipped)
    if expect.outside_key:
        s = Store(tmp_path / "store", dag="daily", durable=False)
        for scope, namespace in (("dag", "daily"), ("dag", "linked"), ("global", "linked")):
            got = s.get(expect.outside_key, scope=scope, namespace=namespace)
            assert got.found is False, (scope, namespace)
        s.close()
    check_peak(case, run, dagu_baseline)


def test_import_dagu_reads_a_record_at_the_limit_and_skips_one_byte_more(tmp_path, dagu_baseline):
    root = tmp_path / "dag-state"
    value = b'"' + b"v" * (MAX_VALUE_BYTES - 2) + b'"'
    for key, size in (("at-limit", LIMIT_BYTES), ("over", LIMIT_BYTES + 1)):
        bare = dagu_record("dag", "daily", key, value, 1, by={"step_name": ""})
        pad = "s" * (size - len(bare))
        record = dagu_record("dag", "daily", key, value, 1, by={"step_name": pad})
        assert len(record) == size
        write_file(root, rel_path("dag", "daily", key), record)

    run, outcomes = import_dagu(tmp_path, root)
    over = outcomes[rel_path("dag", "daily", "over")]
    report(f"[import-dagu] record file of limit + 1 bytes: {json.dumps(over)}")
    assert over["status"] == "skipped"
    assert f"{LIMIT_BYTES + 1} bytes, over the {LIMIT_BYTES}-byte limit" in str(over["reason"])
    # Read whole, then skipped for its 2 MB step_name (a write keeps 8,192 characters).
    at_limit = outcomes[rel_path("dag", "daily", "at-limit")]
    assert at_limit["status"] == "skipped"
    assert "audit field step_name holds" in str(at_limit["reason"]), at_limit
    s = Store(tmp_path / "store", dag="daily", durable=False)
    assert s.get("at-limit").found is False
    s.close()
    check_peak(f"a Dagu record of {LIMIT_BYTES} bytes", run, dagu_baseline)
