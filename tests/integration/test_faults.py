"""I/O faults: ENOSPC and EIO from the file-system calls castore makes, at every call.

In-process fault injection: ``os.write`` (what ``castore.file.tree.append`` uses),
``os.fdatasync``, ``os.fsync``, ``os.replace`` and ``os.open`` are wrapped; an
armed fault makes the n-th call inside one operation raise ``OSError`` (or, for
a partial write, write half of the bytes and make the next write raise
ENOSPC). For every operation (set, delete, rollback, compact, gc, import) and
every n until the operation makes fewer than n such calls:

* the operation raises OSError with the injected errno (nothing else);
* nothing acknowledged before is lost: every key's history is the one before
  the operation, or the one the operation would have produced (a write whose
  commit landed before the fault is visible; compaction is per key);
* once the fault is removed, the same handle's next set gets the next version
  (versions never repeat), and ``check()`` is ok, or ``check(repair=True)``
  makes it ok without losing acknowledged data.

Then the CLI: an OSError is exit 1 and one line ``castore: ...`` on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import pytest

from castore import CastoreError, NotFoundError, Store
from castore.cli import EXIT_DAMAGED
from castore.transfer import export_lines, import_lines
from tests.helpers import Cli, log_path, read_versions

pytestmark = pytest.mark.integration

DAG: Final = "faults"
MAX_CALLS: Final = 64  # more than any operation here makes of one kind
BIG: Final = {"big": "shared value " * 30}  # >= 256 bytes: deduplicated across keys

History = dict[int, Any]  # version -> value (None: a delete)


# -- the fault injector ---------------------------------------------------------------------


class Faults:
    """Wraps ``os`` functions once; ``arm`` makes the n-th matching call fail."""

    CALLS: Final = ("write", "fdatasync", "fsync", "replace", "open")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real: dict[str, Callable[..., Any]] = {name: getattr(os, name) for name in self.CALLS}
        self.call = ""
        self.nth = 0
        self.errno = 0
        self.partial = False
        self.match: Callable[[tuple[Any, ...]], bool] | None = None
        self.seen = 0
        self.fired = False
        self.target = ""  # the file the fault hit (a path, or the one an fd names)
        self.pending = False  # a partial write happened: the next write fails
        for name in self.CALLS:
            monkeypatch.setattr(os, name, self._wrap(name))

    def _wrap(self, name: str) -> Callable[..., Any]:
        real = self.real[name]

        def wrapper(*args: Any, **kw: Any) -> Any:
            if name == "write" and self.pending:
                self.pending = False
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if self.call == name and not self.fired and (self.match is None or self.match(args)):
                self.seen += 1
                if self.seen == self.nth:
                    self.fired = True
                    self.target = _target(args)
                    if self.partial and len(args[1]) >= 2:
                        self.pending = True
                        return real(args[0], bytes(args[1][: len(args[1]) // 2]))
                    raise OSError(self.errno, os.strerror(self.errno))
            return real(*args, **kw)

        return wrapper

    def arm(
        self,
        call: str,
        nth: int,
        code: int,
        *,
        partial: bool = False,
        match: Callable[[tuple[Any, ...]], bool] | None = None,
    ) -> None:
        self.call, self.nth, self.errno, self.partial, self.match = call, nth, code, partial, match
        self.seen, self.fired, self.pending, self.target = 0, False, False, ""

    def disarm(self) -> None:
        self.call, self.pending = "", False


@pytest.fixture
def faults(monkeypatch):
    injector = Faults(monkeypatch)
    yield injector
    injector.disarm()


@dataclass(frozen=True)
class Fault:
    name: str
    call: str
    errno: int
    partial: bool = False
    log_only: bool = False


FAULTS: Final = [
    Fault("write-ENOSPC", "write", errno.ENOSPC),
    Fault("write-EIO", "write", errno.EIO),
    Fault("write-partial", "write", errno.ENOSPC, partial=True),
    Fault("fdatasync-EIO", "fdatasync", errno.EIO),
    Fault("fdatasync-ENOSPC", "fdatasync", errno.ENOSPC),
    Fault("fsync-EIO", "fsync", errno.EIO),
    Fault("replace-EIO", "replace", errno.EIO),
    Fault("replace-ENOSPC", "replace", errno.ENOSPC),
    Fault("open-ENOSPC", "open", errno.ENOSPC),
    Fault("open-EIO", "open", errno.EIO),
    Fault("open-log-EIO", "open", errno.EIO, log_only=True),
]


def _target(args: tuple[Any, ...]) -> str:
    if args and isinstance(args[0], str):
        return args[0]
    if args and isinstance(args[0], int):
        with contextlib.suppress(OSError):
            return os.readlink(f"/proc/self/fd/{args[0]}")
    return ""


def _listing(root: str) -> list[tuple[str, int, str]]:
    return [(e.key, e.version, e.hash) for e in open_store(root).list().entries]


def _listing_from_logs(root: str) -> list[tuple[str, int, str]]:
    """The list of a copy of ``root`` without its namespace's STATE (every log read)."""
    copy = root + "-logs"
    shutil.copytree(root, copy)
    for state in glob.glob(os.path.join(copy, "refs", "*", "*", "STATE")):
        os.unlink(state)
    try:
        return _listing(copy)
    finally:
        shutil.rmtree(copy)


