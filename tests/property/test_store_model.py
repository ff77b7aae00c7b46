from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeVar

import jsonpatch
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from castore import GetResult, ListResult, Store, audit_records, codec, export_lines, import_lines
from castore.errors import (
    CastoreError,
    ConflictError,
    InvalidValueError,
    NotFoundError,
    PatchTestError,
)
from castore.keys import Ref
from tests.property import edit_model

T = TypeVar("T")
# Names the class's rules shadow (its ``list`` rule) in its annotations.
Lines = list[bytes]
Refs = list[Ref]
Versions = list[int]


DAG: Final = "flow"
TOMBSTONE: Final = None  # a history entry is normalized JSON bytes, or None for a delete

# (scope, namespace argument): ("dag", None) and ("dag", "flow") are the same namespace;
# "other" and "Other" are distinct custom namespaces.
TARGETS: Final = [("dag", None), ("dag", DAG), ("custom", "other"), ("custom", "Other")]
NAMESPACES: Final = [("dag", DAG), ("custom", "other"), ("custom", "Other")]
LONG_KEY: Final = "a" + "x" * 1099  # 1,100 bytes: far past any file-name limit
KEYS: Final = ["a", "a/b", "ab", "b", "é", LONG_KEY]
# compact's and export's filters: (scope, namespace); None selects every one.
FILTERS: Final = [(None, None), ("dag", None), ("dag", DAG), ("custom", None), ("custom", "other")]
PREFIXES: Final = ["", "a", "a/", "a/b", "ab", "ax", "b", "é", "\u00e9x", "z"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)
# A small pool makes repeated values (unchanged diffs, blob reuse across logs) common;
# long strings take the zstd path (>= 128 bytes).
POOL: Final = [0, 1, "x", None, {"a": 1}, [1, 2], "<&>", "y" * 300, {"z": ["w" * 200]}]
values = st.one_of(
    st.sampled_from(POOL),
    json_values,
    st.text(min_size=130, max_size=600),
    st.lists(st.integers(), min_size=40, max_size=80),
)
targets = st.sampled_from(TARGETS)
keys = st.sampled_from(KEYS)
handles = st.integers(min_value=0, max_value=1)


class AuditModel(NamedTuple):
    """What the model knows of a version's audit record."""

    op: str
    rollback_from: int
    reason: str
    who: int | None  # the handle that wrote it (its actor, run id and step); None: nobody

    def fields(self) -> tuple[str, str, str, str]:
        """(dag name, actor, run id, step) as recorded."""
        if self.who is None:
            return ("", "", "", "")
        return (DAG, f"actor{self.who}", f"run{self.who}", f"step{self.who}")


def escaped(fn: Callable[[], T]) -> T:
    """Run ``fn``; any exception other than CastoreError or OSError is a failure."""
    try:
        return fn()
    except (CastoreError, OSError):
        raise
    except Exception as exc:
        raise AssertionError(f"non-castore exception escaped: {exc!r}") from exc


