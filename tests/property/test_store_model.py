from __future__ import annotations

import concurrent.futures
import contextlib
import functools
from collections.abc import Callable
from typing import Any, Final, TypeVar

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

from castore import GetResult, ListResult, Store, codec
from castore.errors import CastoreError, ConflictError, NotFoundError
from castore.keys import Ref

T = TypeVar("T")

DAG: Final = "flow"
TOMBSTONE: Final = None  # a history entry is normalized JSON bytes, or None for a delete

# (scope, namespace argument): ("dag", None) and ("dag", "flow") are the same namespace;
# "other" and "Other" are distinct custom namespaces.
TARGETS: Final = [("dag", None), ("dag", DAG), ("custom", "other"), ("custom", "Other")]
NAMESPACES: Final = [("dag", DAG), ("custom", "other"), ("custom", "Other")]
LONG_KEY: Final = "a" + "x" * 1099  # 1,100 bytes: far past any file-name limit
KEYS: Final = ["a", "a/b", "ab", "b", "é", LONG_KEY]
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
        self.root = self._dropped.enter_context(fresh_location())
        self.stores = [self._open(), self._open()]
        self.history: dict[Ref, list[bytes | None]] = {}
        self.audit: dict[Ref, list[tuple[str, int]]] = {}  # (operation, rollback_from)
        self.python: dict[tuple[Ref, int], Any] = {}  # (ref, version) -> value as given
        self.compacted: set[tuple[Ref, int]] = set()  # versions dropped by compaction
        self.steps = 0

    def _open(self) -> Store:
        return Store(self.root, dag=DAG, durable=False)

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
        self, ref: Ref, normalized: bytes | None, value: Any = None, rollback_from: int = 0
    ) -> int:
        versions = self.history.setdefault(ref, [])
        versions.append(normalized)
        if rollback_from:
            op = "rollback" if normalized is not None else "delete"
        else:
            op = "set" if normalized is not None else "delete"
        self.audit.setdefault(ref, []).append((op, rollback_from))
        if normalized is not None:
            self.python[ref, len(versions)] = value
        return len(versions)

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
        self._append(ref, normalized, value)

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
            self._append(ref, normalized, value)

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
        self._append(ref, normalized, value)

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
        self._append(ref, codec.normalize(value), value)

    @rule(h=handles, where=targets, key=keys)
    def delete(self, h, where, key):
        ref = self._ref(where, key)
        live = self._live(ref)
        res = escaped(lambda: self.stores[h].delete(key, scope=where[0], namespace=where[1]))
        assert res.deleted is bool(live), f"{ref}: deleted={res.deleted}, live version {live}"
        if live:
            self._append(ref, TOMBSTONE)

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
            version = self._append(ref, normalized, value)
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
        if (ref, version) in self.compacted:
            with pytest.raises(NotFoundError, match="compacted"):
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
        kept = [v for v in range(top, 0, -1) if (ref, v) not in self.compacted]
        want = kept[:limit] if limit else kept
        assert [e.version for e in res.entries] == want
        for entry in res.entries:
            normalized = self.history[ref][entry.version - 1]
            op, rollback_from = self.audit[ref][entry.version - 1]
            assert entry.operation == op
            assert entry.rollback_from == rollback_from
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
        if to_version > len(versions) or (ref, to_version) in self.compacted:
            with pytest.raises(NotFoundError):
                escaped(call)
            return
        res = escaped(call)
        target = versions[to_version - 1]
        version = self._append(
            ref, target, self.python.get((ref, to_version)), rollback_from=to_version
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
            or {(ref, old), (ref, target)} & (self.compacted)
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

    @rule(h=handles, keep_last=st.integers(min_value=1, max_value=3))
    def compact(self, h, keep_last):
        escaped(lambda: self.stores[h].compact(keep_last=keep_last))
        for ref, versions in self.history.items():
            for version in range(1, len(versions) - keep_last + 1):
                self.compacted.add((ref, version))

    @rule(h=handles)
    def compact_removing(self, h):
        # Nothing kept for its age: each key keeps its newest version, and a key whose
        # newest is a delete is removed whole; its versions stay reserved (never given again).
        escaped(lambda: self.stores[h].compact(keep_within_seconds=0))
        for ref, versions in self.history.items():
            removed = versions[-1] is TOMBSTONE
            for version in range(1, len(versions) + removed):
                self.compacted.add((ref, version))
            kept = [v for v in range(len(versions), 0, -1) if (ref, v) not in self.compacted]
            read = functools.partial(  # each key's history, as the other handle reads it
                self.stores[1 - h].history, ref.key, scope=ref.scope, namespace=ref.namespace
            )
            assert [e.version for e in escaped(read).entries] == kept, ref

    @rule(h=handles)
    def gc(self, h):
        report = escaped(lambda: self.stores[h].gc(grace_seconds=0))
        assert report.blobs_kept <= report.blobs_found

    @rule(h=handles)
    def reopen(self, h):
        self.stores[h].close()
        self.stores[h] = escaped(self._open)

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
