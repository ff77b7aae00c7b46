"""Many threads on one Store handle, and many processes creating the same stores.

Issue 8: a handle is shared by a server's or a pool's threads, and parallel
DAG steps create a store on first use at the same moment. The stores come from
the ``store_location`` / ``new_store_location`` fixtures (tests/conftest.py):
every backend runs these.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from castore import ConflictError, Store
from castore.backends import is_postgres
from castore.errors import CastoreError, NotFoundError
from castore.file.backend import FileBackend
from tests.helpers import is_remote_location, run_threads_for, underlying

THREADS = 8
INCREMENTS = 250
# Over the wire (a server in this process: one GIL for clients and server) a round trip
# costs ~1 ms and 8 CAS loops conflict ~6 times per increment: fewer, same race.
REMOTE_INCREMENTS = 40
# PostgreSQL: a round trip per call too, and a conflicting transaction aborts (250 took 66 s
# of the suite's 2 cores with a handle per thread); the same race, with fewer laps.
POSTGRES_INCREMENTS = 100
READERS = 3


def _increment(store: Store, key: str, times: int) -> int:
    """Compare-and-swap ``times`` increments of a counter; return the conflicts seen."""
    conflicts = 0
    done = 0
    while done < times:
        current = store.get(key)
        value = current.value if current.found else 0
        try:
            store.set(key, value + 1, expected_version=current.version if current.found else 0)
        except ConflictError:
            conflicts += 1
            continue
        done += 1
    return conflicts


def _reader(store: Store, key: str, stop: threading.Event, problems: list[str]) -> int:
    """List, page history and read versions while writers run; every answer must fit."""
    reads = 0
    rng = random.Random(threading.get_ident())
    while not stop.is_set():
        listed = store.list()
        if listed.skipped:
            problems.append(f"list skipped {listed.skipped}")
        for entry in listed.entries:
            if entry.key == key:
                got = store.get(key, version=entry.version)
                if got.value != entry.version:  # the counter's value equals its version
                    problems.append(f"version {entry.version} holds {got.value}")
        page = store.history(key, limit=20).entries
        versions = [e.version for e in page]
        if versions != sorted(versions, reverse=True) or (
            versions and versions != list(range(versions[0], versions[0] - len(versions), -1))
        ):
            problems.append(f"history page not dense: {versions}")
        if versions:
            pick = rng.randint(1, versions[0])
            if store.get(key, version=pick).value != pick:
                problems.append(f"get(version={pick}) wrong")
        reads += 1
    return reads


def _run_threads(
    handles: Callable[[int], Store], key: str, increments: int = INCREMENTS
) -> tuple[int, int, list[str]]:
    problems: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    conflicts: list[int] = []
    reads: list[int] = []

    def guarded(fn: Callable[[], Any], out: list[Any]) -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - every exception is a finding
            errors.append(exc)

    writers = [
        threading.Thread(
            target=guarded, args=(lambda n=n: _increment(handles(n), key, increments), conflicts)
        )
        for n in range(THREADS)
    ]
    readers = [
        threading.Thread(
            target=guarded,
            args=(lambda n=n: _reader(handles(THREADS + n), key, stop, problems), reads),
        )
        for n in range(READERS)
    ]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert not errors, errors[:3]
    return sum(conflicts), sum(reads), problems


@pytest.mark.integration
@pytest.mark.parametrize("sharing", ["one-shared-handle", "a-handle-per-thread"])
def test_threads_never_lose_an_update(store_location: str, sharing: str) -> None:
    root = store_location
    shared = Store(root, dag="d", durable=False)
    own = [Store(root, dag="d", durable=False) for _ in range(THREADS + READERS)]

    def handles(n: int) -> Store:
        return shared if sharing == "one-shared-handle" else own[n]

    increments = (
        REMOTE_INCREMENTS
        if is_remote_location(root)
        else POSTGRES_INCREMENTS
        if is_postgres(root)
        else INCREMENTS
    )
    conflicts, reads, problems = _run_threads(handles, "counter", increments)
    print(f"{sharing}: {THREADS}x{increments} increments, {conflicts} conflicts, {reads} reads")  # noqa: T201
    assert not problems, problems[:5]
    assert reads > 0
    total = THREADS * increments
    final = Store(root, dag="d").get("counter")
    assert (final.value, final.version) == (total, total)
    history = Store(root, dag="d").history("counter").entries
    assert [e.version for e in history] == list(range(total, 0, -1))
    assert Store(root, dag="d").check().ok


@pytest.mark.integration
def test_list_while_threads_create_keys(
    store_location: str, request: pytest.FixtureRequest
) -> None:
    # Issue 8: with 8 threads on one handle, list raised "Set changed size during
    # iteration" while other threads added keys (the key index's cached tail).
    store = Store(store_location, dag="d", durable=False)
    errors: list[BaseException] = []
    done = threading.Event()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    request.addfinalizer(lambda: sys.setswitchinterval(switch))

    def create(n: int) -> None:
        try:
            for i in range(300):
                store.set(f"t{n}/k{i:04d}", i)
        except BaseException as exc:  # noqa: BLE001 - every exception is a finding
            errors.append(exc)

    def lister() -> None:
        try:
            while not done.is_set():
                keys = [e.key for e in store.list().entries]
                assert keys == sorted(keys, key=str.encode)
        except BaseException as exc:  # noqa: BLE001 - every exception is a finding
            errors.append(exc)

    creators = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    listers = [threading.Thread(target=lister) for _ in range(4)]
    for thread in creators + listers:
        thread.start()
    for thread in creators:
        thread.join()
    done.set()
    for thread in listers:
        thread.join()
    assert not errors, errors[:3]
    assert len(store.list().entries) == 4 * 300


@pytest.mark.integration
def test_maintenance_from_threads_while_writers_run(store_location: str) -> None:
    # compact and check on the shared handle while other threads write and read.
    store = Store(store_location, dag="d", durable=False)
    for n in range(20):
        store.set(f"k{n}", {"n": 0, "pad": "x" * 300})
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(fn: Callable[[], object]) -> None:
        try:
            while not stop.is_set():
                fn()
        except BaseException as exc:  # noqa: BLE001 - every exception is a finding
            errors.append(exc)

    def write() -> None:
        key = f"k{random.randrange(20)}"
        store.set(key, {"n": random.randrange(1000), "pad": "x" * 300})

    def read() -> None:
        for entry in store.list().entries:
            # A write and a compaction may drop the listed version meanwhile.
            with contextlib.suppress(NotFoundError):
                store.get(entry.key, version=entry.version)
        store.history(f"k{random.randrange(20)}", limit=5)

    threads = [
        threading.Thread(target=loop, args=(fn,))
        for fn in (
            write,
            write,
            read,
            lambda: store.compact(keep_last=2),
            store.check,
        )
    ]
    run_threads_for(threads, stop, 3.0)
    assert not errors, errors[:3]
    assert Store(store_location, dag="d").check().ok


def _first_use(roots: list[str], barrier: Any, out: Any) -> None:
    failures = []
    pid = os.getpid()
    for root in roots:
        barrier.wait()
        try:
            store = Store(root, dag="d")
            store.set(f"p{pid}", pid)
            if store.get(f"p{pid}").value != pid:
                failures.append(f"{root}: read back wrong")
        except (CastoreError, OSError) as exc:
            failures.append(f"{root}: {exc}")
    out.put(failures)


@pytest.mark.integration
def test_concurrent_first_use_of_fresh_stores(new_store_location: Callable[[], str]) -> None:
    # 8 processes x 50 fresh stores (directories, schemas), every process starting on
    # the same store at the same moment (a barrier per store): all succeed.
    procs_n, stores_n = 8, 50
    roots = [new_store_location() for _ in range(stores_n)]
    # Spawned, not forked: this process has threads running (the loopback server of the
    # remote stores, pytest-xdist's channel), and a fork can copy a lock one of them holds.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs_n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(roots, barrier, out)) for _ in range(procs_n)]
    for proc in procs:
        proc.start()
    failures = [f for _ in procs for f in out.get(timeout=120)]
    for proc in procs:
        proc.join(timeout=60)
    assert not failures, failures[:5]
    for root in roots:
        listed = Store(root, dag="d").list()
        assert len(listed.entries) == procs_n
        stored = underlying(root)  # a served store's own location: its files are checked too
        if is_postgres(stored):
            continue
        assert sorted(os.listdir(stored)) == ["FORMAT", "index", "refs"] or sorted(
            os.listdir(stored)
        ) == ["FORMAT", "refs"]


def test_threads_of_one_handle_making_its_store_at_once_all_succeed(tmp_path: Path) -> None:
    # Found by CI (the remote backend's server shares one handle among its threads): a
    # thread that stat'ed the missing root, then saw the root another thread had just made
    # and opened, took it for a store moved away and closed the descriptors the other
    # thread was using: "Bad file descriptor" in about one round of four, and a reused
    # descriptor number could have pointed a call at another directory.
    failures: list[str] = []
    for round_ in range(60):
        store = Store(tmp_path / f"s{round_}" / "store", dag="d")
        barrier = threading.Barrier(8)

        def work(n: int, store: Store = store, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait(30)
                store.set(f"p{n}", n)
                if store.get(f"p{n}").value != n:
                    failures.append(f"p{n} read back wrong")
            except (CastoreError, OSError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        store.close()
    assert not failures, failures[:3]


@pytest.mark.integration
def test_threads_listing_one_cached_directory_each_see_every_name(tmp_path: Path) -> None:
    # os.listdir(fd) reads through a copy of fd that shares its position: two threads
    # listing the handle's cached descriptor of refs/dag/ moved each other's position,
    # and namespaces() (so export and audit) found none of them, or each twice.
    store = Store(str(tmp_path / "s"), dag="d")
    for n in range(100):
        store.set("k", n, namespace=f"ns{n:03}")
    backend = store.backend
    assert isinstance(backend, FileBackend)
    scope_dir = os.path.join(backend.refs, "dag")
    want = sorted(backend.fs.listdir(scope_dir))
    wrong: list[list[str]] = []

    def lister() -> None:
        for _ in range(3_000):
            got = sorted(backend.fs.listdir(scope_dir))
            if got != want:
                wrong.append(got)
                return

    threads = [threading.Thread(target=lister) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(want) == 100
    assert [len(names) for names in wrong] == []
