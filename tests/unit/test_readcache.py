"""The cache of each log's newest entry and value stays bounded (castore/file/readcache.py).

Before it had a byte bound, a handle that read 65,536 keys of 1 MiB would
hold 64 GiB, and the writer's inserts had no bound at all (a long-running
server or an import writing many keys grew without limit).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from castore import Store
from castore.backend import Current
from castore.file import readcache
from castore.file.readcache import ReadCache
from castore.records import Entry
from tests.helpers import file_backend


def _current(size: int) -> Current:
    return Current(None, b"x" * size)


def test_bytes_and_entries_stay_within_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readcache, "CACHE_MAX_BYTES", 100_000)
    monkeypatch.setattr(readcache, "CACHE_MAX_ENTRIES", 50)
    cache = ReadCache()
    for i in range(1_000):
        cache.put(f"log{i}", (i, 0, 0, 0), _current(i % 7 * 1_000))
        held = sum(readcache._OVERHEAD + len(c.value or b"") for _, c in cache._items.values())
        assert cache.held_bytes == held  # the counter is what is held
        assert cache.held_bytes <= 100_000
        assert len(cache) <= 50
        assert cache.get(f"log{i}") == ((i, 0, 0, 0), _current(i % 7 * 1_000))  # the newest kept


def test_replacing_and_forgetting_a_log_keeps_the_count_exact() -> None:
    cache = ReadCache()
    cache.put("a", (1, 0, 0, 0), _current(1_000))
    cache.put("a", (2, 0, 0, 0), _current(10))
    cache.put("b", (3, 0, 0, 0), _current(20))
    assert cache.held_bytes == 2 * readcache._OVERHEAD + 30
    cache.pop("a")
    cache.pop("missing")
    assert cache.held_bytes == readcache._OVERHEAD + 20
    cache.clear()
    assert (cache.held_bytes, len(cache)) == (0, 0)


def test_a_handle_writing_and_reading_many_large_values_holds_at_most_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = 256 * 1024
    monkeypatch.setattr(readcache, "CACHE_MAX_BYTES", budget)
    store = Store(tmp_path / "s", dag="d", durable=False)
    cache = file_backend(store)._cache
    values = {f"k{i}": {"i": i, "text": f"{i:05d}" * 4_000} for i in range(60)}  # 20 KB each
    for key, value in values.items():
        store.set(key, value)
        assert cache.held_bytes <= budget
    for key, value in values.items():
        assert store.get(key).value == value
        assert cache.held_bytes <= budget
    assert 0 < len(cache) < len(values)
    store.close()


def _entry(version: int) -> Current:
    return Current(Entry(version=version, op="set", time_ns=1), b"1", 100)


def test_a_late_put_of_an_older_read_keeps_the_newer_version() -> None:
    """A reader thread that read version 2 puts it after a writer thread cached version 3."""
    cache = ReadCache()
    cache.put("a", (1, 300, 0, 0), _entry(3))
    cache.put("a", (1, 200, 0, 0), _entry(2))
    assert cache.get("a") == ((1, 300, 0, 0), _entry(3))
    cache.put("a", (2, 300, 0, 0), _entry(3))  # the same version in a rewritten file
    assert cache.get("a") == ((2, 300, 0, 0), _entry(3))
    assert cache.held_bytes == readcache._OVERHEAD + 1


def test_a_log_about_to_be_rewritten_is_no_hit_but_still_known() -> None:
    cache = ReadCache()
    cache.put("a", (1, 300, 0, 0), _entry(3))
    cache.stale("a")
    cache.stale("missing")
    held = cache.get("a")
    assert held is not None
    assert held[0] != (1, 300, 0, 0)  # no file has this signature
    assert held[1] == _entry(3)
    assert (len(cache), cache.held_bytes) == (1, readcache._OVERHEAD + 1)
