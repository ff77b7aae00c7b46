"""The CLI's quick ``set`` and ``get`` under the power-loss model.

``castore set`` and ``get`` on a store directory first try a path that bypasses
the library (:mod:`castore.cli.quick` over :mod:`castore.file.quickset` and
:mod:`castore.file.peek`; FORMAT.md §6). Here they are calls of the seeded
sequences of :mod:`tests.integration.test_power_loss`, in this process, so the
model records their opens and syncs as it does the library's: a quick ``set``
(durable or ``--no-sync``, on new and existing keys, repeated and compressed
values, guarded by ``--expected-version`` right or wrong or ``--create-only``),
falling back to the full command where the quick path declines, as the CLI
does; and a quick ``get``, whose line must be the full command's wherever it
answers. Every image after every call is checked as there (including, for
every key, that :func:`~castore.file.peek.peek` declines or answers as ``get``).

``CASTORE_POWER_LOSS_QUICK_SEEDS`` seeds (default 3; the steps and images are
the sequences' own settings), and a scripted sequence for what the quick path
must leave to the store.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random

import pytest

import castore
from castore import Store
from castore.cli import COMMANDS
from castore.cli.args import build_parser
from castore.cli.invocation import Invocation
from castore.cli.quick import quick_get, quick_set
from castore.decoding import DECODED
from castore.errors import CastoreError, ConflictError
from tests.integration.powerloss import SCOPE_OF, Expect, Handles
from tests.integration.test_power_loss import (
    ALL_OPS,
    BIG,
    CALLS,
    RUN_IMAGES,
    SMALL,
    STEPS,
    Op,
    Step,
    put,
    run,
    scripted,
)

pytestmark = pytest.mark.integration

SEEDS = int(os.environ.get("CASTORE_POWER_LOSS_QUICK_SEEDS", "3"))
MEDIUM = {"rows": ["a repeated row"] * 9}  # 128-255 bytes: stored compressed
# small values repeat (the entry points at the newest frame); BIG is the full path's
VALUES: list[object] = [*SMALL, MEDIUM, {"s": "text"}, BIG[0]]  # objects: patch and incr edit them
# the sequences' calls, with quick sets and gets among them
QUICK_OPS = ALL_OPS + ("qset",) * 6 + ("qget",) * 2
ANSWERED: collections.Counter[str] = collections.Counter()  # what the quick path answered


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CASTORE_DIR", "DAG_NAME", "CASTORE_ROOT_DAG", "CASTORE_MODE", "DAG_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def _args(h: Store, op: Op, *argv: str) -> argparse.Namespace:
    where = ["--scope", SCOPE_OF[op.dag]] if op.dag in SCOPE_OF else ["--dag", op.dag]
    sync = [] if op.durable else ["--no-sync"]
    return build_parser(castore.__version__).parse_args(["--dir", h.root, *where, *sync, *argv])


def _full(command: str, args: argparse.Namespace) -> bytes:
    """The line of the full command (the library), as the CLI prints it."""
    cmd = Invocation(args)
    token = DECODED.set(False)
    try:
        return b"".join(COMMANDS[command](cmd))
    finally:
        DECODED.reset(token)
        cmd.store.close()


def _guard(extra: float, live: int) -> tuple[list[str], bool]:
    """A guard chosen by ``extra`` (none, most often) and whether it holds for ``live``."""
    if extra < 0.55:
        return [], True
    if extra < 0.65:
        return ["--create-only"], not live
    expected = live if extra < 0.85 else live + 1
    return ["--expected-version", str(expected)], expected == live


def _qset(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """``castore set`` as the CLI runs it: the quick path, else the full command."""
    rnd = random.Random(op.extra)
    value = rnd.choice(VALUES)
    ref = (op.dag, op.key)
    top, now = expect.newest(ref)
    live = top if now is not None else 0
    guard, ok = _guard(rnd.random(), live)
    args = _args(h, op, "set", op.key, json.dumps(value), *guard)
    line = quick_set(args)
    how = "quick" if line is not None else "full"
    if line is None:
        try:
            line = _full("set", args)
        except ConflictError:
            assert not ok, f"{op.dag}/{op.key} {guard}: a conflict, but v{live} is live"
            return f"{_who(op)} qset {op.dag}/{op.key} {guard} (conflict)"
    assert ok, f"{op.dag}/{op.key} {guard}: written ({how}), but v{live} is live"
    version = json.loads(line)["version"]
    expect.ack(ref, version, value, op.durable)
    ANSWERED[f"set {how}"] += 1
    return f"{_who(op)} qset {op.dag}/{op.key} = {str(value)[:14]} {guard} -> v{version} ({how})"


def _qget(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """``castore get``: where the quick path answers, its line is the full command's."""
    args = _args(h, op, "get", op.key)
    line = quick_get(args)
    ANSWERED[f"get {'full' if line is None else 'quick'}"] += 1
    if line is None:
        return f"{_who(op)} qget {op.dag}/{op.key} (declined)"
    try:
        full = _full("get", args)
    except CastoreError as exc:
        raise AssertionError(f"quick get {line!r}, full get: {exc}") from exc
    assert line == full, f"quick get {line!r} != full get {full!r}"
    return f"{_who(op)} qget {op.dag}/{op.key} {line[-40:]!r}"


def _who(op: Op) -> str:
    return "D" if op.durable else "Q"


QUICK_CALLS = {**CALLS, "qset": _qset, "qget": _qget}


@pytest.mark.parametrize("seed", range(SEEDS))
def test_power_loss_sequences_with_the_quick_path(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """After every call, every image passes :func:`verify`; quick gets answer as the full."""
    failure = run(tmp_path, monkeypatch, seed, STEPS, RUN_IMAGES, QUICK_OPS, QUICK_CALLS)
    if failure is not None:
        pytest.fail(failure)


def quick(key: str, value: object, durable: bool, want: str = "quick") -> Step:
    """``castore set`` of ``key`` in namespace ``d``: answered by the path ``want`` names."""

    def step(handles: Handles, expect: Expect) -> None:
        op = Op("qset", "d", key, durable, json.dumps(value), 0.0)
        args = _args(handles["d", durable], op, "set", key, op.value)
        line = quick_set(args)
        assert ("quick" if line is not None else "full") == want, (key, value, durable)
        version = json.loads(line if line is not None else _full("set", args))["version"]
        expect.ack(("d", key), version, value, durable)

    return step


def test_a_durable_quick_set_leaves_a_no_sync_namespace_to_the_store(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a ``--no-sync`` write left names unsynced, the quick path declines a durable set.

    The store then settles the namespace and ``KEYS`` before its commit. A quick path that
    only fdatasynced the log (its mark ignored) lost the whole namespace: "newest v0 <
    durably acked v2". Repeated values point at an unsynced frame the durable set syncs.
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", SMALL[0], False),  # a new namespace and log, marked
            quick("k0", SMALL[1], True, want="full"),  # the store settles them
            quick("k0", MEDIUM, False),  # unmarked now: the quick path, unsynced
            quick("k0", MEDIUM, True),  # points at that frame, which its fdatasync covers
        ],
    )
    assert not problems, problems