class StoreMachine(RuleBasedStateMachine):
    """Two handles on one fresh store against a dict-with-history model."""

    def __init__(
        self, fresh_location: Callable[[], contextlib.AbstractContextManager[str]]
    ) -> None:
        super().__init__()
        self._dropped = contextlib.ExitStack()  # the store is dropped after the run
        self._fresh = fresh_location
        self.root = self._dropped.enter_context(fresh_location())
        self.stores = [self._open(0), self._open(1)]
        self.history: dict[Ref, list[bytes | None]] = {}
        self.audit: dict[Ref, list[AuditModel]] = {}
        self.python: dict[tuple[Ref, int], Any] = {}  # (ref, version) -> value as given
        # Versions no longer stored -> what NotFoundError says of one ("": not specified).
        self.gone: dict[tuple[Ref, int], str] = {}
        self.snapshot: list[bytes] = []  # an export taken earlier, imported later
        self.ancient: set[tuple[Ref, int]] = set()  # timed 1 ns: an import's removal line
        self.copied = False  # moved to a copy (move_to_a_copy)
        self.steps = 0

    def _open(self, h: int) -> Store:
        # Each handle writes as its own actor, run and step: the audit tells them apart.
        return Store(
            self.root, dag=DAG, durable=False, actor=f"actor{h}", run_id=f"run{h}", step=f"step{h}"
        )

    def teardown(self) -> None:
        # What the run left is healthy, derived files included: readers extended each
        # version index as a rebuild would have made it (FORMAT.md §5).
        report = self.stores[0].check()
        assert [f for f in report.findings if f.severity != "info" or "index" in f.problem] == []
        for store in self.stores:
            store.close()
        self._dropped.close()

    # -- model -----------------------------------------------------------------------

    @staticmethod
    def _ref(where: tuple[str, str | None], key: str) -> Ref:
        scope, namespace = where
        return Ref(scope, namespace or DAG, key)

    def _live(self, ref: Ref) -> int:
        versions = self.history.get(ref, [])
        return len(versions) if versions and versions[-1] is not TOMBSTONE else 0

    def _next(self, ref: Ref) -> int:
        return len(self.history.get(ref, [])) + 1

    def _append(
        self,
        ref: Ref,
        normalized: bytes | None,
        value: Any = None,
        rollback_from: int = 0,
        *,
        h: int,
        reason: str = "",
    ) -> int:
        versions = self.history.setdefault(ref, [])
        versions.append(normalized)
        if rollback_from:
            op = "rollback" if normalized is not None else "delete"
        else:
            op = "set" if normalized is not None else "delete"
        self.audit.setdefault(ref, []).append(AuditModel(op, rollback_from, reason, h))
        if normalized is not None:
            self.python[ref, len(versions)] = value
        return len(versions)

    def _kept(self, ref: Ref) -> Versions:
        """The versions of ``ref`` still stored, newest first."""
        return [v for v in range(len(self.history[ref]), 0, -1) if (ref, v) not in self.gone]

    def _selected(self, where: tuple[str | None, str | None], prefix: str = "") -> Refs:
        """The refs with a history that a (scope, namespace) filter and a prefix select."""
        scope, namespace = where
        return [
            ref
            for ref in sorted(self.history)
            if scope in (None, ref.scope)
            and namespace in (None, ref.namespace)
            and ref.key.encode().startswith(prefix.encode())
        ]

    def _value(self, ref: Ref, version: int) -> bytes:
        normalized = self.history[ref][version - 1]
        assert normalized is not None
        return normalized

    # -- rules -----------------------------------------------------------------------

    @rule(h=handles, where=targets, key=keys, value=values)
    def set(self, h, where, key, value):
        ref = self._ref(where, key)
        normalized = codec.normalize(value)
        want, created = self._next(ref), self._live(ref) == 0
        res = escaped(lambda: self.stores[h].set(key, value, scope=where[0], namespace=where[1]))
        assert Ref(res.scope, res.namespace, res.key) == ref
        assert res.version == want, f"{ref}: set gave version {res.version}, want {want}"
        assert res.hash == codec.hexdigest(normalized)
        assert res.created is created
        self._append(ref, normalized, value, h=h)

    @rule(h=handles, where=targets, keys_=st.lists(keys, min_size=2, max_size=3), value=values)
    def set_from_threads(self, h, where, keys_, value):
        # One handle shared by threads: each sets a key (maybe the same one) while
        # another lists; every result must fit the model in the order of its version.
        store = self.stores[h]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(keys_) + 1) as pool:
            listing = pool.submit(
                escaped,
                functools.partial(store.list, scope=where[0], namespace=where[1]),
            )
            sets = [
                pool.submit(
                    escaped,
                    functools.partial(store.set, k, value, scope=where[0], namespace=where[1]),
                )
                for k in keys_
            ]
            results = [f.result() for f in sets]
            listing.result()
        normalized = codec.normalize(value)
        for res in sorted(results, key=lambda r: r.version):
            ref = self._ref(where, res.key)
            assert res.version == self._next(ref), f"{ref}: threaded set gave {res.version}"
            assert res.created is (self._live(ref) == 0)
            self._append(ref, normalized, value, h=h)

    @rule(h=handles, where=targets, key=keys, value=values, data=st.data())
    def set_expected(self, h, where, key, value, data):
        ref = self._ref(where, key)
        live = self._live(ref)
        total = len(self.history.get(ref, []))
        expected = data.draw(
            st.sampled_from(sorted({live, max(live - 1, 0), live + 1, 0, total, total + 1})),
            label="expected_version",
        )
        store = self.stores[h]

        def call():
            return store.set(
                key, value, scope=where[0], namespace=where[1], expected_version=expected
            )

        if expected != live:
            with pytest.raises(ConflictError) as info:
                escaped(call)
            assert info.value.expected == expected
            assert info.value.actual == live
            return
        normalized = codec.normalize(value)
        res = escaped(call)
        assert res.version == self._next(ref)
        assert res.hash == codec.hexdigest(normalized)
        assert res.created is (live == 0)
        self._append(ref, normalized, value, h=h)

    @rule(h=handles, where=targets, key=keys, value=values)
    def create_only(self, h, where, key, value):
        ref = self._ref(where, key)
        live = self._live(ref)
        store = self.stores[h]

        def call():
            return store.set(key, value, scope=where[0], namespace=where[1], create_only=True)

        if live:
            with pytest.raises(ConflictError) as info:
                escaped(call)
            assert info.value.expected is None
            assert info.value.actual == live
            return
        res = escaped(call)
        assert res.version == self._next(ref)
        assert res.created is True
        self._append(ref, codec.normalize(value), value, h=h)

    @rule(h=handles, where=targets, key=keys)
    def delete(self, h, where, key):
        ref = self._ref(where, key)
        live = self._live(ref)
        res = escaped(lambda: self.stores[h].delete(key, scope=where[0], namespace=where[1]))
        assert res.deleted is bool(live), f"{ref}: deleted={res.deleted}, live version {live}"
        if live:
            self._append(ref, TOMBSTONE, h=h)

    @rule(h=handles, where=targets, key=keys)
    def get(self, h, where, key):
        ref = self._ref(where, key)
        res = escaped(lambda: self.stores[h].get(key, scope=where[0], namespace=where[1]))
        self._check_get(ref, res)

    def _check_get(self, ref: Ref, res: GetResult) -> None:
        assert Ref(res.scope, res.namespace, res.key) == ref
        live = self._live(ref)
        assert res.found is bool(live), f"{ref}: found={res.found}, live version {live}"
        if not live:
            assert res.version == 0
            assert res.value is None
            assert res.value_json is None
            return
        normalized = self._value(ref, live)
        assert res.version == live
        assert res.hash == codec.hexdigest(normalized)
        assert res.value_json == normalized
        assert res.value == self.python[ref, live]

    @rule(
        h=handles,
        where=targets,
        key=keys,
        value=values,
        update=st.booleans(),
        data=st.data(),
    )
    def diff(self, h, where, key, value, update, data):
        ref = self._ref(where, key)
        live = self._live(ref)
        # Sometimes diff against the stored value itself (the unchanged path).
        if live and data.draw(st.booleans(), label="same value"):
            value = self.python[ref, live]
        expected = data.draw(
            st.none() | st.sampled_from(sorted({live, live + 1, max(live - 1, 0), 0})),
            label="expected_version",
        )
        normalized = codec.normalize(value)
        digest = codec.hexdigest(normalized)
        store = self.stores[h]

        def call():
            return store.diff(
                key,
                value,
                scope=where[0],
                namespace=where[1],
                update=update,
                expected_version=expected,
            )

        if expected is not None and expected != live:
            with pytest.raises(ConflictError) as info:
                escaped(call)
            assert info.value.expected == expected
            assert info.value.actual == live
            return
        res = escaped(call)
        assert Ref(res.scope, res.namespace, res.key) == ref
        assert res.current_json == normalized
        assert res.current == value
        assert res.found_previous is bool(live)
        assert res.previous_version == live
        if live:
            old = self._value(ref, live)
            assert res.previous_json == old
            assert res.previous == self.python[ref, live]
            changed = codec.hexdigest(old) != digest
        else:
            assert res.previous_json is None
            assert res.previous is None
            changed = True
        assert res.changed is changed
        if changed and update:
            version = self._append(ref, normalized, value, h=h)
            assert res.version == version
            assert res.hash == digest
        elif live:  # unchanged, or changed without update: the OLD version and hash
            assert res.version == live
            assert res.hash == codec.hexdigest(self._value(ref, live))
        else:
            assert res.version == 0
            assert res.hash == ""

    @rule(
        h=handles,
        ns=st.sampled_from(TARGETS),
        prefix=st.sampled_from(PREFIXES),
        limit=st.sampled_from([0, 0, 1, 2, 3, 100]),
        include_values=st.booleans(),
    )
    def list(self, h, ns, prefix, limit, include_values):
        scope, namespace = ns
        res = escaped(
            lambda: self.stores[h].list(
                prefix,
                scope=scope,
                namespace=namespace,
                limit=limit,
                include_values=include_values,
            )
        )
        self._check_list(res, scope, namespace or DAG, prefix, limit, include_values)

    def _check_list(
        self,
        res: ListResult,
        scope: str,
        namespace: str,
        prefix: str,
        limit: int,
        include_values: bool,
    ) -> None:
        live = sorted(
            (ref.key.encode("utf-8"), ref)
            for ref in self.history
            if (ref.scope, ref.namespace) == (scope, namespace)
            and ref.key.encode("utf-8").startswith(prefix.encode("utf-8"))
            and self._live(ref)
        )
        want = [ref for _, ref in live]
        if limit:
            want = want[:limit]
        assert res.skipped == []
        assert (res.scope, res.namespace, res.prefix) == (scope, namespace, prefix)
        got = [Ref(e.scope, e.namespace, e.key) for e in res.entries]
        assert got == want
        for entry, ref in zip(res.entries, want, strict=True):
            version = self._live(ref)
            normalized = self._value(ref, version)
            assert entry.version == version
            assert entry.hash == codec.hexdigest(normalized)
            assert entry.created_at.endswith("Z")
            assert entry.updated_at.endswith("Z")
            if include_values:
                assert entry.value_json == normalized
                assert entry.value == self.python[ref, version]
            else:
                assert entry.value_json is None
                assert entry.value is None

    @rule(h=handles, where=targets, key=keys, data=st.data())
    def get_at_version(self, h, where, key, data):
        ref = self._ref(where, key)
        total = len(self.history.get(ref, []))
        version = data.draw(st.integers(min_value=1, max_value=total + 1), label="version")
        store = self.stores[h]

        def call():
            return store.get(key, scope=where[0], namespace=where[1], version=version)

        if version > total:
            with pytest.raises(NotFoundError):
                escaped(call)
            return
        if (ref, version) in self.gone:
            with pytest.raises(NotFoundError, match=self.gone[ref, version] or None):
                escaped(call)
            return
        res = escaped(call)
        normalized = self.history[ref][version - 1]
        if normalized is TOMBSTONE:
            assert (res.found, res.value_json) == (False, None)
            return
        assert (res.found, res.version) == (True, version)
        assert res.hash == codec.hexdigest(normalized)
        assert res.value_json == normalized
        assert res.value == self.python[ref, version]

    @rule(h=handles, where=targets, key=keys, data=st.data())
    def history_page(self, h, where, key, data):
        ref = self._ref(where, key)
        total = len(self.history.get(ref, []))
        limit = data.draw(st.sampled_from([0, 1, 2, 5]), label="limit")
        before = data.draw(
            st.none() | st.integers(min_value=1, max_value=total + 2), label="before_version"
        )
        res = escaped(
            lambda: self.stores[h].history(
                key, scope=where[0], namespace=where[1], limit=limit, before_version=before
            )
        )
        top = total if before is None else min(total, before - 1)
        kept = [v for v in range(top, 0, -1) if (ref, v) not in self.gone]
        want = kept[:limit] if limit else kept
        assert [e.version for e in res.entries] == want
        for entry in res.entries:
            normalized = self.history[ref][entry.version - 1]
            audit = self.audit[ref][entry.version - 1]
            assert (entry.operation, entry.rollback_from, entry.reason) == audit[:3]
            assert (entry.dag_name, entry.actor, entry.run_id, entry.step_name) == audit.fields()
            assert entry.hash == ("" if normalized is None else codec.hexdigest(normalized))
        more = bool(limit) and len(kept) > limit  # an older version is kept: a next page
        assert res.next_before_version == (want[-1] if more else 0)

    @rule(h=handles, where=targets, key=keys, data=st.data())
    def rollback(self, h, where, key, data):
        ref = self._ref(where, key)
        versions = self.history.get(ref, [])
        live = self._live(ref)
        # Rolling an absent key back to a tombstone is left out: whether that appends a
        # second tombstone is not specified.
        choices = list(range(1, len(versions) + 2))
        if not live:
            choices = [v for v in choices if v > len(versions) or versions[v - 1] is not None]
        to_version = data.draw(st.sampled_from(choices), label="to_version")
        expected = data.draw(
            st.none() | st.sampled_from(sorted({live, live + 1, 0})), label="expected_version"
        )
        store = self.stores[h]

        def call():
            return store.rollback(
                key,
                to_version=to_version,
                scope=where[0],
                namespace=where[1],
                expected_version=expected,
            )

        if expected is not None and expected != live:
            with pytest.raises(ConflictError) as info:
                escaped(call)
            assert (info.value.expected, info.value.actual) == (expected, live)
            return
        if to_version > len(versions) or (ref, to_version) in self.gone:
            with pytest.raises(NotFoundError):
                escaped(call)
            return
        res = escaped(call)
        target = versions[to_version - 1]
        version = self._append(
            ref, target, self.python.get((ref, to_version)), rollback_from=to_version, h=h
        )
        assert Ref(res.scope, res.namespace, res.key) == ref
        assert (res.version, res.to_version) == (version, to_version)
        assert res.deleted is (target is None)
        assert res.created is (target is not None and not live)
        assert res.hash == ("" if target is None else codec.hexdigest(target))

    @rule(h=handles, where=targets, key=keys, data=st.data())
    def diff_versions(self, h, where, key, data):
        ref = self._ref(where, key)
        total = len(self.history.get(ref, []))
        old = data.draw(st.integers(min_value=1, max_value=total + 1), label="from_version")
        new = data.draw(st.none() | st.integers(min_value=1, max_value=total + 1), label="to")

        def call():
            return self.stores[h].diff_versions(
                key, from_version=old, to_version=new, scope=where[0], namespace=where[1]
            )

        target = total if new is None else new
        if (
            not total
            or old > total
            or target > total
            or {(ref, old), (ref, target)} & self.gone.keys()
        ):
            with pytest.raises(NotFoundError):
                escaped(call)
            return
        res = escaped(call)
        before = self.history[ref][old - 1]
        after = self.history[ref][target - 1]
        start = None if before is None else codec.decode_value(before)
        end = None if after is None else codec.decode_value(after)
        assert (res.from_version, res.to_version) == (old, target)
        assert jsonpatch.apply_patch(start, res.patch) == end
        assert res.from_hash == ("" if before is None else codec.hexdigest(before))

    @rule(
        h=handles,
        keep_last=st.sampled_from([None, 1, 2, 3]),
        keep_within=st.sampled_from([None, 0, 0, 3600]),
        where=st.sampled_from(FILTERS),
        prefix=st.sampled_from(["", "", "a", "a/", "b"]),
        dry_run=st.booleans(),
    )
    def compact(self, h, keep_last, keep_within, where, prefix, dry_run):
        # The newest version is always kept, plus the last N versions and those younger
        # than the duration (3600 s: all but those an import timed 1 ns; 0: none). A key
        # whose newest version is a delete older than the duration goes away whole; its
        # versions stay reserved.
        if keep_last is None and keep_within is None:
            keep_last = 1
        dropped, removed = {}, 0
        for ref in self._selected(where, prefix):
            kept = self._kept(ref)
            if not kept:  # removed before: nothing left to compact
                continue
            young = [v for v in kept if keep_within and (ref, v) not in self.ancient]
            if keep_within is not None and kept[0] not in young and self._live(ref) == 0:
                keep, removed = set(), removed + 1
            else:
                keep = {kept[0], *kept[: keep_last or 0], *young}
            dropped[ref] = [v for v in kept if v not in keep]
        report = escaped(
            lambda: self.stores[h].compact(
                keep_last=keep_last,
                keep_within_seconds=keep_within,
                scope=where[0],
                namespace=where[1],
                prefix=prefix,
                dry_run=dry_run,
            )
        )
        assert report.dry_run is dry_run
        assert report.keys_removed == removed
        assert report.versions_dropped == sum(len(v) for v in dropped.values())
        if dry_run:
            return
        for ref, versions in dropped.items():
            for version in versions:
                self.gone[ref, version] = "compacted"
            read = functools.partial(  # each key's history, as the other handle reads it
                self.stores[1 - h].history, ref.key, scope=ref.scope, namespace=ref.namespace
            )
            assert [e.version for e in escaped(read).entries] == self._kept(ref), ref

    # -- read-modify-write: patch and incr (docs/CLI.md) ------------------------------

    def _current(self, ref: Ref) -> tuple[bool, Any]:
        """(live, value decoded from its normalized bytes) of ``ref``."""
        live = self._live(ref)
        return bool(live), codec.decode_value(self._value(ref, live)) if live else None

    def _edited(self, h: int, ref: Ref, res: Any, new_value: Any, reason: str) -> None:
        """An edit wrote ``new_value`` as set would: check the result, then model it."""
        normalized = codec.normalize(new_value)
        assert Ref(res.scope, res.namespace, res.key) == ref
        assert res.version == self._next(ref)
        assert res.hash == codec.hexdigest(normalized)
        assert res.created is (self._live(ref) == 0)
        self._append(ref, normalized, codec.decode_value(normalized), h=h, reason=reason)

    @rule(
        h=handles,
        where=targets,
        key=keys,
        merge=st.booleans(),
        ops=st.lists(edit_model.operations, min_size=1, max_size=3),
        merge_patch=edit_model.merge_patches,
        guard=st.sampled_from(["none", "none", "expected", "wrong", "create_only"]),
        note=st.sampled_from(["", "why"]),
        data=st.data(),
    )
    def patch(self, h, where, key, merge, ops, merge_patch, guard, note, data):
        ref = self._ref(where, key)
        live, current = self._current(ref)
        if not merge:  # a test that passes: its value read from the current one
            for op in ops:
                found = edit_model.walk(current if live else {}, op["path"])
                if (
                    op["op"] == "test"
                    and found is not edit_model.ABSENT
                    and data.draw(st.booleans(), label="passing test")
                ):
                    op["value"] = found
        if merge:
            new_value, failed = edit_model.attempt(
                edit_model.merge_patch, current if live else {}, merge_patch
            )
        else:
            new_value, failed = edit_model.attempt(
                edit_model.apply_patch, current if live else {}, ops
            )
        failure: tuple[type[CastoreError], ...] = ()
        if failed is not None:
            failure = (PatchTestError,) if failed.test else (InvalidValueError,)
        expected = {"expected": self._live(ref), "wrong": self._live(ref) + 1}.get(guard)

        def call():
            return self.stores[h].patch(
                key,
                merge_patch if merge else ops,
                merge=merge,
                scope=where[0],
                namespace=where[1],
                expected_version=expected,
                create_only=guard == "create_only",
                reason=note,
            )

        guard_fails = guard == "wrong" or (guard == "create_only" and live)
        if guard_fails or failure:
            # Nothing is written; a failed guard is a conflict (with a bad patch: either).
            with pytest.raises((ConflictError, *failure) if guard_fails else failure) as info:
                escaped(call)
            if guard_fails and not failure:
                assert isinstance(info.value, ConflictError)
                assert info.value.actual == self._live(ref)
            return
        res = escaped(call)
        what = "merge patch" if merge else "patch"
        self._edited(h, ref, res, new_value, f"{what}: {note}" if note else what)
        assert res.value_json in (None, codec.normalize(new_value))

    @rule(
        h=handles,
        where=targets,
        key=keys,
        by=st.sampled_from(edit_model.INCR_BY),
        path=st.sampled_from(edit_model.INCR_PATHS),
        guard=st.sampled_from(["none", "none", "expected", "wrong"]),
    )
    def incr(self, h, where, key, by, path, guard):
        ref = self._ref(where, key)
        live, current = self._current(ref)
        outcome, failure = edit_model.attempt(edit_model.incr, live, current, by, path)
        expected = {"expected": self._live(ref), "wrong": self._live(ref) + 1}.get(guard)

        def call():
            return self.stores[h].incr(
                key, by, path, scope=where[0], namespace=where[1], expected_version=expected
            )

        if guard == "wrong" or outcome is None:
            # Nothing is written: a failed guard is a conflict (with a bad increment: either).
            with pytest.raises(ConflictError if failure is None else CastoreError):
                escaped(call)
            return
        new_value, number = outcome
        res = escaped(call)
        assert res.number == number
        assert res.number_json == codec.normalize(number)
        reason = f"incr by {edit_model.by_text(by)}" + (f" at {path}" if path else "")
        self._edited(h, ref, res, new_value, reason)

    # -- whole-store reads: audit, stats, check ----------------------------------------

    def _records(self, where: tuple[str | None, str | None]) -> Any:
        """What the audit of the refs ``where`` selects must hold, in the model's order."""
        want = []
        for ref in self._selected(where):
            for version in self._kept(ref):
                normalized = self.history[ref][version - 1]
                audit = self.audit[ref][version - 1]
                digest = "" if normalized is None else codec.hexdigest(normalized)
                want.append((str(ref), version, audit.op, digest, *audit[1:3], *audit.fields()))
        return sorted(want)

    @rule(h=handles, where=st.sampled_from(FILTERS), who=st.sampled_from([None, 0, 1]))
    def audit_trail(self, h, where, who):
        # Every stored version's write or delete, with who wrote it, newest first.
        actor = None if who is None else f"actor{who}"
        records = list(
            escaped(
                lambda: audit_records(
                    self.stores[h], scope=where[0], namespace=where[1], actor=actor
                )
            )
        )
        got = sorted(
            (
                f"{r.scope}/{r.namespace}/{r.key}",
                r.version,
                r.operation,
                r.hash,
                r.rollback_from,
                r.reason,
                r.dag_name,
                r.actor,
                r.run_id,
                r.step_name,
            )
            for r in records
        )
        want = [w for w in self._records(where) if actor in (None, w[7])]
        assert got == want
        times = [r.time_ns for r in records]
        assert times == sorted(times, reverse=True)

    @rule(h=handles)
    def stats(self, h):
        report = escaped(self.stores[h].stats)
        want: dict[str, list[int]] = {}
        for ref, versions in self.history.items():
            kept = self._kept(ref)
            counts = want.setdefault(ref.scope, [0, 0, 0, 0])
            if kept:  # a key compaction removed is neither live nor deleted
                counts[0 if versions[-1] is not None else 1] += 1
            counts[2] += len(kept)
            counts[3] += sum(len(versions[v - 1] or b"") for v in kept)
        for scope, counts in want.items():
            got = report.scopes[scope]
            assert [got.keys, got.deleted_keys, got.versions, got.logical_bytes] == counts
        total = [sum(c[i] for c in want.values()) for i in range(4)]
        t = report.total
        assert [t.keys, t.deleted_keys, t.versions, t.logical_bytes] == total

    @rule(h=handles, repair=st.booleans())
    def check_undamaged(self, h, repair):
        # An undamaged store: check reports ok, and a repair changes nothing.
        before = self._export(h)
        report = escaped(functools.partial(self.stores[h].check, repair=repair))
        assert report.ok, report.findings
        assert [f for f in report.findings if f.severity != "info" or f.repaired] == []
        assert self._export(1 - h) == before

    # -- export and import ------------------------------------------------------------

    def _export(self, h: int, where: tuple[str | None, str | None] = (None, None)) -> Lines:
        lines = list(
            escaped(lambda: export_lines(self.stores[h], scope=where[0], namespace=where[1]))
        )
        # Every stored version, oldest first within a key; a key compaction removed is
        # one delete at its last version.
        got: dict[str, list[tuple[int, str, str]]] = {}
        for line in lines[1:-1]:
            rec = json.loads(line)
            versions = got.setdefault(f"{rec['scope']}/{rec['namespace']}/{rec['key']}", [])
            versions.append((rec["version"], rec["op"], rec.get("hash", "")))
        want: dict[str, list[tuple[int, str, str]]] = {}
        for ref in self._selected(where):
            kept = self._kept(ref) or [len(self.history[ref])]  # removed: its last version
            want[str(ref)] = [
                (
                    v,
                    self.audit[ref][v - 1].op,
                    codec.hexdigest(n) if (n := self.history[ref][v - 1]) else "",
                )
                for v in reversed(kept)
            ]
        assert got == want
        assert json.loads(lines[-1]) == {
            "end": "castore-export",
            "versions": len(lines) - 2,
        }
        return lines

    @precondition(lambda self: self.history and not self.copied)  # a new store costs
    @rule(h=handles, mode=st.sampled_from(["refuse", "skip", "overwrite"]))
    def move_to_a_copy(self, h, mode):
        # Export, import into an empty store (no conflict, whatever the mode), export
        # again: the same bytes. The machine goes on with the copy: versions go on above
        # the exported ones.
        self.copied = True
        lines = self._export(h)
        root = self._dropped.enter_context(self._fresh())
        copy = Store(root, dag=DAG, durable=False)
        report = escaped(lambda: import_lines(copy, lambda: iter(lines), on_conflict=mode))
        assert (report.refs, report.versions) == (len(self.history), len(lines) - 2)
        assert (report.skipped_refs, report.overwritten_refs) == ([], [])
        copy.close()
        for store in self.stores:
            store.close()
        self.root = root
        self.stores = [self._open(0), self._open(1)]
        for (ref, version), said in list(self.gone.items()):
            if said == "compacted":  # the export leaves dropped versions out
                self.gone[ref, version] = "no version"
        for ref, versions in self.history.items():
            if not self._kept(ref):  # removed: one delete at its last version, timed 1 ns
                del self.gone[ref, len(versions)]
                self.ancient.add((ref, len(versions)))
                self.audit[ref][-1] = AuditModel("delete", 0, "removed by compaction", None)
        assert self._export(1 - h) == lines

    @rule(h=handles, where=st.sampled_from(FILTERS))
    def export_snapshot(self, h, where):
        self.snapshot = self._export(h, where)

    @rule(
        h=handles,
        mode=st.sampled_from(["refuse", "skip", "overwrite"]),
        earlier=st.booleans(),
        where=st.sampled_from(FILTERS),
    )
    def import_again(self, h, mode, earlier, where):
        # An export of this store (now, or the snapshot), imported into it again.
        lines = self.snapshot if earlier and self.snapshot else self._export(h, where)
        records = [json.loads(line) for line in lines[1:-1]]
        refs = {str(ref): ref for ref in self.history}
        file: dict[Ref, list[int]] = {}
        for rec in records:
            file.setdefault(refs[f"{rec['scope']}/{rec['namespace']}/{rec['key']}"], []).append(
                rec["version"]
            )

        def call():
            return import_lines(self.stores[h], lambda: iter(lines), on_conflict=mode)

        # Every ref in the file has history here. overwrite: never below the stored newest
        # version, nor into a key compaction removed (its versions would repeat), but a
        # removed key's own line (a delete at its last version) is skipped, as by skip.
        alike = {
            ref for ref, v in file.items() if not self._kept(ref) and v == [len(self.history[ref])]
        }
        refused = any(
            v[-1] != len(self.history[ref]) or not self._kept(ref)
            for ref, v in file.items()
            if ref not in alike
        )
        if file and (mode == "refuse" or (mode == "overwrite" and refused)):
            with pytest.raises(ConflictError):
                escaped(call)
            self._export(1 - h)  # nothing changed
            return
        report = escaped(call)
        names = sorted(str(ref) for ref in file)
        if mode == "skip":
            assert (report.refs, report.versions, sorted(report.skipped_refs)) == (0, 0, names)
            return
        skipped = sorted(str(ref) for ref in alike)
        assert sorted(report.skipped_refs) == skipped
        assert sorted(report.overwritten_refs) == sorted(set(names) - set(skipped))
        assert report.refs == len(file) - len(alike)
        assert report.versions == len(records) - len(alike)
        for ref, versions in file.items():  # the history replaced by the file's
            if ref in alike:
                continue
            for version in range(1, len(self.history[ref]) + 1):
                if version in versions:
                    self.gone.pop((ref, version), None)
                else:  # whether the compaction that dropped it is remembered: unspecified
                    self.gone[ref, version] = ""
        self._export(1 - h)

    @rule(h=handles, dry_run=st.booleans())
    def gc(self, h, dry_run):
        report = escaped(lambda: self.stores[h].gc(grace_seconds=0, dry_run=dry_run))
        assert report.dry_run is dry_run
        assert report.blobs_kept <= report.blobs_found

    # The first rule in Hypothesis's order (fewest arguments, then name) is drawn far more
    # often than the others: it should cost little, as this one does.
    @rule(h=handles)
    def reopen(self, h):
        self.stores[h].close()
        self.stores[h] = escaped(functools.partial(self._open, h))

    @precondition(lambda self: self.history)
    @rule(h=handles, data=st.data())
    def get_written(self, h, data):
        # Bias reads towards refs that have a history (incl. tombstones).
        ref = data.draw(st.sampled_from(sorted(self.history)), label="ref")
        res = escaped(lambda: self.stores[h].get(ref.key, scope=ref.scope, namespace=ref.namespace))
        self._check_get(ref, res)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def listing_matches_model(self):
        # Every step: the full listing of each namespace, through alternating handles.
        self.steps += 1
        store = self.stores[self.steps % 2]
        for scope, namespace in NAMESPACES:
            res = escaped(functools.partial(store.list, scope=scope, namespace=namespace))
            self._check_list(res, scope, namespace, "", 0, False)