def _is_log(args: tuple[Any, ...]) -> bool:
    return bool(args) and isinstance(args[0], str) and args[0].endswith(".log")


# -- the store and the operations -------------------------------------------------------------


def open_store(root: str, *, durable: bool = False) -> Store:
    return Store(root, dag=DAG, durable=durable)


BASE: Final[dict[str, list[Any]]] = {
    "k": [{"a": 1}, BIG, {"a": 3}, {"a": 4}],
    "gone": [{"g": 1}, None],
    "other": [{"o": 1}],
    "twin": [BIG],  # points at k's blob frame of BIG (cross-log dedup)
}
SOURCE: Final[dict[str, list[Any]]] = {  # the import file's keys
    "imp": [{"i": 1}, {"i": 2}],
    # As many versions as BASE's k at least: an overwrite never takes versions back.
    "k": [{"from": "import"}, None, {"from": "import", "n": 3}, {"n": 4}, {"n": 5}],
}


def write_histories(store: Store, histories: dict[str, list[Any]]) -> None:
    for key, values in histories.items():
        for value in values:
            if value is None:
                assert store.delete(key).deleted
            else:
                store.set(key, value)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("faults") / "base")
    write_histories(open_store(root, durable=True), BASE)
    (twin,) = [v.entry for v in read_versions(root, log_path(root, "dag", DAG, "twin"))]
    assert twin.blob is not None
    assert twin.blob.log, "twin should point into k's log"
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    root = str(tmp_path_factory.mktemp("faults") / "source")
    store = open_store(root)
    write_histories(store, SOURCE)
    return list(export_lines(store))


def read_history(store: Store, key: str) -> History:
    """Every readable version of ``key`` with its value; raises on anything unexpected."""
    out: History = {}
    for entry in store.history(key).entries:
        res = store.get(key, version=entry.version)
        out[entry.version] = res.value if res.found else None
    return out


def read_all(store: Store, keys: list[str]) -> dict[str, History]:
    return {key: read_history(store, key) for key in keys}


@dataclass(frozen=True)
class Operation:
    """One operation under test, and the histories it may leave per key."""

    name: str
    run: Callable[[Store, list[bytes]], object]
    allowed: Callable[[dict[str, History]], dict[str, list[History]]]
    prepare: Callable[[Store], object] | None = None


def _newest_only(h: History) -> History:
    return {max(h): h[max(h)]} if h else {}


def _plus(h: History, value: Any) -> History:
    return {**h, max(h, default=0) + 1: value}


def _source(key: str) -> History:
    out: History = {}
    for n, value in enumerate(SOURCE[key], 1):
        out[n] = value
    return out


def _same(before: dict[str, History]) -> dict[str, list[History]]:
    return {key: [h] for key, h in before.items()}


Allowed = Callable[[dict[str, History]], dict[str, list[History]]]


def _one_changed(key: str, after: Callable[[History], History]) -> Allowed:
    def allowed(before: dict[str, History]) -> dict[str, list[History]]:
        out = _same(before)
        out[key] = [before.get(key, {}), after(before.get(key, {}))]
        return out

    return allowed


