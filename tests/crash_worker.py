"""Crash-test harness: child workloads that acknowledge what castore returned, and the checks.

Run as a child process (the parent sets ``CASTORE_FAILPOINTS`` in its environment)::

    python -m tests.crash_worker write --root DIR --ack FILE --seed N --ops N
    python -m tests.crash_worker compact --root DIR --ack FILE --keep-last N
    python -m tests.crash_worker gc --root DIR --ack FILE
    python -m tests.crash_worker set --root DIR --ack FILE --key K --value JSON

Every child appends JSON lines to its ``--ack`` file: ``{"t": "try", ...}`` before a
call into the library and ``{"t": "ack", ...}`` after it returned (fsynced when
the store is durable). Only acknowledged writes must survive a kill; an
attempted one may or may not be there, but nothing else may appear.

The parent side (:class:`Children`, :func:`verify`, :class:`Lane`) is shared by
``tests/integration/test_kill.py``, ``tests/integration/test_gc_races.py`` and
``tools/crash_torture.py``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import random
import re
import select
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from castore import GetResult, Store
from castore.errors import CastoreError, NotFoundError
from castore.file.peek import peek
from castore.keys import Ref

__all__ = [
    "DAG",
    "KEYS",
    "NAMED_POINTS",
    "WAIT_SECONDS",
    "AckLog",
    "Children",
    "Figures",
    "Lane",
    "Verdict",
    "Workload",
    "classify",
    "main",
    "proc_state",
    "read_records",
    "verify",
    "wait_stopped",
]

CHECKOUT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAG: Final = "crash"
KEYS: Final = tuple(f"k{i}" for i in range(5))
WAIT_SECONDS: Final = 30.0  # every wait on a child ends within this
WRITE_OPS: Final = ("set", "delete", "rollback")
# The named points of castore/py this harness kills at, in protocol order.
NAMED_POINTS: Final = (
    "before-append",
    "after-append",
    "rewrite-before-rename",
    "rewrite-after-rename",
    "compact-after-bury",
    "gc-after-mark",
    "rewrite-before-remove",
)

Record = dict[str, Any]


def canon(value: Any) -> str:
    """A JSON value as comparable text (``None`` stands for a tombstone)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- the child side ---------------------------------------------------------------------


