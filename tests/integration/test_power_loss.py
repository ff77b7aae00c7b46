"""Every call followed by a simulated power loss: what a durable call acknowledged survives.

Two handles per namespace share one store, one durable and one not (``durable=False``
leaves unsynced names and data, as a ``--no-sync`` writer or one killed before its fsync
does). They set and delete keys with values that repeat across keys (deduplication),
compact (keeping one version, or removing deleted keys), gc, list, ``check --repair``,
``import --overwrite``, and, as an operator might, remove or empty a ``KEYS`` file.
After each call, the trees a power loss could leave (``worst``: every unsynced change
lost; ``mixed``, opt-in: a seeded random subset kept) are checked: see
:mod:`tests.integration.powerloss` for what the model keeps and what is checked.

The sequences are seeded (``CASTORE_POWER_LOSS_SEEDS`` seeds, default 12, of
``CASTORE_POWER_LOSS_STEPS`` calls, default 40; ``CASTORE_POWER_LOSS_IMAGES`` is
``worst`` by default, ``worst,mixed`` adds the other image). A failure prints its seed
and the calls made. The scripted tests below are sequences such runs found.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import time
from collections.abc import Callable
from typing import NamedTuple

import pytest

from castore import Store, codec, import_lines
from castore.errors import CastoreError, CorruptionError, UnsafePathError
from tests.helpers import ref_log_path
from tests.integration.powerloss import (
    IMAGES,
    SPACES,
    Expect,
    Handles,
    Image,
    newest,
    real,
    session,
)

pytestmark = pytest.mark.integration

# values of at least 256 bytes are deduplicated across logs
BIG: list[dict[str, object]] = [{"report": c * 600} for c in "abc"]
SMALL: list[dict[str, object]] = [{"n": n} for n in range(3)]

Step = Callable[[Handles, Expect], None]


def _images(text: str) -> tuple[Image, ...]:
    names = text.split(",")
    if unknown := set(names) - set(IMAGES):
        raise ValueError(f"CASTORE_POWER_LOSS_IMAGES: unknown image(s) {sorted(unknown)}")
    return tuple(how for name in names for how in IMAGES if how == name)


SEEDS = int(os.environ.get("CASTORE_POWER_LOSS_SEEDS", "12"))
STEPS = int(os.environ.get("CASTORE_POWER_LOSS_STEPS", "40"))
RUN_IMAGES = _images(os.environ.get("CASTORE_POWER_LOSS_IMAGES", "worst"))


class Op(NamedTuple):
    """One call of a sequence."""

    kind: str
    dag: str
    key: str
    durable: bool
    value: str  # JSON
    extra: float  # rmkeys: below 0.5 removes KEYS, else empties it


ALL_OPS: tuple[str, ...] = ("set",) * 3 + ("delete",) * 2  # the kinds, weighted
ALL_OPS += ("compact", "remove", "gc", "list", "check", "import", "rmkeys")


def gen_ops(seed: int, steps: int, ops: tuple[str, ...] = ALL_OPS) -> list[Op]:
    """The calls of seed ``seed``."""
    rnd = random.Random(seed)
    out = []
    for _ in range(steps):
        dag = rnd.choice(sorted(SPACES)) if rnd.random() < 0.3 else "d"
        key = rnd.choice(SPACES[dag])
        durable = rnd.random() < 0.5
        kind = rnd.choice(ops)
        value = rnd.choice(BIG + SMALL)
        extra = rnd.random()
        out.append(Op(kind, dag, key, durable, json.dumps(value), extra))
    return out


# -- the calls ------------------------------------------------------------------------------
def _who(op: Op) -> str:
    return "D" if op.durable else "Q"


def _what(op: Op) -> str:
    return f"{_who(op)} {op.kind} {op.dag}/{op.key}"


def _set(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    value: object = json.loads(op.value)
    version = h.set(op.key, value).version
    expect.ack((op.dag, op.key), version, value, op.durable)
    return f"{_what(op)} = {str(value)[:14]} -> v{version}"


def _delete(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    if not h.delete(op.key).deleted:
        return _what(op)
    version, _ = newest(h, op.key)
    expect.ack((op.dag, op.key), version, None, op.durable)
    return f"{_what(op)} -> v{version}"


def _compact(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    h.compact(keep_last=1)
    return f"{_who(op)} compact keep_last=1"


def _remove(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """A compaction that removes deleted keys (of every namespace): they get graves."""
    before = {(dag, k): newest(handles[dag, True], k) for dag, keys in SPACES.items() for k in keys}
    h.compact(keep_last=1, keep_within_seconds=0)
    for ref, (version, last) in before.items():
        if last == "delete" and expect.durable.get(ref, 0) > 0:
            expect.grave[ref] = max(expect.grave.get(ref, 0), version)
    return f"{_who(op)} compact keep_within=0 (removes deleted)"


def _gc(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    h.gc(grace_seconds=0)
    return f"{_who(op)} gc"


def _list(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    h.list()
    return f"{_who(op)} list {op.dag}"


def _check(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    h.check(repair=True)
    return f"{_who(op)} check --repair"


def _import(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    value: object = json.loads(op.value)
    try:
        lines, version = overwrite_lines(h, op.dag, op.key, value)
    except CastoreError:
        return f"{_what(op)} (skipped)"
    try:
        import_lines(h, lambda: iter(lines), on_conflict="overwrite")
    except CastoreError as exc:
        return f"{_what(op)} (refused {type(exc).__name__})"
    expect.ack((op.dag, op.key), version, value, op.durable)
    return f"{_what(op)} import-overwrite -> v{version}"


def _rmkeys(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """An operator removes or empties the namespace's ``KEYS``."""
    path = os.path.join(os.path.dirname(ref_log_path(handles[op.dag, True], op.key)), "KEYS")
    if not os.path.exists(path):
        return f"(operator) no KEYS in {op.dag}"
    if op.extra < 0.5:
        os.unlink(path)
        return f"(operator) rm {op.dag}/KEYS"
    os.truncate(path, 0)
    return f"(operator) truncate {op.dag}/KEYS"