def _compacted(before: dict[str, History]) -> dict[str, list[History]]:
    # Per key: untouched, or only the newest version kept; a key whose newest
    # version is a delete may go away entirely (keep-within 0).
    out = {}
    for key, h in before.items():
        options = [h, _newest_only(h)]
        if h and h[max(h)] is None:
            options.append({})
        out[key] = options
    return out


def _imported(overwrite: bool) -> Allowed:
    def allowed(before: dict[str, History]) -> dict[str, list[History]]:
        out = _same(before)
        out["imp"] = [{}, _source("imp")]
        if overwrite:
            out["k"] = [before["k"], _source("k")]
        return out

    return allowed


OPERATIONS: Final = [
    Operation(
        "set",
        lambda s, _: s.set("k", {"new": 1}),
        _one_changed("k", lambda h: _plus(h, {"new": 1})),
    ),
    Operation(
        "set-new-key",
        lambda s, _: s.set("fresh", {"f": 1}),
        _one_changed("fresh", lambda h: {1: {"f": 1}}),
    ),
    Operation(
        "set-shared-blob", lambda s, _: s.set("copy", BIG), _one_changed("copy", lambda h: {1: BIG})
    ),
    Operation(
        "set-after-delete",
        lambda s, _: s.set("gone", {"back": 1}),
        _one_changed("gone", lambda h: _plus(h, {"back": 1})),
    ),
    Operation("delete", lambda s, _: s.delete("k"), _one_changed("k", lambda h: _plus(h, None))),
    Operation(
        "rollback",
        lambda s, _: s.rollback("k", to_version=2),
        _one_changed("k", lambda h: _plus(h, BIG)),
    ),
    Operation("compact", lambda s, _: s.compact(keep_last=1), _compacted),
    Operation("compact-remove", lambda s, _: s.compact(keep_within_seconds=0), _compacted),
    Operation(  # the second compaction of a log: its entries' blob hints are stale
        "compact-again",
        lambda s, _: s.compact(keep_last=1),
        _compacted,
        prepare=lambda s: s.compact(keep_last=3),
    ),
    Operation(
        "gc",
        lambda s, _: s.gc(grace_seconds=0),
        _same,
        prepare=lambda s: s.compact(keep_last=1, keep_within_seconds=0),
    ),
    Operation(
        "import",
        lambda s, lines: import_lines(s, lambda: lines, on_conflict="skip"),
        _imported(False),
    ),
    Operation(
        "import-overwrite",
        lambda s, lines: import_lines(s, lambda: lines, on_conflict="overwrite"),
        _imported(True),
    ),
]
KEYS: Final = ["k", "gone", "other", "twin", "fresh", "copy", "imp"]


# -- the test ----------------------------------------------------------------------------


def _describe(histories: dict[str, History]) -> str:
    return ", ".join(f"{k}={dict(sorted(h.items()))}" for k, h in histories.items() if h)