# Over the wire every call is a round trip to a server in this process (~1 ms): a quarter
# of the examples there; the model itself is explored on the local backends.
REMOTE_SHARE: Final = 4


def test_store_model(fresh_store_location, request):
    class OnThisBackend(StoreMachine):
        """Each example starts from a fresh store of the backend under test."""

        def __init__(self) -> None:
            super().__init__(fresh_store_location)

    examples = settings().max_examples
    if request.node.callspec.params["fresh_store_location"].startswith("remote"):
        examples = max(1, examples // REMOTE_SHARE)
    run_state_machine_as_test(
        OnThisBackend, settings=settings(deadline=None, max_examples=examples)
    )


@pytest.mark.parametrize("version", [2**60 + 1, 2**63, 2**64])
def test_versions_past_any_log_are_not_found(store_location, version):
    # The machine draws versions near the history; far past it, reads must still say
    # "no such version" (NotFoundError), never leak an OverflowError from pread.
    store = Store(store_location, dag=DAG, durable=False)
    store.set("k", 1)
    store.set("k", 2)
    with pytest.raises(NotFoundError):
        escaped(lambda: store.get("k", version=version))
    with pytest.raises(NotFoundError):
        escaped(lambda: store.rollback("k", to_version=version))
    assert [e.version for e in store.history("k", before_version=version).entries] == [2, 1]
    assert store.get("k").version == 2
