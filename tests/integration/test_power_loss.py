"""Every call followed by a simulated power loss: what a durable call acknowledged survives.

Two handles per namespace share one store, one durable and one not (``durable=False``
leaves unsynced names and data, as a ``--no-sync`` writer or one killed before its fsync
does). They set and delete keys with values that repeat across keys (deduplication),
compact (keeping one version, or removing deleted keys), gc, list, ``check --repair``,
``import --overwrite``, and, as an operator might, remove or empty a ``KEYS`` file. They
also roll back to acknowledged versions, patch, increment, set under guards
(``expected_version`` right or wrong, ``create_only``), ``diff``, compact keeping more
(the last 2 or 3, an hour, one namespace), import several keys of several namespaces
(``skip`` or ``overwrite``, starting higher, with deletes), export, read versions and
history, write through handles opened for one call (cold caches), write the global
scope, and go on in the ``worst`` image of a power loss (``check --repair`` first, or
not) so that the next power loss is a second-generation one.
After each call, the trees a power loss could leave (``worst``: every unsynced change
lost; ``mixed``, opt-in: a seeded random subset kept) are checked: see
:mod:`tests.integration.powerloss` for what the model keeps and what is checked.

The sequences are seeded (``CASTORE_POWER_LOSS_SEEDS`` seeds, default 12, of
``CASTORE_POWER_LOSS_STEPS`` calls, default 40; ``CASTORE_POWER_LOSS_IMAGES`` is
``worst`` by default, ``worst,mixed`` adds the other image). A failure prints its seed
and the calls made. The scripted tests below are sequences such runs found.
:mod:`tests.integration.test_power_loss_quick` adds the CLI's quick ``set`` and ``get``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import time
from collections.abc import Callable
from typing import NamedTuple

import pytest

from castore import Store, codec, export_lines, import_lines
from castore.errors import (
    CastoreError,
    ConflictError,
    CorruptionError,
    NotFoundError,
    UnsafePathError,
)
from tests.helpers import ref_log_path
from tests.integration.powerloss import (
    IMAGES,
    SCOPE_OF,
    SPACES,
    Expect,
    Handles,
    Image,
    newest,
    open_store,
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
# read-modify-write, guarded and history-driven writes, other retentions, whole-store
# import and export, reads that build version indexes, handles opened cold, and a
# second-generation crash (the worst image, repaired, written on, crashed again)
ALL_OPS += ("rollback",) * 2 + ("patch", "incr", "cas", "diff", "retain", "import_many")
ALL_OPS += ("export", "readv", "cold", "cold", "reboot")


def gen_ops(seed: int, steps: int, ops: tuple[str, ...] = ALL_OPS) -> list[Op]:
    """The calls of seed ``seed``."""
    rnd = random.Random(seed)
    out = []
    for _ in range(steps):
        dag = rnd.choice(sorted(SPACES)) if rnd.random() < 0.35 else "d"
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
    deleted = h.delete(op.key).deleted
    version, _ = newest(h, op.key)
    if deleted or (op.durable and version):  # a durable "already deleted" is an answer too
        expect.ack((op.dag, op.key), version, None, op.durable)
    return f"{_what(op)} -> v{version}{'' if deleted else ' (was deleted)'}"


def _compact(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    h.compact(keep_last=1)
    expect.drop_all()
    return f"{_who(op)} compact keep_last=1"


def _remove(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """A compaction that removes deleted keys (of every namespace): they get graves."""
    before = {(dag, k): newest(handles[dag, True], k) for dag, keys in SPACES.items() for k in keys}
    h.compact(keep_last=1, keep_within_seconds=0)
    expect.drop_all()
    for ref, (version, last) in before.items():
        if last == "delete":  # removed: its tombstone's version too
            expect.dropped[ref] = max(expect.dropped.get(ref, 0), version)
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
    expect.dropped[op.dag, op.key] = max(expect.dropped.get((op.dag, op.key), 0), version - 1)
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


def _rollback(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """Roll back to an acknowledged version (``extra`` picks which; a tombstone deletes)."""
    ref = (op.dag, op.key)
    versions = sorted(expect.acked.get(ref, {}))
    if not versions:
        return f"{_what(op)} (no version)"
    to = versions[int(op.extra * len(versions))]
    try:
        done = h.rollback(op.key, to_version=to)
    except NotFoundError:
        return f"{_what(op)} to v{to} (compacted)"
    if done.version and (done.deleted or done.hash):
        value = expect.acked[ref][to]
        expect.ack(ref, done.version, None if done.deleted else value, op.durable)
    return f"{_what(op)} to v{to} -> v{done.version}{' (delete)' if done.deleted else ''}"


def _live_value(expect: Expect, ref: tuple[str, str]) -> dict[str, object] | None:
    value = expect.newest(ref)[1]
    return dict(value) if isinstance(value, dict) else None


def _patch(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """A merge patch: a member set, or ``n`` removed."""
    ref = (op.dag, op.key)
    doc: dict[str, object] = {"n": None} if op.extra < 0.3 else {"p": round(op.extra * 100)}
    want = _live_value(expect, ref) or {}
    for member, v in doc.items():
        if v is None:
            want.pop(member, None)
        else:
            want[member] = v
    version = h.patch(op.key, doc, merge=True).version
    expect.ack(ref, version, want, op.durable)
    return f"{_what(op)} {doc} -> v{version}"


def _incr(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    ref = (op.dag, op.key)
    want = _live_value(expect, ref) or {}
    by = 1 + int(op.extra * 3)
    base = want.get("n", 0)
    if not isinstance(base, int):
        return f"{_what(op)} (n is not a number)"
    want["n"] = base + by
    version = h.incr(op.key, by, "/n").version
    expect.ack(ref, version, want, op.durable)
    return f"{_what(op)} by {by} -> v{version}"


def _cas(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """A guarded set: ``expected_version`` right or wrong, or ``create_only``."""
    ref = (op.dag, op.key)
    value: object = json.loads(op.value)
    top, now = expect.newest(ref)
    live = top if now is not None else 0
    if op.extra < 0.25:
        guard: dict[str, object] = {"create_only": True}
        ok = not live
    else:
        expected = live if op.extra < 0.75 else live + 1
        guard, ok = {"expected_version": expected}, expected == live
    try:
        version = h.set(op.key, value, **guard).version  # type: ignore[arg-type]
    except ConflictError:
        assert not ok, f"{_what(op)} {guard}: a conflict, but v{live} is live"
        return f"{_what(op)} {guard} (conflict)"
    assert ok, f"{_what(op)} {guard}: written, but v{live} is live"
    expect.ack(ref, version, value, op.durable)
    return f"{_what(op)} {guard} -> v{version}"


def _diff(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    ref = (op.dag, op.key)
    value: object = json.loads(op.value)
    done = h.diff(op.key, value)
    if done.changed and done.version:
        expect.ack(ref, done.version, value, op.durable)
    elif not done.changed and op.durable:  # "unchanged": the stored value, made durable
        expect.ack(ref, newest(h, op.key)[0], value, True)
    return f"{_what(op)} = {str(value)[:14]} changed={done.changed} -> v{done.version}"


def _retain(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """Compaction keeping more than the newest: the last 2 or 3, an hour, or one namespace."""
    if op.extra < 0.3:
        h.compact(keep_last=2 + int(op.extra * 10) % 2)
    elif op.extra < 0.6:
        h.compact(keep_within_seconds=3600)
    elif op.extra < 0.8:
        h.compact(keep_last=2, keep_within_seconds=3600)
    else:  # one namespace only, deleted keys removed there
        scope = SCOPE_OF.get(op.dag, "dag")
        before = {(op.dag, k): newest(handles[op.dag, True], k) for k in SPACES[op.dag]}
        ns = "_" if scope == "global" else op.dag
        h.compact(keep_last=1, keep_within_seconds=0, scope=scope, namespace=ns)
        for ref, (version, last) in before.items():
            if last == "delete" and expect.durable.get(ref, 0) > 0:
                expect.grave[ref] = max(expect.grave.get(ref, 0), version)
            if expect.acked.get(ref):
                expect.dropped[ref] = max(expect.dropped.get(ref, 0), *expect.acked[ref])
        return f"{_who(op)} compact {scope}/{ns} keep_within=0"
    expect.drop_all()
    return f"{_who(op)} compact retain ({op.extra:.2f})"


def _export_record(
    dag: str, key: str, version: int, value: object, op: str = "set"
) -> dict[str, object]:
    now = time.time_ns()
    scope = SCOPE_OF.get(dag, "dag")
    return {
        "scope": scope,
        "namespace": "_" if scope == "global" else dag,
        "key": key,
        "version": version,
        "op": op,
        "time_ns": now,
        "created_ns": 0 if value is None else now,
        "hash": "" if value is None else codec.hexdigest(codec.normalize(value)),
        "audit": {},
        **({} if value is None else {"value": value}),
    }


def _import_many(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """An import of several keys of several namespaces, ``skip`` or ``overwrite``.

    Each key gets two or three versions above every version it had (and its grave),
    starting some versions higher; the second may be a delete.
    """
    rnd = random.Random(op.extra)
    mode = "skip" if op.extra < 0.6 else "overwrite"
    refs = sorted({(d, k) for d, keys in SPACES.items() for k in keys if rnd.random() < 0.4})
    if not refs:
        return f"{_who(op)} import {mode} (nothing)"
    records: list[dict[str, object]] = []
    plan: dict[tuple[str, str], dict[int, object]] = {}
    for ref in refs:
        try:
            live = newest(handles[ref[0], True], ref[1])[0]
        except CorruptionError:
            return f"{_who(op)} import {mode} (refused: {ref} unreadable)"
        start = max([live, expect.grave.get(ref, 0), *expect.acked.get(ref, {})]) + 1
        start += rnd.choice([0, 0, 2])
        values: list[object] = [rnd.choice(BIG + SMALL)]
        values.append(None if rnd.random() < 0.3 else rnd.choice(BIG + SMALL))
        if rnd.random() < 0.5:
            values.append(rnd.choice(BIG + SMALL))
        plan[ref] = {start + i: v for i, v in enumerate(values)}
        for version, value in plan[ref].items():
            records.append(
                _export_record(*ref, version, value, "set" if value is not None else "delete")
            )
    records.sort(key=lambda r: (r["scope"], str(r["namespace"]).encode(), str(r["key"]).encode()))
    lines = [b'{"format":"castore-export","version":2}\n']
    lines += [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records]
    lines.append(b'{"end":"castore-export","versions":%d}\n' % len(records))
    try:
        report = import_lines(h, lambda: iter(lines), on_conflict=mode)  # type: ignore[arg-type]
    except ConflictError as exc:
        return f"{_who(op)} import {mode} (refused: {str(exc)[:80]})"
    skipped = set(report.skipped_refs)
    done = []
    for ref, versions in plan.items():
        scope = SCOPE_OF.get(ref[0], "dag")
        name = f"{scope}/{'_' if scope == 'global' else ref[0]}/{ref[1]}"
        if name in skipped:
            continue
        if mode == "overwrite" and expect.acked.get(ref):
            expect.dropped[ref] = max(expect.dropped.get(ref, 0), min(versions) - 1)
        for version, value in versions.items():
            expect.ack(ref, version, value, op.durable)
        done.append(f"{ref[0]}/{ref[1]}@{min(versions)}..{max(versions)}")
    return f"{_who(op)} import {mode} {' '.join(done) or '(all skipped)'}"


def _export(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """A whole-store export: every line read (it reads every version of every log)."""
    count = sum(1 for _ in export_lines(h))
    return f"{_who(op)} export ({count} lines)"


def _readv(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """Version reads and history pages (they build and extend version indexes)."""
    ref = (op.dag, op.key)
    versions = sorted(expect.acked.get(ref, {}))
    pages = len(h.history(op.key, limit=2).entries)
    for v in versions[-3:]:
        with contextlib.suppress(NotFoundError):
            h.get(op.key, version=v)
    if len(versions) >= 2:
        with contextlib.suppress(NotFoundError):
            h.diff_versions(op.key, from_version=versions[-2], to_version=versions[-1])
    return f"{_what(op)} readv {versions[-3:]} ({pages} history)"


COLD = ("set", "delete", "rollback", "patch", "incr", "cas", "diff", "readv", "list", "import")


def _cold(op: Op, h: Store, handles: Handles, expect: Expect) -> str:
    """A call through a handle opened for it (cold caches), then closed."""
    kind = COLD[int(op.extra * 997) % len(COLD)]
    fresh = open_store(h.root, op.dag, durable=op.durable)
    try:
        return "cold " + CALLS[kind](op._replace(kind=kind), fresh, handles, expect)
    finally:
        fresh.close()


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
    "rollback": _rollback,
    "patch": _patch,
    "incr": _incr,
    "cas": _cas,
    "diff": _diff,
    "retain": _retain,
    "import_many": _import_many,
    "export": _export,
    "readv": _readv,
    "cold": _cold,
}


def overwrite_lines(store: Store, dag: str, key: str, value: object) -> tuple[list[bytes], int]:
    """An export of ``key`` at the version after its newest, holding ``value``; that version."""
    version = newest(store, key)[0] + 1
    record = _export_record(dag, key, version, value)
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
    ops: tuple[str, ...] = ALL_OPS,
    calls: dict[str, Callable[[Op, Store, Handles, Expect], str]] | None = None,
) -> str | None:
    """Run seed ``seed``'s calls, each followed by ``images``; what the first failure shows.

    ``ops`` are the kinds drawn (weighted by repetition), ``calls`` what runs them
    (:data:`CALLS` by default).
    """
    done: list[str] = []
    calls = CALLS if calls is None else calls
    with session(tmp_path, monkeypatch) as s:
        for step, op in enumerate(gen_ops(seed, steps, ops)):
            if op.kind == "reboot":  # the worst image of now, repaired, goes on
                said = s.reboot(f"{step}-reboot", f"boot{step}-gen", repair=op.extra < 0.8)
                done.append(f"(power loss, reboot, generation {s.generation}) {said}"[:200])
                continue
            try:
                done.append(calls[op.kind](op, s.handles[op.dag, op.durable], s.handles, s.expect))
            except UnsafePathError:
                raise  # nothing in this model is planted: a path castore refuses is its bug
            except CorruptionError as exc:
                done.append(f"refused: {exc}"[:200])
            except AssertionError as exc:  # a call's own check (a guard, a quick get)
                return "\n".join([f"seed {seed} step {step}", *done, "--", str(exc)])
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
    """A delete; a durable one that finds the key deleted acknowledges its tombstone."""

    def step(handles: Handles, expect: Expect) -> None:
        h = handles[dag, durable]
        deleted = h.delete(key).deleted
        version = newest(h, key)[0]
        if deleted or (durable and version):
            expect.ack((dag, key), version, None, durable)

    return step


def diff(key: str, value: object, durable: bool, dag: str = "d") -> Step:
    """A diff with update; a durable one that finds ``value`` stored acknowledges it."""

    def step(handles: Handles, expect: Expect) -> None:
        h = handles[dag, durable]
        done = h.diff(key, value)
        if done.changed or durable:
            expect.ack((dag, key), newest(h, key)[0], value, durable)

    return step


def overwrite(key: str, value: object, durable: bool, dag: str = "d") -> Step:
    """``import --overwrite`` of the version after ``key``'s newest."""

    def step(handles: Handles, expect: Expect) -> None:
        h = handles[dag, durable]
        lines, version = overwrite_lines(h, dag, key, value)
        import_lines(h, lambda: iter(lines), on_conflict="overwrite")
        expect.dropped[dag, key] = version - 1
        expect.ack((dag, key), version, value, durable)

    return step