class AckLog:
    """Appends one JSON line per event to the ack file (``O_APPEND``, one ``write(2)`` each).

    A line written before a SIGKILL survives it (the kernel keeps the page);
    ``sync`` also fsyncs acknowledgements, as a durable caller would.
    """

    def __init__(self, path: str, *, sync: bool) -> None:
        self.sync = sync
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(self.fd).st_size
        if size and os.pread(self.fd, 1, size - 1) != b"\n":
            os.write(self.fd, b"\n")  # a line cut by a kill stays alone on its line

    def write(self, **fields: Any) -> None:
        """Append one record; fsync it when it is an acknowledgement and ``sync`` is set."""
        fields["pid"] = os.getpid()
        line = (json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n").encode()
        os.write(self.fd, line)
        if self.sync and fields.get("t") == "ack":
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)

    def __enter__(self) -> AckLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Workload:
    """A random mix of writes and maintenance through the library, each one logged.

    Writes: new values, another key's value (a cross-log dedup), an older value
    of the same key (possibly one compaction dropped: its blob is unreferenced),
    deletes, rollbacks, first writes of new keys. Maintenance: compaction
    (``keep_last``; with ``allow_remove`` also ``keep_within=0``, which removes
    deleted keys) and gc with no grace period.
    """

    def __init__(
        self,
        store: Store,
        log: AckLog,
        rng: random.Random,
        *,
        tag: str,
        writes_only: bool = False,
        allow_remove: bool = False,
    ) -> None:
        self.store = store
        self.log = log
        self.rng = rng
        self.tag = tag
        self.writes_only = writes_only
        self.allow_remove = allow_remove
        self.values: dict[str, list[Any]] = {k: [] for k in KEYS}
        self.new_keys = 0

    def load(self) -> None:
        """Learn recent values of the keys from the store (errors are the verifier's job)."""
        for key in KEYS:
            with contextlib.suppress(CastoreError):
                for entry in self.store.history(key, limit=4).entries:
                    with contextlib.suppress(CastoreError):
                        got = self.store.get(key, version=entry.version)
                        if got.found:
                            self.values[key].append(got.value)

    def new_value(self, key: str) -> dict[str, Any]:
        """A fresh value; sizes vary (raw, zstd, incompressible) and often coincide.

        About half are over ``DEDUP_MIN_BYTES`` (256): only those are deduplicated
        across logs and recorded in the blob index.
        """
        rng = self.rng
        size = rng.choice((0, 4, 12, 40, 260, 300, 300, 500))
        letters = string.ascii_letters if rng.random() < 0.5 else "ab"
        return {
            "k": key,
            "n": rng.randrange(1000, 10000),
            "t": self.tag,
            "pad": "".join(rng.choices(letters, k=size)),
        }

    def set_value(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` and acknowledge the version the library returned."""
        self.log.write(t="try", op="set", key=key, value=value)
        res = self.store.set(key, value)
        self.log.write(t="ack", op="set", key=key, version=res.version, value=value)
        self.values.setdefault(key, []).append(value)

    def delete(self, key: str) -> None:
        """Delete ``key``; acknowledge the tombstone's version (0: nothing was written)."""
        self.log.write(t="try", op="delete", key=key, value=None)
        res = self.store.delete(key)
        version = 0
        if res.deleted:  # single writer: the newest version is our tombstone
            version = self.store.history(key, limit=1).entries[0].version
        self.log.write(t="ack", op="delete", key=key, version=version, value=None)

    def rollback(self, key: str) -> None:
        """Roll ``key`` back to a random earlier version it still has."""
        entries = self.store.history(key, limit=6).entries
        if len(entries) < 2:
            return self.set_value(key, self.new_value(key))
        target = self.rng.choice(entries[1:]).version
        got = self.store.get(key, version=target)
        value = got.value if got.found else None
        if value is None and entries[0].operation == "delete":
            # The key is absent and the target a delete: a rollback writes nothing.
            return self.set_value(key, self.new_value(key))
        self.log.write(t="try", op="rollback", key=key, value=value, to=target)
        res = self.store.rollback(key, to_version=target)
        self.log.write(t="ack", op="rollback", key=key, version=res.version, value=value)
        return None

    def compact(self, keep_last: int, keep_within: float | None) -> None:
        """Compact the store; record the policy first (it explains dropped versions)."""
        self.log.write(t="try", op="compact", keep_last=keep_last, keep_within=keep_within)
        self.store.compact(keep_last=keep_last, keep_within_seconds=keep_within)
        self.log.write(t="ack", op="compact", keep_last=keep_last, keep_within=keep_within)

    def gc(self, grace: float = 0.0) -> None:
        """Collect garbage."""
        self.log.write(t="try", op="gc", grace=grace)
        self.store.gc(grace_seconds=grace)
        self.log.write(t="ack", op="gc", grace=grace)

    def step(self) -> None:
        """One random operation (and now and then a list: STATE exists when writers die)."""
        rng = self.rng
        if rng.random() < 0.05:
            self.store.list()
        key = rng.choice(KEYS)
        roll = rng.random()
        if self.writes_only:
            roll *= 0.86
        if roll < 0.45:
            self.set_value(key, self.new_value(key))
        elif roll < 0.55:  # another key's value: its blob lives in the other key's log
            got = self.store.get(rng.choice(KEYS))
            self.set_value(key, got.value if got.found else self.new_value(key))
        elif roll < 0.64:  # an older value: the blob may be one compaction left unreferenced
            old = self.values.get(key)
            self.set_value(key, rng.choice(old) if old else self.new_value(key))
        elif roll < 0.70:
            self.delete(key)
        elif roll < 0.76:
            self.rollback(key)
        elif roll < 0.86:
            self.new_keys += 1
            self.set_value(f"n{self.tag}x{self.new_keys}", self.new_value(key))
        elif roll < 0.94:
            within = 0.0 if self.allow_remove and rng.random() < 0.4 else None
            self.compact(rng.randint(1, 3), within)
        else:
            self.gc()


def _child_store(args: argparse.Namespace) -> Store:
    return Store(args.root, dag=DAG, durable=args.durable)


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one child role (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m tests.crash_worker", description=__doc__)
    ap.add_argument("role", choices=("write", "compact", "gc", "set"))
    ap.add_argument("--root", required=True)
    ap.add_argument("--ack", required=True)
    ap.add_argument("--durable", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ops", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--writes-only", action="store_true")
    ap.add_argument("--new-key", action="store_true", help="write: first write of a new key")
    ap.add_argument("--allow-remove", action="store_true")
    ap.add_argument("--keep-last", type=int, default=1)
    ap.add_argument("--keep-within", type=float, default=None)
    ap.add_argument("--grace", type=float, default=0.0)
    ap.add_argument("--key", default="")
    ap.add_argument("--value", default="null", help="set: the value as JSON")
    args = ap.parse_args(argv)
    store = _child_store(args)
    with AckLog(args.ack, sync=args.durable) as log:
        work = Workload(
            store,
            log,
            random.Random(args.seed),
            tag=args.tag or str(args.seed),
            writes_only=args.writes_only,
            allow_remove=args.allow_remove,
        )
        if args.role == "write":
            if not args.new_key:
                work.load()
            _ready()
            for _ in range(args.ops):
                if args.new_key:
                    work.new_keys += 1
                    work.set_value(f"n{work.tag}x{work.new_keys}", work.new_value("new"))
                else:
                    work.step()
        elif args.role == "compact":
            _ready()
            work.compact(args.keep_last, args.keep_within)
        elif args.role == "gc":
            _ready()
            work.gc(args.grace)
        else:
            _ready()
            work.set_value(args.key, json.loads(args.value))
    return 0


# -- the parent side: children ----------------------------------------------------------


def proc_state(pid: int) -> str:
    """The state letter of ``/proc/<pid>/stat`` (``T`` stopped, ``Z`` zombie, ...); ``""``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except FileNotFoundError:
        return ""
    return text.rpartition(")")[2].split()[0]


def wait_stopped(proc: subprocess.Popen[bytes], timeout: float = WAIT_SECONDS) -> bool:
    """Wait until ``proc`` stops itself (SIGSTOP at a ``:stop`` failpoint); False if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = proc_state(proc.pid)
        if state in ("T", "t"):
            return True
        if state in ("", "Z", "X") or proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise TimeoutError(f"child {proc.pid} did not stop within {timeout} s")


class Children:
    """Starts ``python -m tests.crash_worker`` children; on exit kills and reaps every one."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stderr: dict[int, str] = {}
        self.count = 0

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reap_all()

    def spawn(
        self, args: Sequence[str], *, failpoints: str = "", ready: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start a child role; ``failpoints`` goes into its ``CASTORE_FAILPOINTS``."""
        env = dict(os.environ)
        env.pop("CASTORE_FAILPOINTS", None)
        if failpoints:
            env["CASTORE_FAILPOINTS"] = failpoints
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (CHECKOUT, env.get("PYTHONPATH"))))
        self.count += 1
        errpath = os.path.join(self.workdir, f"child-{self.count}.err")
        with open(errpath, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.crash_worker", *args],
                cwd=CHECKOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
                stderr=err,
            )
        self.procs.append(proc)
        self.stderr[proc.pid] = errpath
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = WAIT_SECONDS) -> bool:
        """Wait for the child's ``ready`` line; False when it exited first."""
        assert proc.stdout is not None, "spawn(ready=True) gives the child a stdout pipe"
        poller = select.poll()  # not select(): a worker may hold descriptors past 1,024
        poller.register(proc.stdout, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"child {proc.pid} not ready within {timeout} s")
        return proc.stdout.readline() == b"ready\n"

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = WAIT_SECONDS) -> int:
        """Wait for ``proc`` to end (at most ``timeout``) and reap it; its return code."""
        code = proc.wait(timeout=timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        return code

    def kill(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGKILL ``proc`` (by its pid, if it still runs) and reap it."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        return self.wait(proc)

    def error_text(self, proc: subprocess.Popen[bytes], lines: int = 4) -> str:
        """The last lines of a child's stderr (the end of its traceback), on one line."""
        try:
            with open(self.stderr[proc.pid], "rb") as fh:
                text = fh.read()[-8192:].decode("utf-8", "replace")
        except (KeyError, FileNotFoundError):
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:])

    def reap_all(self) -> None:
        """Kill every child still running (stopped ones too) and reap them all."""
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                self.kill(proc)
        self.procs.clear()


# -- the parent side: verification ------------------------------------------------------


def read_records(path: str) -> list[Record]:
    """The complete lines of an ack file.

    A line cut by a kill (a long line can be written partly) is ignored: the
    child died while writing it, so it acknowledges nothing, and a cut attempt
    line means the call it announced never started.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


@dataclass
class Verdict:
    """What :func:`verify` found: violations (``kind: detail``) and whether it repaired."""

    violations: list[str] = field(default_factory=list)
    repaired: bool = False
    repaired_problems: list[str] = field(default_factory=list)  # what the repair was for
    acked: int = 0

    @property
    def kinds(self) -> collections.Counter[str]:
        """Violations counted by kind."""
        return collections.Counter(v.partition(":")[0] for v in self.violations)


@dataclass
class _Key:
    # (record index, version, canonical value, op) of each acknowledged write
    acked: list[tuple[int, int, str, str]] = field(default_factory=list)
    intents: list[tuple[int, str]] = field(default_factory=list)  # index, value


class _Model:
    """What the ack records say: per key, the acknowledged versions and the attempts."""

    def __init__(self, records: list[Record]) -> None:
        self.keys: dict[str, _Key] = {}
        self.compactions: list[tuple[int, int, float | None]] = []
        for index, rec in enumerate(records):
            op = rec.get("op")
            if op == "compact" and rec["t"] == "try":
                self.compactions.append((index, rec["keep_last"], rec.get("keep_within")))
            if op not in WRITE_OPS:
                continue
            key = self.keys.setdefault(rec["key"], _Key())
            if rec["t"] == "try":
                key.intents.append((index, canon(rec["value"])))
            elif rec["t"] == "ack" and rec["version"]:
                key.acked.append((index, rec["version"], canon(rec["value"]), op))

    def compacted(self, key: str, index: int) -> bool:
        """May a compaction begun after record ``index`` have dropped that version of ``key``?

        With ``keep_last`` K, only when K writes of the key began after it (or the
        compaction could remove a deleted key: ``keep_within``).
        """
        intents = self.keys[key].intents
        for at, keep_last, keep_within in self.compactions:
            if at <= index:
                continue
            if keep_within is not None:
                return True
            if sum(1 for i, _ in intents if index < i < at) >= keep_last:
                return True
        return False


def _pattern(problem: str) -> str:
    """A check finding without its numbers, digests and ref names (to count alike ones)."""
    text = re.sub(r"[0-9a-f]{32,}", "<hex>", problem)
    text = re.sub(r"dag/crash/\S+", "<ref>", text)
    return re.sub(r"\d+", "N", text)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(store: Store, key: str, version: int) -> tuple[str | None, str]:
    """(canonical value or ``"null"`` for a tombstone, "") or (None, error text)."""
    try:
        got = store.get(key, version=version)
    except NotFoundError as exc:
        return None, f"NotFoundError: {exc}"
    except CastoreError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if got.found and got.version != version:
        return None, f"get(version={version}) returned version {got.version}"
    return (canon(got.value) if got.found else canon(None)), ""


def _check_acked(store: Store, model: _Model, kind_prefix: str = "") -> list[str]:
    out = []
    for key, info in sorted(model.keys.items()):
        last = 0
        for index, version, value, _op in info.acked:
            if version <= last:
                out.append(f"{kind_prefix}ack-order: {key} acked version {version} after {last}")
            last = max(last, version)
            got, error = _read(store, key, version)
            if got is not None:
                if got != value:
                    out.append(
                        f"{kind_prefix}wrong-value: {key} v{version} reads {_short(got)}, "
                        f"acked {_short(value)}"
                    )
                continue
            if error.startswith("NotFoundError") and model.compacted(key, index):
                if "compacted" not in error:
                    out.append(f"{kind_prefix}compacted-message: {key} v{version}: {error}")
                continue
            kind = "lost" if error.startswith("NotFoundError") else "unreadable"
            out.append(f"{kind_prefix}{kind}: {key} v{version} (acked {_short(value)}): {error}")
    return out


def _check_list(store: Store, model: _Model) -> list[str]:
    """``list`` (answered from STATE where it is trusted) names what ``get`` reads."""
    try:
        res = store.list()
    except CastoreError as exc:
        return [f"unreadable: list: {type(exc).__name__}: {exc}"]
    listed = {e.key: (e.version, e.hash) for e in res.entries}
    out = []
    for key in sorted(set(model.keys) | set(listed)):
        try:
            current = store.get(key)
        except CastoreError:
            continue  # damage: get reports it; list names the version last recorded
        want = (current.version, current.hash) if current.found else None
        if listed.get(key) != want and key not in res.skipped:
            out.append(f"list-wrong: {key} listed as {listed.get(key)}, get reads {want}")
    return out


def _check_history(store: Store, model: _Model) -> list[str]:
    out = []
    for key, info in sorted(model.keys.items()):
        quick = peek(store.root, Ref("dag", DAG, key))
        try:
            entries = store.history(key).entries
            current = store.get(key)
        except CastoreError as exc:
            out.append(f"unreadable: {key} history/current: {type(exc).__name__}: {exc}")
            if quick is not None:
                out.append(f"quick-mismatch: {key} peek gives v{quick[0]}, get() raises")
            continue
        out += _check_quick(quick, key, current)
        versions = [e.version for e in entries]
        if any(a <= b for a, b in itertools.pairwise(versions)):
            out.append(f"history-order: {key} history versions {versions}")
        newest = versions[0] if versions else 0
        acked = {v: value for _, v, value, _ in info.acked}
        last_index, last_version = max(((i, v) for i, v, _, _ in info.acked), default=(-1, 0))
        if newest < last_version:
            # A compaction with keep_within removes a key whose newest version is a
            # tombstone: the acknowledged one, or a delete tried after it.
            removed = any(
                at > last_index
                and within is not None
                and (
                    acked[last_version] == canon(None)
                    or any(last_index < i < at and v == canon(None) for i, v in info.intents)
                )
                for at, _, within in model.compactions
            )
            if not removed:
                out.append(f"newest-behind: {key} newest {newest} < acked {last_version}")
        intended = {value for _, value in info.intents}
        for version in versions:
            if version in acked:
                continue
            got, error = _read(store, key, version)
            if got is None:
                out.append(f"unreadable: {key} v{version} (tried, not acknowledged): {error}")
            elif got not in intended:
                out.append(f"phantom: {key} v{version} holds {_short(got)}, never tried")
        if entries:
            live = entries[0].operation != "delete"
            got, _error = _read(store, key, newest)
            seen = canon(current.value) if current.found else canon(None)
            if current.found != live or (live and current.version != newest) or got != seen:
                out.append(
                    f"current-mismatch: {key} get() gives {current.version}/{_short(seen)}, "
                    f"history newest {newest}/{_short(got or '')}"
                )
        elif current.found:
            out.append(f"current-mismatch: {key} get() found v{current.version}, no history")
    return out


def _check_quick(quick: tuple[int, str, bytes] | None, key: str, current: GetResult) -> list[str]:
    """The CLI's quick read (``peek``) declined or answered what ``get()`` answered."""
    if quick is None:
        return []
    found, version, value = bool(quick[0]), quick[0], quick[2]
    same = found == current.found and (
        not found or (version, value) == (current.version, current.value_json)
    )
    if same:
        return []
    return [f"quick-mismatch: {key} peek gives v{version}, get() v{current.version}"]


def verify(root: str, records: list[Record], *, repair: bool = True) -> Verdict:
    """Check a store against the ack records of every process that wrote to it.

    Reads come first (as a restarted application would read, before any
    repair); then ``check``; when it is not ok, one ``check(repair=True)``,
    after which ``check`` must be ok and every acknowledged write still read back.
    """
    verdict = Verdict()
    model = _Model(records)
    verdict.acked = sum(len(k.acked) for k in model.keys.values())
    try:
        store = Store(root, dag=DAG, durable=False)
    except CastoreError as exc:
        verdict.violations.append(f"open: {type(exc).__name__}: {exc}")
        return verdict
    verdict.violations += _check_acked(store, model)
    verdict.violations += _check_history(store, model)
    verdict.violations += _check_list(store, model)
    report = store.check()
    if not report.ok and repair:
        verdict.repaired = True
        verdict.repaired_problems = sorted(
            {_pattern(f.problem) for f in report.findings if f.severity != "info"}
        )
        store.check(repair=True)
        store = Store(root, dag=DAG, durable=False)
        report = store.check()
        before = {v.partition(":")[2] for v in verdict.violations}
        verdict.violations += [
            v
            for v in _check_acked(store, model, "lost-by-repair/")
            if v.partition(":")[2] not in before
        ]
    if not report.ok:
        problems = sorted(
            {
                f"{f.path}: {f.problem} (repair: {f.repair})"
                for f in report.findings
                if not f.repaired and f.severity != "info"
            }
        )
        verdict.violations.append("check-unrepairable: " + " | ".join(problems))
    return verdict


# -- the parent side: cycles ------------------------------------------------------------

_CAUSES: Final = (
    ("no header frame", "empty log left by a killed first write"),
    ("blob record holds", "location hint names another blob frame (digest mismatch)"),
    ("is missing or damaged", "blob found neither at its hint nor through the index"),
    ("has no version", "no 'compacted' in the message"),
)


def classify(violation: str) -> str:
    """A violation's kind and, when known, its cause (to count alike ones together)."""
    kind = violation.partition(":")[0]
    for needle, cause in _CAUSES:
        if needle in violation:
            return f"{kind} ({cause})"
    return kind


@dataclass
class Figures:
    """Counts over a run of cycles."""

    cycles: int = 0
    kills: int = 0
    completed: int = 0  # random-moment children that finished before the kill came
    missed: int = 0  # named-point children that did not die at their point
    repairs: int = 0
    acked: int = 0
    violations: int = 0  # cycles with at least one violation
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    points: collections.Counter[str] = field(default_factory=collections.Counter)
    repaired: collections.Counter[str] = field(default_factory=collections.Counter)
    missed_at: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, other: Figures) -> None:
        """Add another run's counts to these."""
        for name in ("cycles", "kills", "completed", "missed", "repairs", "acked", "violations"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.kinds.update(other.kinds)
        self.points.update(other.points)
        self.repaired.update(other.repaired)
        self.missed_at.update(other.missed_at)
        for kind, text in other.examples.items():
            self.examples.setdefault(kind, text)

    def summary(self) -> str:
        """One paragraph for a test failure or the tool's output."""
        lines = [
            f"cycles run: {self.cycles}, kills: {self.kills}, "
            f"violations found: {self.violations} cycles ({sum(self.kinds.values())} in all), "
            f"repairs needed: {self.repairs}, acked writes checked: {self.acked}, "
            f"children done before the kill: {self.completed}, missed failpoints: {self.missed}"
        ]
        if self.missed_at:
            lines.append(f"  missed failpoints by point: {dict(self.missed_at)}")
        lines += [f"  {kind}: {n}  e.g. {self.examples[kind]}" for kind, n in self.kinds.items()]
        return "\n".join(lines)


class Lane:
    """A sequence of kill cycles on a store that is reused for ``epoch`` cycles.

    A cycle starts children that write through the library and kills them
    (at a random moment, or at a named failpoint), then :func:`verify`. After
    ``epoch`` cycles, or a violation, the next cycle starts on a fresh store.
    """

    def __init__(self, workdir: str, children: Children, seed: int, *, epoch: int = 8) -> None:
        self.workdir = workdir
        self.children = children
        self.rng = random.Random(seed)
        self.seed = seed
        self.epoch = epoch
        self.figures = Figures()
        self.round = 0
        self.in_epoch = 0
        self.root = self.ack = ""
        self.fresh()

    def fresh(self) -> None:
        """Start a new store and ack file (the old ones are deleted)."""
        for path in (self.root, self.ack):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self.round += 1
        self.in_epoch = 0
        self.root = os.path.join(self.workdir, f"store-{self.seed}-{self.round}")
        self.ack = os.path.join(self.workdir, f"ack-{self.seed}-{self.round}.jsonl")
        work = self._parent(durable=False)  # every key exists: first writes are the exception
        with work.log:
            for key in KEYS:
                work.set_value(key, work.new_value(key))

    def _args(self, role: str, durable: bool, *extra: str) -> list[str]:
        seed = self.rng.randrange(1 << 30)
        args = [role, "--root", self.root, "--ack", self.ack, "--seed", str(seed), *extra]
        return [*args, "--durable"] if durable else args

    def _parent(self, durable: bool) -> Workload:
        store = Store(self.root, dag=DAG, durable=durable)
        log = AckLog(self.ack, sync=durable)
        seed = self.rng.randrange(1 << 30)
        return Workload(store, log, random.Random(seed), tag=f"p{seed}")

    def _reused(self, work: Workload, key: str) -> Any:
        """A value of ``key`` to set on another key: its newest, or an older one."""
        entries = work.store.history(key, limit=3).entries
        for entry in self.rng.sample(entries, len(entries)):
            got = work.store.get(key, version=entry.version)
            if got.found:
                return got.value
        return work.new_value(key)

    def _finish(self, problems: list[str]) -> list[str]:
        verdict = verify(self.root, read_records(self.ack))
        violations = problems + verdict.violations
        fig = self.figures
        fig.cycles += 1
        fig.repairs += verdict.repaired
        fig.repaired.update(verdict.repaired_problems)
        fig.acked += verdict.acked
        if violations:
            fig.violations += 1
            for v in violations:
                kind = classify(v)
                fig.kinds[kind] += 1
                fig.examples.setdefault(kind, v[:400])
        self.in_epoch += 1
        if violations or self.in_epoch >= self.epoch:
            self.fresh()
        return violations

    def _expect_kill(self, proc: subprocess.Popen[bytes], point: str) -> list[str]:
        code = self.children.wait(proc)
        if code == -signal.SIGKILL:
            self.figures.kills += 1
            self.figures.points[point] += 1
            return []
        self.figures.missed += 1
        self.figures.missed_at[point] += 1
        text = self.children.error_text(proc)
        if code != 0:
            return [f"child-error: exit {code} at {point}: {text}"]
        return []

    def random_cycle(self, *, durable: bool, max_delay: float, allow_remove: bool) -> list[str]:
        """Kill a random workload child at a random moment; verify."""
        extra = ["--ops", "2000"] + (["--allow-remove"] if allow_remove else [])
        proc = self.children.spawn(self._args("write", durable, *extra), ready=True)
        problems: list[str] = []
        if self.children.wait_ready(proc):
            time.sleep(self.rng.uniform(0, max_delay))
        if proc.poll() is None:
            self.children.kill(proc)
            self.figures.kills += 1
            self.figures.points["random"] += 1
        else:
            code = self.children.wait(proc)
            self.figures.completed += 1
            if code != 0:
                problems.append(f"child-error: exit {code}: {self.children.error_text(proc)}")
        return self._finish(problems)

    def named_cycle(self, point: str, *, durable: bool) -> list[str]:
        """Prepare the store in this process, then kill a child at ``point``; verify."""
        rng = self.rng
        problems: list[str] = []
        work = self._parent(durable)
        try:
            key = rng.choice(KEYS)
            if point in ("before-append", "after-append"):
                for _ in range(rng.randint(0, 2)):
                    work.step()
                extra = ["--writes-only", "--ops", "20"]  # a delete of a deleted key writes nothing
                extra += ["--new-key"] if rng.random() < 0.2 else []
                args = self._args("write", durable, *extra)
            elif point == "compact-after-bury":
                work.set_value(key, work.new_value(key))
                work.delete(key)
                args = self._args("compact", durable, "--keep-last", str(rng.randint(1, 3)))
                args += ["--keep-within", "0"]
            elif point == "rewrite-before-remove" and self.figures.points[point] % 2:
                # A first write killed before its append leaves an empty log (FORMAT.md §7);
                # gc removes such logs, and is killed just before it does.
                first = self.children.spawn(
                    self._args("write", durable, "--new-key"), failpoints="before-append"
                )
                problems += self._expect_kill(first, "before-append")
                args = self._args("gc", durable)
            elif point == "rewrite-before-remove":
                # Compaction removes a deleted key (its log keeps only blob frames);
                # gc then empties that log, and is killed just before removing it.
                key = f"r{work.tag}"  # a key of its own: no other log shares its blobs
                work.set_value(key, work.new_value(key))
                work.delete(key)
                work.compact(1, 0.0)
                args = self._args("gc", durable)
            else:  # rewrite-before-rename, rewrite-after-rename, gc-after-mark
                for _ in range(3):  # versions for compaction to drop, blobs for gc to free
                    work.set_value(key, work.new_value(key))
                # Another key reuses a blob of this log (a cross-log reference, when the
                # value is large enough): a later rewrite of this log moves that blob.
                other = rng.choice([k for k in KEYS if k != key])
                work.set_value(other, self._reused(work, key))
                use_gc = point == "gc-after-mark" or rng.random() < 0.5
                if use_gc:  # compaction leaves unreferenced blobs for gc to sweep
                    work.compact(1, None)
                    args = self._args("gc", durable)
                else:
                    args = self._args("compact", durable, "--keep-last", str(rng.randint(1, 2)))
        finally:
            work.log.close()
        proc = self.children.spawn(args, failpoints=point)
        problems += self._expect_kill(proc, point)
        return self._finish(problems)


if __name__ == "__main__":
    sys.exit(main())
