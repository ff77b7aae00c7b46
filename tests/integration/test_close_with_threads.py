"""``Store.close()`` while other threads use the handle (every backend).

A file store's handle caches descriptors; closing them while another thread
was between looking one up and using it made that thread use a closed number
or one the kernel had just given to another open: thousands of ``Bad file
descriptor`` errors in a few seconds, and logs created in the wrong directory
of the store (``check``: "a file in place of a directory of the store").
``close`` now closes them only when no call of the handle runs.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import pytest

from castore import Store
from tests.helpers import run_threads_for, underlying

KEYS = 12


def _worker(
    store: Store,
    w: int,
    stop: threading.Event,
    acked: list[tuple[str, int, int]],
    errors: list[str],
) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        key = f"w{w}/k{i % KEYS}"
        try:
            version = store.set(key, {"w": w, "i": i}).version
            acked.append((key, version, i))
            assert store.get(key).version >= version
            store.get(key, version=version)
            store.history(key, limit=3)
            if i % 10 == 0:
                store.list(f"w{w}/")
        except Exception as exc:  # noqa: BLE001 - every error is a finding, printed
            errors.append(f"{type(exc).__name__}: {exc}")


@pytest.mark.integration
def test_closing_a_handle_while_threads_use_it_fails_no_call_and_damages_nothing(
    store_location: str,
) -> None:
    store = Store(store_location, dag="d")
    stop = threading.Event()
    acked: list[tuple[str, int, int]] = []
    errors: list[str] = []

    closes = [0]

    def closer() -> None:  # often, but not so often that a remote store only reconnects
        while not stop.is_set():
            store.close()
            closes[0] += 1
            stop.wait(0.005)

    threads = [
        threading.Thread(target=_worker, args=(store, w, stop, acked, errors)) for w in range(4)
    ]

    def worked() -> bool:  # the threads worked while the closer ran (however slow the machine)
        return len(acked) > 40 and closes[0] > 100

    def until_worked() -> None:  # at least 3 s, on until they did (a stuck handle: 120 s)
        start = time.monotonic()
        while not stop.wait(0.1):
            elapsed = time.monotonic() - start
            if (elapsed >= 3.0 and worked()) or elapsed >= 120:
                break
        stop.set()

    run_threads_for(
        [*threads, threading.Thread(target=closer), threading.Thread(target=until_worked)],
        stop,
        600,
    )
    store.close()
    assert errors[:5] == [], f"{len(errors)} calls failed"
    assert worked(), (len(acked), closes[0])
    # Every acknowledged write, read back by a fresh handle, as it was acknowledged.
    fresh = Store(store_location, dag="d")
    for key, version, i in acked:
        w = int(key[1 : key.index("/")])
        assert fresh.get(key, version=version).value == {"w": w, "i": i}, (key, version)
    # Nothing out of place: the store's own check finds nothing (a directory store's
    # stray logs were "a file in place of a directory of the store").
    report = Store(underlying(store_location), dag="d").check()
    assert [f.problem for f in report.findings if f.severity != "info"] == []


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.integration
def test_a_close_asked_during_a_call_runs_when_the_call_ends(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"), dag="d")
    for n in range(20):
        store.set(f"ns{n}", {"n": n}, namespace=f"ns{n}")
    for n in range(20):
        store.get(f"ns{n}", namespace=f"ns{n}")  # directories of 20 namespaces cached
    seen: list[tuple[int, int]] = []

    def progress(*_: object) -> None:  # runs inside check: a call of the handle
        if not seen:
            before = _descriptors()
            store.close()
            seen.append((before, _descriptors()))

    open_before = _descriptors()
    store.check(progress=progress)
    assert seen, "check reported no progress"
    (inside_before, inside_after) = seen[0]
    assert inside_after == inside_before  # deferred: check was still using them
    assert _descriptors() < open_before  # closed once check ended
    assert store.get("ns3", namespace="ns3").value == {"n": 3}  # usable after, as before


@pytest.mark.integration
def test_a_handle_dropped_unclosed_closes_its_descriptors_at_once(tmp_path: Path) -> None:
    # The calls' counter held the handle's close (a bound method) and the handle held
    # the counter: a cycle, so a dropped handle's descriptors waited for the cyclic
    # garbage collector (never, with gc disabled: 5 descriptors more per handle).
    location = str(tmp_path / "s")
    Store(location, dag="d").set("k", 0)
    collecting = gc.isenabled()
    gc.disable()
    try:
        before = _descriptors()
        for n in range(1, 50):
            store = Store(location, dag="d")
            assert store.set("k", n).version == n + 1
            del store
        assert _descriptors() == before
    finally:
        if collecting:
            gc.enable()