def skip(key: str, durable: bool, dag: str = "d") -> Step:
    """``import --on-conflict skip`` of a version after ``key``'s newest: skipped, it exists.

    A durable one acknowledges the newest version as it found it (the key exists).
    """

    def step(handles: Handles, expect: Expect) -> None:
        h = handles[dag, durable]
        lines, _ = overwrite_lines(h, dag, key, SMALL[2])
        report = import_lines(h, lambda: iter(lines), on_conflict="skip")
        assert (report.refs, len(report.skipped_refs)) == (0, 1)
        version, value = expect.newest((dag, key))
        if durable:
            expect.ack((dag, key), version, value, True)

    return step


def call(fn: Callable[[Handles], object]) -> Step:
    """A maintenance call (it may compact: older versions may be gone)."""

    def step(handles: Handles, expect: Expect) -> None:
        fn(handles)
        expect.drop_all()

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


def test_a_durable_delete_that_finds_the_key_deleted_makes_that_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable delete answering "already deleted" leaves the key deleted after a power loss.

    Was: it wrote nothing and synced nothing, so the tombstone a ``durable=False`` delete
    (or a durable delete killed before its fdatasync: the same unsynced, unmarked frames)
    had appended was lost with the power, and the key the durable call had reported
    absent was live again (the thirty-eighth session's review; RELIABILITY.md, "Known
    limits").
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [put("k0", SMALL[0], True), delete("k0", False), delete("k0", True)],
        images=IMAGES,
    )
    assert not problems, problems