def _run_one(
    root: str,
    op: Operation,
    fault: Fault,
    nth: int,
    faults: Faults,
    lines: list[bytes],
    *,
    with_state: bool = False,
) -> tuple[bool, list[str]]:
    """One case; returns (the fault fired, problems found)."""
    problems: list[str] = []
    store = open_store(root, durable=True)
    ever = read_all(open_store(root), KEYS)  # before prepare: keys compaction removes
    if op.prepare is not None:
        op.prepare(store)
    if with_state:
        _listing(root)  # makes and fills the namespace's STATE
    before = read_all(open_store(root), KEYS)
    allowed = op.allowed(before)
    match = _is_log if fault.log_only else None
    faults.arm(fault.call, nth, fault.errno, partial=fault.partial, match=match)
    raised: BaseException | None = None
    try:
        op.run(store, lines)
    except BaseException as exc:  # noqa: BLE001 - classified below
        raised = exc
    finally:
        fired = faults.fired
        faults.disarm()
    if not fired:
        if raised is not None:
            problems.append(f"failed without a fault: {raised!r}")
        return False, problems
    if raised is None:
        quiet = faults.target.endswith("STATE") or (
            faults.target.endswith(".vix") and fault.errno == errno.ENOSPC
        )
        if not quiet:
            # (a fault in STATE after the commit point is quiet: derived data, checked below;
            # so is a full disk under a reader's version index: it scans, FORMAT.md §5)
            problems.append("the fault was swallowed: the operation returned normally")
    elif not isinstance(raised, OSError) or isinstance(raised, CastoreError):
        problems.append(f"raised {raised!r}, not OSError")
    elif raised.errno != fault.errno:
        problems.append(f"raised errno {raised.errno}, injected {fault.errno}")

    def verify(phase: str) -> dict[str, History] | None:
        try:
            now = read_all(open_store(root), KEYS)
        except Exception as exc:  # noqa: BLE001 - reported
            problems.append(f"{phase}: reading raised {exc!r}")
            return None
        for key in KEYS:
            if now[key] not in allowed[key]:
                problems.append(
                    f"{phase}: {key} has {now[key]}, allowed {allowed[key]} "
                    f"(before: {_describe(before)})"
                )
        return now

    after = verify("after the fault")
    if with_state and _listing(root) != _listing_from_logs(root):
        problems.append(f"list: {_listing(root)}, from the logs: {_listing_from_logs(root)}")
    report = open_store(root).check()
    if not report.ok:
        repaired = open_store(root).check(repair=True)
        final = open_store(root).check()
        if not final.ok:
            problems.append(
                "check(repair=True) did not make the store ok: "
                f"{[(f.path, f.problem, f.repair) for f in repaired.findings if not f.repaired]}"
            )
        repaired_state = verify("after repair")
        if after is not None and repaired_state is not None and repaired_state != after:
            problems.append(f"repair changed the data: {after} -> {repaired_state}")
    # The same handle carries on: the next version follows the newest one (a removed
    # key's follows its last one: versions never repeat).
    for key in ("k", "gone", "fresh"):
        now = (after or {}).get(key) or before.get(key) or ever.get(key) or {}
        try:
            res = store.set(key, {"next": key})
        except Exception as exc:  # noqa: BLE001 - reported
            problems.append(f"set({key}) after the fault: {exc!r}")
            continue
        if res.version != max(now, default=0) + 1:
            problems.append(f"set({key}) after the fault: version {res.version} after {now}")
        got = open_store(root).get(key)
        if (got.version, got.value) != (res.version, {"next": key}):
            problems.append(f"get({key}) after the next set: {got!r}")
    if not open_store(root).check().ok:
        problems.append("check() not ok after the next sets")
    return True, problems


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
@pytest.mark.parametrize("op", OPERATIONS, ids=[o.name for o in OPERATIONS])
def test_fault_at_every_call(tmp_path, faults, baseline, export, op, fault, record_property):
    problems: list[str] = []
    injected = 0
    for nth in range(1, MAX_CALLS + 1):
        root = str(tmp_path / f"case-{nth}")
        shutil.copytree(baseline, root)
        fired, found = _run_one(root, op, fault, nth, faults, export)
        problems += [f"[{op.name} {fault.name} call #{nth}] {p}" for p in found]
        if not fired:
            break
        injected += 1
        shutil.rmtree(root)
    else:
        pytest.fail(f"{op.name} made {MAX_CALLS} or more {fault.call} calls")
    record_property("faults_injected", injected)
    assert not problems, f"{len(problems)} problems in {injected} injected faults:\n" + "\n".join(
        problems[:15]
    )


STATE_FAULTS: Final = [f for f in FAULTS if f.name in ("write-partial", "open-EIO", "replace-EIO")]


@pytest.mark.parametrize("fault", STATE_FAULTS, ids=[f.name for f in STATE_FAULTS])
@pytest.mark.parametrize("op", OPERATIONS, ids=[o.name for o in OPERATIONS])
def test_fault_at_every_call_with_a_state_index(tmp_path, faults, baseline, export, op, fault):
    # The same with the namespace's STATE in place (a list ran first): its P before
    # the commit point fails the operation, its S after is quiet, and the list it
    # answers afterwards is the one every key's log gives.
    problems: list[str] = []
    for nth in range(1, MAX_CALLS + 1):
        root = str(tmp_path / f"case-{nth}")
        shutil.copytree(baseline, root)
        fired, found = _run_one(root, op, fault, nth, faults, export, with_state=True)
        problems += [f"[{op.name} {fault.name} call #{nth}] {p}" for p in found]
        if not fired:
            break
        shutil.rmtree(root)
    else:
        pytest.fail(f"{op.name} made {MAX_CALLS} or more {fault.call} calls")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:15])


