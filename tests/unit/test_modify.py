"""Read-modify-write in the library: Store.patch, Store.incr, Store.update (issue 11).

The store comes from the ``store_location`` fixture (tests/conftest.py), so
every backend runs these; the edits themselves (castore.edits) are tested on
bytes below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from castore import (
    ConflictError,
    IncrResult,
    InvalidValueError,
    PatchResult,
    PatchTestError,
    SetResult,
    Store,
    ValueTooLargeError,
    codec,
)
from castore.edits import Increment, MergePatch, decode_literal, parse_number, pointer_parts
from castore.pyvalues import NumberLiteral

# Literals that a decode to Python floats and back would change.
LITERALS = b'{"a":1.50,"b":1E2,"big":1e400,"n":-0,"z":[0.10,-2.5e-3]}'


@pytest.fixture
def store(store_location):
    s = Store(store_location, dag="d", durable=False)
    yield s
    s.close()


def versions(store: Store, key: str) -> int:
    return len(store.history(key).entries)


# -- patch (RFC 6902) ----------------------------------------------------------------------


def test_patch_applies_and_keeps_untouched_literals(store):
    store.set("k", LITERALS)
    r = store.patch(
        "k", [{"op": "add", "path": "/c", "value": True}, {"op": "remove", "path": "/b"}]
    )
    expected = b'{"a":1.50,"big":1e400,"c":true,"n":-0,"z":[0.10,-2.5e-3]}'
    assert isinstance(r, PatchResult)
    assert isinstance(r, SetResult)
    assert (r.version, r.created, r.value_json) == (2, False, expected)
    assert store.get("k").value_json == expected
    assert r.hash == codec.hexdigest(expected) == store.set("same", expected).hash


def test_patch_values_are_normalized_as_set_normalizes_them(store):
    text = b'[{"op": "add", "path": "/v", "value": {"y": 1.0, "x": "<&>", "w": 1e2}}]'
    r = store.patch("k", text)
    assert r.value_json == b'{"v":{"w":1e2,"x":"\\u003c\\u0026\\u003e","y":1.0}}'
    assert r.value == {"v": {"w": 100.0, "x": "<&>", "y": 1.0}}
    assert r.hash == store.set("other", b'{"v": {"y": 1.0, "x": "<&>", "w": 1e2}}').hash


def test_patch_of_an_absent_key_starts_from_an_empty_object(store):
    r = store.patch("new", [{"op": "add", "path": "/a", "value": 1}])
    assert (r.version, r.created, r.value) == (1, True, {"a": 1})
    store.delete("new")
    r = store.patch("new", [{"op": "test", "path": "", "value": {}}])
    assert (r.version, r.created, r.value) == (3, True, {})


def test_patch_can_replace_the_whole_value(store):
    store.set("k", [1, 2])
    assert store.patch("k", [{"op": "replace", "path": "", "value": "x"}]).value == "x"


def test_a_failed_test_operation_is_a_conflict_and_writes_nothing(store):
    store.set("k", {"owner": "a", "n": 1})
    patch = [
        {"op": "replace", "path": "/n", "value": 2},
        {"op": "test", "path": "/owner", "value": "b"},
    ]
    with pytest.raises(PatchTestError) as exc:
        store.patch("k", patch)
    assert isinstance(exc.value, ConflictError)
    assert exc.value.actual == 1
    assert "operation 2 (test /owner)" in str(exc.value)
    assert '"a"' in str(exc.value)
    assert store.get("k").value == {"owner": "a", "n": 1}
    assert versions(store, "k") == 1
    with pytest.raises(PatchTestError):  # a missing member fails its test too
        store.patch("k", [{"op": "test", "path": "/missing", "value": None}])
    good = [{"op": "test", "path": "/n", "value": 1.0}, {"op": "replace", "path": "/n", "value": 2}]
    assert store.patch("k", good).value == {"owner": "a", "n": 2}  # numbers compare by value


def test_a_test_operation_compares_deep_values_without_recursing(store):
    # Found by a review: jsonpatch's == (and its failure message, a repr of the value)
    # raised RecursionError on a value nested 3,000 deep, whether the test held or not.
    deep: Any = 1
    for _ in range(3_000):
        deep = {"a": deep}
    store.set("d", deep)
    assert store.patch("d", [{"op": "test", "path": "/a", "value": deep["a"]}]).version == 2
    with pytest.raises(PatchTestError) as exc:
        store.patch("d", [{"op": "test", "path": "/a", "value": 1}])
    message = str(exc.value)
    assert 'operation 1 (test /a): the value is {"a":{"a":' in message
    assert message.endswith("..., not 1")
    assert len(message) < 300
    with pytest.raises(PatchTestError):
        store.patch("d", [{"op": "test", "path": "", "value": deep["a"]}])
    assert versions(store, "d") == 2


def test_a_patch_adding_a_value_too_deep_for_jsonpatch_is_refused_not_raised(store):
    # Found by a review (thirty-third session): jsonpatch deep-copies a value it adds, and
    # one nested ~10,000 deep (a value set takes) raised RecursionError: a traceback from
    # the CLI, 500 internal from a server. Oracle: the key is unchanged.
    store.set("d", 1)
    deep: Any = 1
    for _ in range(9_990):
        deep = [deep]
    with pytest.raises(InvalidValueError, match=r"operation 1 \(add \): its value nests too"):
        store.patch("d", [{"op": "add", "path": "", "value": deep}])
    assert versions(store, "d") == 1
    assert store.get("d").value == 1


def test_copies_that_take_the_value_past_the_limit_stop_the_patch(store):
    # Found by a review (thirty-fifth session): each copy of the whole value doubles it, and
    # the size was checked only once every operation had run, so 22 copies of a 100-byte
    # value (a 1 KiB patch) held the key's lock 12 s and grew the process by 1 GB, 30 would
    # take 2**30 x 100 bytes. Oracle: the limit is checked as the copies add up, so the
    # patch stops there (before the failing test at its end) and the key is unchanged.
    store.set("k", {"a": "x" * 100})
    copies = [{"op": "copy", "from": "", "path": f"/c{n}"} for n in range(16)]
    with pytest.raises(ValueTooLargeError):
        store.patch("k", [*copies, {"op": "test", "path": "/nothing", "value": 1}])
    assert versions(store, "k") == 1
    # Copies that stay within the limit, and a copy the patch then removes, still apply.
    few = [{"op": "copy", "from": "", "path": f"/c{n}"} for n in range(4)]
    done = store.patch("k", [*few, {"op": "remove", "path": "/c3"}])
    assert set(done.value) == {"a", "c0", "c1", "c2"}


@pytest.mark.parametrize(
    ("stored", "path", "value", "holds"),
    [
        (b'{"x":1e400}', "/x", b"10e399", True),  # numbers by their exact value
        (b'{"x":1e400}', "/x", b"1e401", False),  # (not as floats: both are inf)
        (b'{"x":100000000000000000000000000000}', "/x", b"1e29", True),
        (b'{"x":100000000000000000000000000000}', "/x", b"1e30", False),
        (b'{"x":-0}', "/x", b"0", True),
        (b'{"x":1.50}', "/x", b"1.5", True),
        (b'{"x":1}', "/x", b"true", False),  # a boolean is not a number
        (b'{"x":{"a":1,"b":[2]}}', "/x", b'{"b":[2.0],"a":1}', True),
        (b'{"x":[1,2]}', "/x/01", b"2", False),  # not an index: names no member
    ],
)
def test_a_test_operation_follows_rfc_6902_equality(store, stored, path, value, holds):
    store.set("k", stored)
    patch = b'[{"op":"test","path":"%s","value":%s}]' % (path.encode(), value)
    if holds:
        assert store.patch("k", patch).version == 2
    else:
        with pytest.raises(PatchTestError):
            store.patch("k", patch)


def test_a_test_of_the_end_of_an_array_says_it_names_no_member(store):
    # Found by a review: the message showed jsonpatch's internal EndOfList([1, 2]).
    store.set("k", {"a": [1, 2]})
    with pytest.raises(PatchTestError) as exc:
        store.patch("k", [{"op": "test", "path": "/a/-", "value": 2}])
    assert "operation 1 (test /a/-): '-' names no member" in str(exc.value)
    assert "EndOfList" not in str(exc.value)
    with pytest.raises(InvalidValueError, match="a test needs a 'value' member"):
        store.patch("k", [{"op": "test", "path": "/a"}])


@pytest.mark.parametrize(
    "patch",
    [
        {"op": "add", "path": "/a", "value": 1},  # not an array
        [{"op": "append", "path": "/a", "value": 1}],  # not an RFC 6902 operation
        [{"path": "/a"}],
        [{"op": ["add"], "path": "/a", "value": 1}],  # a TypeError traceback: not hashable
        [{"op": {"add": 1}, "path": "/a", "value": 1}],
        [{"op": "add", "value": 1}],
        [{"op": "move", "path": "/a"}],
        [{"op": "replace", "path": "/a"}],  # no value
        [{"op": "add", "path": "a", "value": 1}],  # not a pointer
        [{"op": "remove", "path": "/missing"}],  # does not apply
        [{"op": "add", "path": "/l/7", "value": 1}],
        [{"op": "add", "path": "/a/b/c", "value": 1}],
        b"[{",
    ],
)
def test_an_invalid_or_inapplicable_patch_writes_nothing(store, patch):
    store.set("k", {"a": 1, "l": [1]})
    with pytest.raises(InvalidValueError):
        store.patch("k", patch)
    assert versions(store, "k") == 1


@pytest.mark.parametrize(
    ("stored", "op", "reason"),
    [
        (1, {"op": "remove", "path": "/a"}, "the value is a number: it has no member 'a'"),
        ({"a": [1]}, {"op": "remove", "path": "/a/5"}, "/a has no item '5'"),
        (
            {"a": None},
            {"op": "add", "path": "/a/b", "value": 1},
            "/a is null: it has no member 'b'",
        ),
        ({"a": 1}, {"op": "replace", "path": "/b", "value": 1}, "the value has no member 'b'"),
        ({"a/b": {}}, {"op": "remove", "path": "/a~1b/c"}, "/a~1b has no member 'c'"),
        (
            {"a": 1},
            {"op": "move", "from": "/zz", "path": "/b"},
            "from: the value has no member 'zz'",
        ),
        ({"a": "s"}, {"op": "copy", "from": "/a/0", "path": "/b"}, "from: /a is a string"),
        # Not RFC 6901 indexes, though str.isdigit takes them: int("²") raised a ValueError
        # traceback, and /a/01/x was said to stop at the item 1 instead of at '01'.
        ({"a": [1]}, {"op": "remove", "path": "/a/²"}, "/a has no item '²'"),
        ({"a": [1]}, {"op": "copy", "from": "/a/²", "path": "/b"}, "from: /a has no item '²'"),
        ({"a": [1, 2]}, {"op": "remove", "path": "/a/01/x"}, "/a has no item '01'"),
        # A move that removed its source and then failed was explained on what was left:
        # "from: the value has no member 'a'".
        ({"a": 1}, {"op": "move", "from": "/a", "path": "/x/-"}, "the value has no member 'x'"),
    ],
)
def test_a_patch_that_does_not_apply_says_where(store, stored, op, reason):
    # Found by a review: "Document '<class 'int'>' does not support indexing, must be
    # mapping/sequence or support __getitem__" (jsonpatch's words for a number).
    store.set("k", stored)
    with pytest.raises(InvalidValueError) as exc:
        store.patch("k", [op])
    assert f"JSON Patch does not apply: operation 1 ({op['op']} {op['path']}): " in str(exc.value)
    assert reason in str(exc.value)
    assert versions(store, "k") == 1


def test_patch_guards(store):
    with pytest.raises(ConflictError) as exc:
        store.patch("k", [], expected_version=3)
    assert (exc.value.expected, exc.value.actual) == (3, 0)
    assert store.patch("k", [], create_only=True).version == 1
    with pytest.raises(ConflictError) as exc:
        store.patch("k", [], create_only=True)
    assert (exc.value.expected, exc.value.actual) == (None, 1)
    with pytest.raises(ConflictError):
        store.patch("k", [], expected_version=0)
    assert store.patch("k", [], expected_version=1).version == 2
    assert versions(store, "k") == 2


# -- merge patch (RFC 7396) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # RFC 7396, appendix A, plus absent keys
        (b'{"a":"b"}', b'{"a":"c"}', b'{"a":"c"}'),
        (b'{"a":"b"}', b'{"b":"c"}', b'{"a":"b","b":"c"}'),
        (b'{"a":"b"}', b'{"a":null}', b"{}"),
        (b'{"a":"b","b":"c"}', b'{"a":null}', b'{"b":"c"}'),
        (b'{"a":["b"]}', b'{"a":"c"}', b'{"a":"c"}'),
        (b'{"a":"c"}', b'{"a":["b"]}', b'{"a":["b"]}'),
        (b'{"a":{"b":"c"}}', b'{"a":{"b":"d","c":null}}', b'{"a":{"b":"d"}}'),
        (b'{"a":[{"b":"c"}]}', b'{"a":[1]}', b'{"a":[1]}'),
        (b'["a","b"]', b'["c","d"]', b'["c","d"]'),
        (b'{"a":"b"}', b'["c"]', b'["c"]'),
        (b'{"a":"foo"}', b"null", b"null"),
        (b'{"a":"foo"}', b'"bar"', b'"bar"'),
        (b'{"e":null}', b'{"a":1}', b'{"a":1,"e":null}'),
        (b"[1,2]", b'{"a":"b","c":null}', b'{"a":"b"}'),
        (b"{}", b'{"a":{"bb":{"ccc":null}}}', b'{"a":{"bb":{}}}'),
        (None, b'{"a":{"b":null,"c":[null]}}', b'{"a":{"c":[null]}}'),
        (None, b"7", b"7"),
    ],
)
def test_merge_patch_follows_rfc_7396(store, target, patch, result):
    if target is not None:
        store.set("k", target)
    r = store.patch("k", patch, merge=True)
    assert r.value_json == result
    assert r.created == (target is None)
    assert r.hash == store.set("same", result).hash


def test_merge_patch_keeps_literals_and_guards(store):
    store.set("k", LITERALS)
    r = store.patch("k", b'{"b": null, "z": {"q": 2.50}}', merge=True, expected_version=1)
    assert r.value_json == b'{"a":1.50,"big":1e400,"n":-0,"z":{"q":2.50}}'
    with pytest.raises(ConflictError):
        store.patch("k", b"{}", merge=True, create_only=True)
    with pytest.raises(InvalidValueError):
        store.patch("k", b"{", merge=True)
    assert versions(store, "k") == 2


# -- incr ---------------------------------------------------------------------------------------


def test_incr_counts_from_zero(store):
    r = store.incr("runs")
    assert isinstance(r, IncrResult)
    assert (r.version, r.created, r.number, r.number_json) == (1, True, 1, b"1")
    assert store.incr("runs", 4).number == 5
    assert store.incr("runs", by=-10).number == -5
    assert store.get("runs").value_json == b"-5"
    assert store.incr("runs").hash == store.set("same", -4).hash


def test_incr_big_integers_stay_exact(store):
    store.set("big", 2**200)
    r = store.incr("big", 1)
    assert r.number == 2**200 + 1
    assert store.get("big").value_json == str(2**200 + 1).encode()
    assert store.incr("c", 10**30, "/n").number == 10**30
    assert store.incr("c", 10**30 + 7, "/n").number_json == str(2 * 10**30 + 7).encode()
    huge = "9" * 5000  # past Python's default int-to-str digit limit
    store.set("huge", huge.encode())
    assert store.incr("huge").number_json == b"1" + b"0" * 5000


def test_incr_floats_take_gos_form(store):
    assert store.incr("f", 0.1).number_json == b"0.1"
    assert store.incr("f", 0.2).number_json == b"0.30000000000000004"
    store.set("g", b"1.50")
    assert store.incr("g").number_json == b"2.5"
    store.set("h", b"1E2")
    assert store.incr("h", 1).number_json == b"101"
    assert store.incr("h", 1e21).number_json == b"1e+21"
    store.set("z", b"-0")
    assert store.incr("z").number_json == b"1"


def test_incr_at_a_pointer_creates_what_is_missing(store):
    store.set("s", LITERALS)
    r = store.incr("s", 2, "/runs/daily~1x")
    assert r.number == 2
    after = store.get("s").value_json
    assert after == b'{"a":1.50,"b":1E2,"big":1e400,"n":-0,"runs":{"daily/x":2},"z":[0.10,-2.5e-3]}'
    assert store.incr("s", 1, "/z/1").number_json == b"0.9975"
    assert store.incr("s", 1, "/n").number_json == b"1"
    assert store.incr("fresh", 1, "/a/b").number == 1
    assert store.get("fresh").value == {"a": {"b": 1}}


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (b'"text"', None),
        (b"true", None),
        (b"null", None),
        (b'{"a":1}', None),
        (b"[1]", ""),
        (b'{"a":"1"}', "/a"),
        (b'{"a":false}', "/a"),
        (b'{"a":null}', "/a"),
        (b'{"a":[1]}', "/a/5"),  # an index must exist
        (b'{"a":[1]}', "/a/-"),
        (b'{"a":[1]}', "/a/01"),
        (b'{"a":7}', "/a/b"),  # through a number
        (b"[1]", "/x"),
        (b"5", "/x"),
    ],
)
def test_incr_of_a_non_number_is_invalid_and_writes_nothing(store, value, path):
    store.set("k", value)
    with pytest.raises(InvalidValueError):
        store.incr("k", 1, path)
    assert store.get("k").value_json == value
    assert versions(store, "k") == 1


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        (b"5", "/x", "incr: /x: the value is a number: it has no member 'x'"),
        (b'{"a":7}', "/a/b", "incr: /a/b: /a is a number: it has no member 'b'"),
        (b'{"a":[1]}', "/a/5", "incr: /a/5: /a is an array of length 1: it has no index '5'"),
        (b'{"a":{"b":null}}', "/a/b/c", "incr: /a/b/c: /a/b is null: it has no member 'c'"),
        (b'{"a":"1"}', "/a", "incr: /a is a string, not a number"),
    ],
)
def test_incr_says_where_its_path_stops(store, value, path, message):
    """Found by a docs review: "incr: /a: / is not an object or array without 'a'"."""
    store.set("k", value)
    with pytest.raises(InvalidValueError) as caught:
        store.incr("k", 1, path)
    assert caught.value.detail == message


@pytest.mark.parametrize("by", [float("nan"), float("inf")])
def test_incr_needs_a_finite_number_to_add(store, by):
    with pytest.raises(InvalidValueError):
        store.incr("k", by)
    assert not store.get("k").found


@pytest.mark.parametrize("by", [True, "1", None, [1]])
def test_incr_of_something_not_a_number_is_a_type_error(store, by):
    # DESIGN: a wrong-typed argument is a TypeError naming it (the CLI parses --by itself).
    with pytest.raises(TypeError, match=f"by must be a number, not {type(by).__name__}"):
        store.incr("k", by)
    assert not store.get("k").found


def test_incr_rejects_bad_pointers_and_overflow(store):
    with pytest.raises(InvalidValueError):
        store.incr("k", 1, "a")
    with pytest.raises(InvalidValueError):
        store.incr("k", 1, "/a~2")
    store.set("f", 1.7e308)
    with pytest.raises(InvalidValueError, match="float64"):
        store.incr("f", 1.7e308)
    store.set("i", 10**400)
    with pytest.raises(InvalidValueError, match="float64"):
        store.incr("i", 0.5)
    assert versions(store, "f") == 1
    assert versions(store, "i") == 1


def test_incr_expected_version(store):
    store.incr("k")
    with pytest.raises(ConflictError) as exc:
        store.incr("k", expected_version=2)
    assert (exc.value.expected, exc.value.actual) == (2, 1)
    assert store.incr("k", expected_version=1).number == 2


def test_the_audit_says_what_an_edit_did(store):
    store.incr("k", 2, "/n")
    store.incr("k", reason="nightly", path="/n")
    store.patch("k", [{"op": "add", "path": "/x", "value": 1}])
    store.patch("k", b'{"x": null}', merge=True, reason="cleanup")
    reasons = [e.reason for e in store.history("k").entries]
    assert reasons == [
        "merge patch: cleanup",
        "patch",
        "incr by 1 at /n: nightly",
        "incr by 2 at /n",
    ]
    assert {e.operation for e in store.history("k").entries} == {"set"}


def test_an_edit_s_note_never_costs_the_caller_s_reason_its_room(store):
    # Found by a review: the note was joined to the reason before the bound was checked,
    # so a reason of 8,190 characters, which set takes, was refused ("holds 8197
    # characters"), and an incr with no reason at all was refused for a long pointer.
    reason = "r" * 8184
    pointer = "/" + "p" * 8190
    store.set("k", 1, reason=reason)
    store.patch("k", [], reason=reason)
    store.patch("k", b"{}", merge=True, reason=reason)
    store.incr("c", reason=reason)
    store.incr("d", path=pointer)
    store.incr("e", by=int("9" * 4000), path=pointer, reason="r" * 8192)
    store.incr("f", reason="r" * 8189)  # room for "…: " and no more
    reasons = {key: [e.reason for e in store.history(key).entries] for key in "kcdef"}
    assert reasons["k"][1:] == [f"patch: {reason}", reason]
    assert reasons["k"][0] == f"merge…: {reason}"  # the note shortened, the reason whole
    assert reasons["c"] == [f"incr …: {reason}"]
    assert reasons["d"] == [f"incr by 1 at {pointer}"[:8191] + "…"]
    assert reasons["e"] == ["r" * 8192]
    assert reasons["f"] == ["…: " + "r" * 8189]
    for key, kept in reasons.items():
        assert all(len(text) <= 8192 for text in kept), key
    with pytest.raises(InvalidValueError, match="audit field reason holds 8193 characters"):
        store.incr("c", reason="r" * 8193)  # the caller's own bound, named with its length
    assert store.get("c").value == 1


def test_a_bad_audit_field_fails_whether_or_not_the_call_writes(store, monkeypatch):
    # Found by a review: fields were checked only where a version was appended, so an
    # unchanged diff, a delete of an absent key and a rollback that writes nothing took
    # a reason of the wrong type or length (or an over-long $DAG_RUN_ID) until the day
    # the call wrote.
    store.set("k", 1)
    store.delete("gone")
    calls: list[Callable[[Any], object]] = [
        lambda reason: store.diff("k", 1, reason=reason),
        lambda reason: store.diff("k", 2, update=False, reason=reason),
        lambda reason: store.delete("absent", reason=reason),
        lambda reason: store.rollback("gone", to_version=1, reason=reason),
        lambda reason: store.set("k", 1, reason=reason),
    ]
    before = [e.version for e in store.history("k").entries]
    for call in calls:
        with pytest.raises(TypeError, match="reason"):
            call(5)
        with pytest.raises(InvalidValueError, match="reason holds 8193 characters"):
            call("r" * 8193)
        with monkeypatch.context() as env:
            env.setenv("DAG_RUN_ID", "x" * 8193)
            with pytest.raises(InvalidValueError, match=r"run_id .*holds 8193 characters"):
                call("")
    assert [e.version for e in store.history("k").entries] == before
    assert store.diff("k", 1).changed is False  # and the calls themselves still work


def test_incr_from_threads_on_one_handle_is_exact(store):
    def work() -> None:
        for _ in range(25):
            store.incr("n", path="/count")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("n").value == {"count": 100}
    assert store.get("n").version == 100


# -- update ---------------------------------------------------------------------------------


def test_update_reads_calls_and_writes(store):
    r = store.update("k", lambda v: {"n": 1} if v is None else {"n": v["n"] + 1})
    assert isinstance(r, SetResult)
    assert (r.version, r.created) == (1, True)
    r = store.update("k", lambda v: {"n": v["n"] + 1}, reason="why")
    assert (r.version, r.created) == (2, False)
    assert store.get("k").value == {"n": 2}
    assert store.history("k").entries[0].reason == "why"


def test_update_retries_after_a_concurrent_write(store):
    store.set("k", 1)
    seen = []

    def fn(value):
        seen.append(value)
        if len(seen) == 1:
            store.set("k", 10)  # another writer comes in between the read and the write
        return value + 1

    assert store.update("k", fn).version == 3
    assert seen == [1, 10]
    assert store.get("k").value == 11


def test_update_gives_up_after_its_retries(store):
    store.set("k", 0)
    calls = []

    def fn(value):
        calls.append(value)
        store.set("k", value + 100)  # always raced
        return value + 1

    with pytest.raises(ConflictError):
        store.update("k", fn, retries=2)
    assert len(calls) == 3
    with pytest.raises(InvalidValueError):
        store.update("k", fn, retries=-1)


def test_update_errors_write_nothing(store):
    store.set("k", 1)
    with pytest.raises(InvalidValueError):
        store.update("k", lambda v: {1, 2})
    with pytest.raises(ZeroDivisionError):
        store.update("k", lambda v: v / 0)
    assert versions(store, "k") == 1


def test_update_from_threads_on_one_handle_is_exact(store):
    def work() -> None:
        for _ in range(25):
            store.update("n", lambda v: (v or 0) + 1, retries=10_000)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("n").value == 100


# -- the edits on bytes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "normalized",
    [
        LITERALS,
        b"-0",
        b"[-0,-0.0,0]",
        b'{"k":"-0"}',
        b"1" + b"0" * 5000,
        b"[" * 5000 + b"1.50" + b"]" * 5000,
        b'{"a":' * 3000 + b"-0" + b"}" * 3000,
        b'"\\u003c\\u2028"',
    ],
    ids=["literals", "neg-zero", "zeros", "string", "huge-int", "deep", "deep-neg-zero", "escapes"],
)
def test_decoding_with_literals_gives_the_bytes_back(normalized):
    assert codec.normalize_python(decode_literal(normalized)) == normalized


def test_number_literals():
    assert NumberLiteral("1.50") == 1.5
    assert NumberLiteral("1.50").text == "1.50"
    with pytest.raises(InvalidValueError):
        NumberLiteral("01")
    with pytest.raises(InvalidValueError):
        NumberLiteral("1.")
    assert parse_number("5") == 5
    assert isinstance(parse_number("5"), int)
    assert parse_number("-2.5e1") == -25.0
    assert parse_number(" 3 ") == 3
    for bad in ("x", "1e400", "", "+1", "0x10", "NaN"):
        with pytest.raises(InvalidValueError):
            parse_number(bad)
    assert pointer_parts("") == []
    assert pointer_parts("/a~1b/~0/") == ["a/b", "~", ""]


def test_deep_merge_patches_do_not_recurse():
    patch = b'{"a":' * 4000 + b"null" + b"}" * 3999 + b"}"
    result = MergePatch(patch)(None)
    assert result == b'{"a":' * 3999 + b"{}" + b"}" * 3999


def test_an_edit_remembers_its_results():
    edit = Increment(3, "/x")
    assert edit(b'{"x":1,"y":2.0}', 4) == b'{"x":4,"y":2.0}'
    assert (edit.value, edit.number, edit.version, edit.note) == (
        b'{"x":4,"y":2.0}',
        b"4",
        4,
        "incr by 3 at /x",
    )