CALLS: dict[str, Callable[[Op, Store, Handles, Expect], str]] = {
    "set": _set,
    "delete": _delete,
    "compact": _compact,
    "remove": _remove,
    "gc": _gc,
    "list": _list,
    "check": _check,
    "import": _import,
    "rmkeys": _rmkeys,
}


def overwrite_lines(store: Store, dag: str, key: str, value: object) -> tuple[list[bytes], int]:
    """An export of ``key`` at the version after its newest, holding ``value``; that version."""
    version = newest(store, key)[0] + 1
    now = time.time_ns()
    record = {
        "scope": "dag",
        "namespace": dag,
        "key": key,
        "version": version,
        "op": "set",
        "time_ns": now,
        "created_ns": now,
        "hash": codec.hexdigest(codec.normalize(value)),
        "audit": {},
        "value": value,
    }
    lines = [
        b'{"format":"castore-export","version":2}\n',
        json.dumps(record, separators=(",", ":")).encode() + b"\n",
        b'{"end":"castore-export","versions":1}\n',
    ]
    return lines, version


def run(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    steps: int,
    images: tuple[Image, ...],
) -> str | None:
    """Run seed ``seed``'s calls, each followed by ``images``; what the first failure shows."""
    done: list[str] = []
    with session(tmp_path, monkeypatch) as s:
        for step, op in enumerate(gen_ops(seed, steps)):
            try:
                done.append(CALLS[op.kind](op, s.handles[op.dag, op.durable], s.handles, s.expect))
            except UnsafePathError:
                raise  # nothing in this model is planted: a path castore refuses is its bug
            except CorruptionError as exc:
                done.append(f"refused: {exc}"[:200])
            for how in images:
                problems = s.crash(how, seed * 1000 + step, f"{step}-{how}", f"boot{step}")
                if real(problems):
                    head = f"seed {seed} step {step} image {how}"
                    return "\n".join([head, *done, "--", *problems])
    return None