def test_every_operation_meets_every_kind_of_call(tmp_path, faults, baseline, export):
    # The harness itself: each operation makes the calls the faults target, so the
    # matrix above does inject faults (count the calls with a fault that never fires).
    made: dict[str, dict[str, int]] = {}
    for op in OPERATIONS:
        made[op.name] = {}
        for call in Faults.CALLS:
            root = str(tmp_path / f"{op.name}-{call}")
            shutil.copytree(baseline, root)
            store = open_store(root, durable=True)
            if op.prepare is not None:
                op.prepare(store)
            faults.arm(call, 10**9, errno.EIO)
            try:
                op.run(store, export)
            finally:
                made[op.name][call] = faults.seen
                faults.disarm()
    for name, calls in made.items():
        assert calls["open"] > 0, (name, calls)
        if name not in ("gc",):
            assert calls["write"] > 0, (name, calls)
            assert calls["fdatasync"] > 0, (name, calls)
    for name in ("compact", "gc", "import-overwrite", "set-new-key"):
        assert made[name]["replace"] + made[name]["fsync"] > 0, (name, made[name])


def _fd_is_tmp(args: tuple[Any, ...]) -> bool:
    """True when the first argument is a descriptor of a ``*.tmp`` file."""
    try:
        return os.readlink(f"/proc/self/fd/{args[0]}").endswith(".tmp")
    except OSError:
        return False


@pytest.mark.parametrize("operation", ["compact", "gc"])
def test_no_temporary_file_is_left_behind_by_a_failed_rewrite(
    tmp_path, faults, baseline, operation
):
    # A rewrite that fails with ENOSPC while writing the new log must not leave the
    # partial copy behind: on a full disk that is exactly the space it was meant to
    # free, and only gc --grace (default 1 h) would remove it.
    root = str(tmp_path / "s")
    shutil.copytree(baseline, root)
    store = open_store(root, durable=True)
    if operation == "gc":
        store.compact(keep_last=1)
    run: Callable[[], object] = (
        (lambda: store.gc(grace_seconds=0))
        if operation == "gc"
        else (lambda: store.compact(keep_last=1))
    )
    faults.arm("write", 1, errno.ENOSPC, partial=True, match=_fd_is_tmp)
    with pytest.raises(OSError, match="No space left"):
        run()
    assert faults.fired
    faults.disarm()
    leftovers = [
        os.path.relpath(os.path.join(base, name), root)
        for base, _dirs, names in os.walk(root)
        for name in names
        if name.endswith(".tmp")
    ]
    assert leftovers == []


PADDED: Final = [{"v": n, "pad": "x" * 300} for n in range(3)]
SHARED: Final = {"shared": "y" * 400}
LAST: Final = {"after": 1, "pad": "z" * 300}


def _shared_store(root: str) -> None:
    """Key a (versions PADDED, SHARED, LAST) and key b = SHARED stored as a pointer into
    a's log; then a is compacted once, so b's location hint into a's log is stale."""
    store = open_store(root)
    for value in [*PADDED, SHARED]:
        store.set("a", value)
    store.set("b", SHARED)
    store.set("a", LAST)
    (b_entry,) = _entries(root, "b")
    assert b_entry.blob is not None
    assert b_entry.blob.log, "b should point into a's log"
    store.compact(keep_last=2, prefix="a")
    _assert_reads(root)


def _entries(root: str, key: str) -> list[Any]:
    return [v.entry for v in read_versions(root, log_path(root, "dag", DAG, key))]


def _assert_reads(root: str) -> None:
    fresh = open_store(root)
    assert (fresh.get("a").version, fresh.get("a").value) == (5, LAST)
    assert fresh.get("a", version=4).value == SHARED
    assert (fresh.get("b").version, fresh.get("b").value) == (1, SHARED)