@pytest.mark.parametrize("value", [SMALL[1], BIG[1]], ids=["small", "indexed"])
def test_a_durable_diff_that_finds_the_value_stored_makes_it_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, value: object
) -> None:
    """A durable diff answering "unchanged" leaves that value stored after a power loss.

    The indexed value is written first to another key (``k1``) by a ``durable=False``
    write, so ``k0``'s version points into ``k1``'s log, which the durable diff must
    make durable too. Was: nothing was synced, and the older version came back.
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", SMALL[0], True),
            put("k1", value, False),
            put("k0", value, False),
            diff("k0", value, True),
        ],
        images=IMAGES,
    )
    assert not problems, problems


@pytest.mark.parametrize("value", [SMALL[1], BIG[1]], ids=["small", "indexed"])
def test_a_durable_diff_that_finds_a_new_key_s_value_makes_the_key_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, value: object
) -> None:
    """A key only a ``durable=False`` write created, found unchanged by a durable diff, stays.

    Its log's name and ``KEYS`` line are what the answer rests on too (the log is marked):
    a mutation that left them unsettled passed every other test of the answer.
    """
    problems = scripted(
        tmp_path, monkeypatch, [put("k0", value, False), diff("k0", value, True)], images=IMAGES
    )
    assert not problems, problems


@pytest.mark.parametrize("value", [None, SMALL[1], BIG[1]], ids=["deleted", "small", "indexed"])
def test_a_durable_import_that_skips_a_key_makes_it_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, value: object
) -> None:
    """A durable ``import --on-conflict skip`` leaves the key it skipped as it found it.

    It reports the key as existing (skipped): that version must survive a power loss.
    Was: the skip wrote and synced nothing, and the version a ``durable=False`` write had
    just appended was lost with the power (the key created by it: gone altogether).
    """
    last = delete("k0", False) if value is None else put("k0", value, False)
    problems = scripted(
        tmp_path,
        monkeypatch,
        [put("k0", SMALL[0], True), put("k1", BIG[1], False), last, skip("k0", True)],
        images=IMAGES,
    )
    assert not problems, problems


def test_a_durable_import_that_skips_a_new_key_makes_it_durable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key only a ``durable=False`` write created, skipped by a durable import, stays."""
    problems = scripted(
        tmp_path, monkeypatch, [put("k0", SMALL[0], False), skip("k0", True)], images=IMAGES
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


def test_a_rebuilt_index_is_durable_with_its_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc's index rebuild makes ``index/`` itself durable, not only the shards in it.

    Found by the extended mix (seed 2017, ``mixed``), reduced to durable calls alone: the
    first write's index record makes ``index/`` with ``durable=False`` (derived data), so
    its name in the store root is unsynced; gc rebuilds the shards durably (fsync of
    ``index/``) but unmarked, so the compaction's durable records of the blob frames it
    moves settle nothing above them. After a power loss ``index/`` is gone, k1's v1
    points at k0's rewritten log by a stale hint, and reads as ``CorruptionError``.
    """
    problems = scripted(
        tmp_path,
        monkeypatch,
        [
            put("k0", BIG[0], True),
            put("k1", BIG[0], True),  # k1 v1 points at k0's blob frame
            put("k0", SMALL[0], True),
            call(lambda h: h["d", True].gc(grace_seconds=0)),  # durable rebuild: unmarked shards
            call(lambda h: h["d", True].compact(keep_last=1)),  # moves k0's blob frames
        ],
    )
    assert not problems, problems