@pytest.mark.parametrize("seed", range(SEEDS))
def test_power_loss_sequences(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """After every call, every image passes :func:`verify` (the calls made are shown if not)."""
    failure = run(tmp_path, monkeypatch, seed, STEPS, RUN_IMAGES)
    if failure is not None:
        pytest.fail(failure)


# -- scripted sequences ---------------------------------------------------------------------
def scripted(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[Step],
    images: tuple[Image, ...] = ("worst",),
) -> list[str]:
    """Run ``steps`` and crash after the last; the problems of each image."""
    with session(tmp_path, monkeypatch) as s:
        for step in steps:
            step(s.handles, s.expect)
        return [p for how in images for p in s.crash(how, 0, how, "after-crash")]


def put(key: str, value: object, durable: bool, dag: str = "d") -> Step:
    def step(handles: Handles, expect: Expect) -> None:
        expect.ack((dag, key), handles[dag, durable].set(key, value).version, value, durable)

    return step


def delete(key: str, durable: bool, dag: str = "d") -> Step:
    def step(handles: Handles, expect: Expect) -> None:
        h = handles[dag, durable]
        if h.delete(key).deleted:
            expect.ack((dag, key), newest(h, key)[0], None, durable)

    return step


def overwrite(key: str, value: object, durable: bool, dag: str = "d") -> Step:
    """``import --overwrite`` of the version after ``key``'s newest."""

    def step(handles: Handles, expect: Expect) -> None:
        h = handles[dag, durable]
        lines, version = overwrite_lines(h, dag, key, value)
        import_lines(h, lambda: iter(lines), on_conflict="overwrite")
        expect.ack((dag, key), version, value, durable)

    return step


def call(fn: Callable[[Handles], object]) -> Step:
    def step(handles: Handles, expect: Expect) -> None:
        fn(handles)

    return step


def test_durable_keys_rewrite_settles_a_no_sync_namespace(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable KEYS rewrite settles a namespace that a durable=False write made.

    Was: the durable compaction that removes k1 rewrote KEYS durably and unmarked without
    fsyncing the namespace's directories, so the next durable set of k0 only fsynced the
    namespace directory, and a power loss took the namespace and its version 2.
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", SMALL[0], False),
            put("k1", SMALL[1], False),
            delete("k1", False),
            call(lambda h: h["d", True].compact(keep_last=1, keep_within_seconds=0)),
            put("k0", SMALL[2], True),  # acknowledged durable: version 2
        ],
    )
    assert not problems, problems


def test_durable_import_overwrite_settles_the_namespace(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable import --overwrite makes the namespace a durable=False write made durable.

    Was: it replaced the log without settling the namespace's directories and KEYS, so a
    power loss took the acknowledged version 2 with the namespace.
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", SMALL[0], False),
            overwrite("k0", SMALL[1], True),  # acknowledged durable: version 2
        ],
    )
    assert not problems, problems


def test_import_overwrite_into_an_emptied_keys_lists_every_key(tmp_path: pathlib.Path) -> None:
    """An import --overwrite refills an emptied KEYS whole (no power loss needed).

    Was: it wrote a fresh KEYS listing only the imported key, and list lost the others.
    """
    with Store(tmp_path / "s", dag="d") as s:
        s.set("a", 1)
        s.set("b", 2)
        os.truncate(os.path.join(os.path.dirname(ref_log_path(s, "a")), "KEYS"), 0)
        assert [e.key for e in s.list().entries] == ["a", "b"]  # read from the logs' headers
        lines, _ = overwrite_lines(s, "d", "a", 3)
        import_lines(s, lambda: iter(lines), on_conflict="overwrite")
    with Store(tmp_path / "s", dag="d") as fresh:
        assert [e.key for e in fresh.list().entries] == ["a", "b"]


