"""A version diff's work is bounded: arrays too costly to compare item by item are
replaced whole (castore/diffbound.py), and the patch stays valid."""

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castore import Store, diffbound
from castore.codec import normalize
from castore.history import json_patch

LONG = 20_000  # two arrays of this many items, all changed, pass DIFF_ARRAY_WORK


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s", dag="d", durable=False)
    yield s
    s.close()


def test_a_long_array_and_its_reversal_is_one_replace(store):
    store.set("k", {"a": list(range(LONG)), "b": 1})
    store.set("k", {"a": list(range(LONG))[::-1], "b": 2})
    patch = store.diff_versions("k", from_version=1, to_version=2).patch
    assert sorted(patch, key=lambda op: op["path"]) == [
        {"op": "replace", "path": "/a", "value": list(range(LONG))[::-1]},
        {"op": "replace", "path": "/b", "value": 2},
    ]  # not 19,999 moves, each shifting lists of 20,000 items


def test_a_long_array_of_changed_items_is_one_replace():
    assert json_patch([0] * LONG, [1] * LONG) == [
        {"op": "replace", "path": "", "value": [1] * LONG}
    ]
    nested = json_patch([[0] * LONG, 5], [[1] * LONG, 6, 7])  # paired as jsonpatch may
    assert jsonpatch.apply_patch([[0] * LONG, 5], nested) == [[1] * LONG, 6, 7]
    assert {"op": "replace", "path": "/0", "value": [1] * LONG} in nested


def test_small_changes_to_long_arrays_stay_item_by_item():
    long = list(range(100_000))
    assert json_patch(long, [*long, "x"]) == [{"op": "add", "path": "/100000", "value": "x"}]
    assert json_patch({"a": long}, {"a": [-1, *long[1:]]}) == [
        {"op": "replace", "path": "/a/0", "value": -1}
    ]
    short = list(range(1000))
    assert len(json_patch(short, short[::-1])) == 999  # moves, as jsonpatch makes them


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from("abc"), inner),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(json_values, json_values, st.integers(0, 200), st.integers(0, 60), st.integers(0, 3))
def test_a_bounded_patch_turns_the_old_value_into_the_new(before, after, work, nodes, long):
    kept = normalize(before)
    with pytest.MonkeyPatch.context() as mp:  # small bounds: most arrays are replaced
        mp.setattr(diffbound, "DIFF_ARRAY_WORK", work)
        mp.setattr(diffbound, "DIFF_NODES", nodes)
        mp.setattr(diffbound, "LONG_ARRAY", long)
        patch = json_patch(before, after)
    assert normalize(before) == kept  # the old value is copied where it is changed
    assert normalize(jsonpatch.apply_patch(before, patch)) == normalize(after)


arrays = st.lists(st.integers(0, 2), max_size=5)
nested_arrays = st.lists(
    arrays | st.integers(0, 2) | st.dictionaries(st.just("a"), arrays), max_size=6
)


@settings(max_examples=400, deadline=None)
@given(nested_arrays, st.data(), st.integers(0, 100), st.integers(0, 60), st.integers(0, 2))
def test_a_bounded_patch_of_arrays_of_arrays_is_valid(before, data, work, nodes, long):
    items = st.sampled_from(before) | arrays if before else arrays  # items moved, kept, new
    after = data.draw(st.lists(items, max_size=7))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffbound, "DIFF_ARRAY_WORK", work)
        mp.setattr(diffbound, "DIFF_NODES", nodes)
        mp.setattr(diffbound, "LONG_ARRAY", long)
        patch = json_patch(before, after)
    assert normalize(jsonpatch.apply_patch(before, patch)) == normalize(after)


def test_arrays_nested_deep_in_arrays_are_written_out_a_bounded_number_of_times():
    # jsonpatch writes out each item of every array it compares, nested arrays again at
    # each level: 60 levels of [...] around 50,000 numbers took 60 times one level's work
    def nested(value: object, depth: int = 60) -> object:
        return value if depth == 0 else [nested(value, depth - 1)]

    before, after = nested(list(range(50_000))), nested([*range(49_999), -1])
    (op,) = json_patch(before, after)
    assert op["op"] == "replace"
    assert op["path"].count("/") < 40  # the array holding the change, replaced whole
    assert jsonpatch.apply_patch(before, [op]) == after
