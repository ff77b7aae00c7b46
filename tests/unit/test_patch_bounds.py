"""A JSON Patch's copies are bounded in all, not only by the size of the value they make."""

import pytest

from castore import InvalidValueError, Store
from castore.edits import MAX_COPIED_BYTES

MEMBER = list(range(100_000))  # 588,891 bytes normalized


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s", dag="d", durable=False)
    s.set("k", {"a": MEMBER})
    yield s
    s.close()


def copy_and_remove(times: int) -> list[dict[str, str]]:
    return [{"op": "copy", "from": "/a", "path": "/c"}, {"op": "remove", "path": "/c"}] * times


def test_copies_that_add_up_past_the_bound_are_refused(store):
    # each copy deep-copies its member: 15,000 such pairs fit in a 1 MiB patch (250 s)
    times = MAX_COPIED_BYTES // 588_891 + 1
    with pytest.raises(InvalidValueError, match=rf"operation {2 * times - 1} \(copy /c\).*copies"):
        store.patch("k", copy_and_remove(times))
    assert store.get("k").version == 1


def test_copies_within_the_bound_apply(store):
    times = MAX_COPIED_BYTES // 588_891
    assert store.patch("k", [*copy_and_remove(times), {"op": "add", "path": "/n", "value": 1}])
    assert store.get("k").value == {"a": MEMBER, "n": 1}