@pytest.mark.parametrize("call", ["write", "fdatasync", "replace"])
def test_failed_gc_rewrite_leaves_every_value_readable(tmp_path, faults, call):
    # gc records the new offsets of the blob frames it moves in the blob index
    # (fsynced) before it renames the new log into place (FORMAT.md §8). If the rename
    # never happens (ENOSPC or EIO writing the new log, EIO on rename, a crash there),
    # the index's newest record for a moved blob points into a log that does not
    # exist, and an entry of another log that points at that blob (b here) can no
    # longer find its value until check --repair rebuilds the index.
    root = str(tmp_path / "s")
    _shared_store(root)
    match = _fd_is_tmp if call != "replace" else None
    faults.arm(call, 1, errno.EIO, match=match)
    with pytest.raises(OSError, match="Input/output error"):
        open_store(root, durable=True).gc(grace_seconds=0)
    assert faults.fired
    faults.disarm()
    _assert_reads(root)  # CorruptionError for b here is the bug


@pytest.mark.parametrize("tool", ["gc", "compact"])
def test_reader_during_a_rewrite_sees_every_value(tmp_path, tool):
    # "gc/compact ... while readers and writers continue" (docs/CLI.md): stop the
    # tool's process just before it renames a rewritten log into place (the
    # rewrite-before-rename failpoint) and read meanwhile from this process.
    root = str(tmp_path / "s")
    _shared_store(root)
    command = ["gc", "--grace", "0"] if tool == "gc" else ["compact", "--keep-last", "1"]
    cli = Cli(tmp_path, root, dag=DAG)
    proc = subprocess.Popen(
        cli.argv(*cli.options(), *command),
        env={**cli.env, "CASTORE_FAILPOINTS": "rewrite-before-rename:stop"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_stopped(proc.pid, timeout=60)
        reads = []
        for key, version in (("a", None), ("a", 5), ("b", None), ("b", 1)):
            try:
                got = open_store(root).get(key, version=version)
                reads.append((key, version, got.version, got.value))
            except Exception as exc:  # noqa: BLE001 - reported below
                reads.append((key, version, 0, repr(exc)))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        try:
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert reads == [
        ("a", None, 5, LAST),
        ("a", 5, 5, LAST),
        ("b", None, 1, SHARED),
        ("b", 1, 1, SHARED),
    ]
    fresh = open_store(root)
    assert (fresh.get("a").value, fresh.get("b").value) == (LAST, SHARED)


def _wait_stopped(pid: int, timeout: float) -> None:
    """Wait until the child stopped itself (SIGSTOP at a failpoint)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waited, status = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
        if waited == pid and os.WIFSTOPPED(status):
            return
        if waited == pid:
            raise AssertionError(f"the child ended before the failpoint: status {status}")
        time.sleep(0.01)
    raise AssertionError("the child did not reach the failpoint in time")


# -- the CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["get", "k"],
        ["set", "k", "1"],
        ["delete", "k"],
        ["list"],
        ["history", "k"],
        ["gc"],
        ["compact", "--keep-last", "1"],
        ["check"],
        ["stats"],
        ["export"],
    ],
    ids=lambda c: c[0],
)
def test_cli_os_error_is_exit_1_and_one_line(tmp_path, command):
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"a regular file")
    proc = Cli(tmp_path, blocker / "store").run(*command)
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert proc.stdout == b""
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert err.startswith("castore: "), err
    assert "Traceback" not in err
    assert "Not a directory" in err, err


def test_cli_directory_in_place_of_format_is_a_damaged_store(tmp_path):
    # A FORMAT path that is a directory: refused as damage naming it (exit 5), not a
    # bare EISDIR (exit 1) as before; an OS error outside the store stays exit 1 (above).
    root = tmp_path / "store"
    (root / "FORMAT").mkdir(parents=True)
    proc = Cli(tmp_path, root).run("get", "k")
    err = proc.stderr.decode()
    assert (proc.returncode, proc.stdout) == (EXIT_DAMAGED, b""), err
    assert err.startswith("castore: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert f"{root / 'FORMAT'} is not a regular file" in err, err


def test_not_found_error_is_not_an_os_error():
    # The fault tests rely on telling castore's errors from real OSErrors.
    assert not issubclass(NotFoundError, OSError)