def test_durable_compaction_makes_the_keys_line_of_a_log_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable compaction that rewrites a log makes its key's KEYS line durable first.

    Was: it made k1's rewritten log (written durable=False) durable, but not the KEYS line
    listing k1, so after a power loss list missed a key that get found.
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", SMALL[0], True),
            put("k1", SMALL[1], False),
            put("k1", SMALL[2], False),
            call(lambda h: h["d", True].compact(keep_last=1)),  # durable; rewrites k1's log
        ],
    )
    assert not problems, problems


def test_no_sync_compaction_indexes_moved_blobs_durably(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable=False compaction records the blobs it moves in a durable blob index.

    Was: it moved k0's blob frame, which k1's durable version points at, and recorded the
    new place only in an unsynced index; once a later durable write fsynced the namespace
    directory (the rewritten log's name), a power loss left k1's value unreadable.
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", BIG[0], True),
            put("k1", BIG[0], True),  # k1 points at k0's blob frame
            put("k0", SMALL[0], True),
            call(lambda h: h["d", False].compact(keep_last=1)),  # moves k0's blob frames
            put("k2", SMALL[1], True),  # a new key: fsyncs the namespace directory
        ],
    )
    assert not problems, problems


def test_gc_syncing_a_log_whose_keys_was_removed_makes_the_removal_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc makes a log durable only with what lists its key: here, the removal of ``KEYS``.

    Was (seed 76 of 200): a key compaction removed, written again by a durable=False
    handle into the log compaction had left, then ``KEYS`` removed by an operator: gc's
    index rebuild fdatasynced the log (its version 3 durable) but nothing made the
    removal durable, so after a power loss the old ``KEYS``, which no longer listed the
    key, came back: ``list`` missed a key ``get`` found.
    """

    def remove_keys(h: Handles) -> None:
        os.unlink(os.path.join(os.path.dirname(ref_log_path(h["d", True], "k3")), "KEYS"))

    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k3", SMALL[1], True),
            put("x1", SMALL[1], False, dag="e"),
            delete("k3", False),
            call(lambda h: h["d", False].compact(keep_within_seconds=0)),
            call(lambda h: h["d", False].gc(grace_seconds=0)),
            put("k3", BIG[0], False),
            call(remove_keys),
            call(lambda h: h["d", False].gc(grace_seconds=0)),
        ],
    )
    assert not problems, problems


@pytest.mark.parametrize("durable", [True, False])
def test_a_rewrite_settles_the_logs_its_entries_point_into(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    """A rewritten log is durable once its directory is fsynced: so are the values it uses.

    Was (seeds 250 and 271 of 300): a durable=False write deduplicated onto a value in
    another durable=False log; a compaction rewrote its log (a rewrite always syncs its
    data) and it, or a later call, fsynced the directory: after a power loss the version
    pointed at a value that was never durable (``CorruptionError``).
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k3", SMALL[0], True),
            put("k3", BIG[1], True),  # in k3's own log: kept by the compaction below
            put("k1", BIG[0], False),
            put("k3", BIG[0], False),  # points into k1's log
            call(lambda h: h["d", durable].compact(keep_last=2)),
            call(lambda h: h["d", False].compact(keep_within_seconds=0)),  # GRAVES' fsync
            put("k0", SMALL[0], True),
        ],
    )
    assert not problems, problems


def test_a_durable_write_pointing_into_a_no_sync_log_makes_its_keys_line_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable write deduplicated onto a value in a durable=False log settles its ``KEYS``.

    Was (seeds 99 and 104 of 200): the write fdatasynced that log and settled its name, so
    its durable=False version became durable, but not the ``KEYS`` line listing its key:
    after a power loss ``list`` missed a key ``get`` found.
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k2", BIG[1], True),
            put("k1", BIG[0], False),
            put("x0", BIG[0], True, dag="e"),  # points into d/k1's log
        ],
    )
    assert not problems, problems
