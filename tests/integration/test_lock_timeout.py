"""``--lock-timeout`` and ``Store(lock_timeout=...)``: how long a write or check waits for a key.

Without the option a key locked by a stopped process cost every write 30 s
before it failed, and ``check`` 30 s per locked log. The oracles: the error
or the finding names the timeout given, the command ends well before the
default would have let it, and nothing is written (the history equals the
one before). A timeout that is not a number of seconds from 0 to a day is a
usage error naming the option, before anything is written. Over ``http://``
the client's timeout bounds the server's wait (the server's store waits 30 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from castore import LockTimeoutError, Store
from castore.postgres.location import parse
from tests.helpers import (
    Cli,
    ns_dir,
    one_line_error,
    served_location,
    underlying,
)

pytestmark = pytest.mark.integration

_DEFAULT_SECONDS = 30.0  # what a write waited before the option


@contextlib.contextmanager
def _held(root: str) -> Iterator[None]:
    """Another open file description holding the store's one log's lock (as another process)."""
    (log,) = glob.glob(os.path.join(root, "refs", "*", "*", "*.log"))
    fd = os.open(log, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _key_held(location: str, key: str) -> Iterator[None]:
    """The key's lock held by another session or process, on the store behind ``location``."""
    where = underlying(location)
    if not where.startswith("postgresql:"):
        with _held(where):
            yield
        return
    pg = parse(where)
    with psycopg.connect(pg.conninfo) as holder:  # a transaction holding the key's row lock
        holder.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
        held = holder.execute("SELECT 1 FROM refs WHERE key = %s FOR UPDATE", (key.encode(),))
        assert held.fetchall() == [(1,)]
        yield


def _versions(root: str) -> list[int]:
    with Store(root, dag="d") as store:
        return [e.version for e in store.history("k").entries]


@pytest.mark.parametrize("value", ["abc", "", "-1", "nan", "inf", "86401", "1e400"])
@pytest.mark.parametrize("where", ["before", "after", "get"])
def test_a_lock_timeout_that_is_no_number_of_seconds_is_a_usage_error(cli, value, where):
    cli.ok("set", "k", "1")
    option = ["--lock-timeout", value]
    args = {
        "before": [*option, "set", "k", "2"],
        "after": ["set", "k", "2", *option],
        "get": [*option, "get", "k"],  # the quick get too (the review: it exited 0)
    }[where]
    message = cli.fail(2, *args)
    assert "--lock-timeout" in message
    assert repr(value) in message
    assert cli.ok("get", "k")["version"] == 1  # nothing written


@pytest.mark.parametrize("path", ["quick", "store"])
def test_a_set_gives_up_after_the_lock_timeout_given(tmp_path, path):
    root = str(tmp_path / "store")
    Store(root, dag="d").set("k", 1)
    cli = Cli(tmp_path, root)
    extra = ["--mode", "private"] if path == "store" else []  # --mode: the library's set
    with _held(root):
        started = time.monotonic()
        proc = cli.run("--lock-timeout", "0.5", *extra, "set", "k", "2")
        elapsed = time.monotonic() - started
    message = one_line_error(proc, 1)
    assert message.startswith("lock timeout: dag/d/k (")  # the key, then its log's path
    assert message.endswith(".log) not locked within 0.5 s")
    assert elapsed < _DEFAULT_SECONDS / 2  # it did not wait for the default
    assert _versions(root) == [1]
    assert cli.ok("--lock-timeout", "0.5", *extra, "set", "k", "2")["version"] == 2


def test_check_reports_a_log_locked_past_the_lock_timeout_given(tmp_path):
    root = str(tmp_path / "store")
    Store(root, dag="d").set("k", 1)
    cli = Cli(tmp_path, root)
    with _held(root):
        started = time.monotonic()
        proc = cli.run("check", "--lock-timeout", "0.3")
        elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert [f["problem"] for f in report["findings"]] == [
        "locked by another process for 0.3 s: not checked"
    ]
    assert elapsed < _DEFAULT_SECONDS / 2
    assert cli.ok("check")["ok"] is True  # once the lock is free, the log checks clean


@pytest.mark.parametrize("value", [math.nan, -0.5, math.inf, 86_401, "5", True, None])
def test_the_library_refuses_a_lock_timeout_that_is_no_number_of_seconds(tmp_path, value):
    with pytest.raises(ValueError, match="lock timeout must be"):
        Store(str(tmp_path / "store"), lock_timeout=value)
    assert not os.path.exists(tmp_path / "store")


def test_a_lock_timeout_of_zero_tries_the_lock_once(tmp_path):
    root = str(tmp_path / "store")
    Store(root, dag="d").set("k", 1)
    with (
        Store(root, dag="d", lock_timeout=0) as store,
        _held(root),
        pytest.raises(LockTimeoutError, match="not locked within 0 s"),
    ):
        store.set("k", 2)
    assert _versions(root) == [1]


@pytest.mark.remote_postgresql
def test_every_backend_gives_up_after_the_lock_timeout_the_caller_gave(tmp_path, store_location):
    # Over http:// the server's store waited its own 30 s, whatever the client gave.
    Store(store_location, dag="d").set("k", 1)
    cli = Cli(tmp_path, store_location)
    with Store(store_location, dag="d", lock_timeout=0.5) as store, _key_held(store_location, "k"):
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match=r"not locked within 0\.5 s$"):
            store.set("k", 2)
        message = one_line_error(cli.run("--lock-timeout", "0.5", "delete", "k"), 1)
        assert message.startswith("lock timeout: ")
        assert message.endswith(" not locked within 0.5 s")
        assert time.monotonic() - started < _DEFAULT_SECONDS / 2
        report = store.check()  # and check's wait for each key
        assert time.monotonic() - started < _DEFAULT_SECONDS / 2
    # A file store's check reads each log under its lock; PostgreSQL's reads an undamaged key
    # on a snapshot, without its row lock.
    locked = [] if underlying(store_location).startswith("postgresql:") else ["k"]
    assert [f.problem for f in report.findings] == [
        "locked by another process for 0.5 s: not checked" for _ in locked
    ]
    assert _versions(store_location) == [1]
    assert Store(store_location, dag="d", lock_timeout=0.5).set("k", 2).version == 2


@pytest.mark.parametrize("remote", [False, True], ids=["file", "remote"])
@pytest.mark.parametrize("held", ["KEYS", "STATE"])
def test_a_namespace_file_held_a_moment_is_waited_for_whatever_the_lock_timeout(
    tmp_path, remote, held
):
    # Found by a review: over http:// the client's timeout also cut the server's waits for
    # KEYS and STATE (their own fixed waits): with 0, creating a key failed where locally
    # it waits the moment out. The oracle: the local store (the "file" case).
    root = str(tmp_path / "store")
    with contextlib.ExitStack() as stack:
        location = stack.enter_context(served_location(contextlib.nullcontext(root)))
        location = location if remote else root
        Store(location, dag="d").set("k", 1)
        Store(location, dag="d").list()  # STATE exists: every write appends to it
        fd = os.open(os.path.join(ns_dir(root, "dag", "d"), held), os.O_RDONLY)
        stack.callback(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        release = threading.Timer(0.3, fcntl.flock, (fd, fcntl.LOCK_UN))
        release.start()
        stack.callback(release.join)  # before the close, even when the test fails
        with Store(location, dag="d", lock_timeout=0) as store:
            assert store.set("new", 1).version == 1
        assert [e.key for e in Store(location, dag="d").list().entries] == ["k", "new"]


@pytest.mark.remote_postgresql
def test_a_write_waiting_for_a_key_delays_another_caller_at_most_its_lock_timeout(
    store_location,
):
    # Found by a review: a server over PostgreSQL shares one connection among its
    # requests, so a bounded write queued behind another request's wait for a row lock
    # (5 s here) whatever its own timeout.
    Store(store_location, dag="d").set("k", 1)
    slow: list[BaseException] = []

    def wait_for_k() -> None:
        try:
            Store(store_location, dag="d", lock_timeout=5).set("k", 2)
        except LockTimeoutError as exc:
            slow.append(exc)

    with _key_held(store_location, "k"):
        waiter = threading.Thread(target=wait_for_k)
        waiter.start()
        time.sleep(0.3)  # it waits for k now
        started = time.monotonic()
        with Store(store_location, dag="d", lock_timeout=0.5) as store:
            with pytest.raises(LockTimeoutError, match=r"not locked within 0\.5 s$"):
                store.set("k", 3)
            try:
                other: object = store.set("j", 1).version
            except LockTimeoutError as exc:
                other = exc
        took = time.monotonic() - started
        waiter.join()
    assert took < 4, took  # not the 5 s of the other caller's wait
    assert len(slow) == 1
    assert "not locked within 5 s" in str(slow[0])
    # A server over PostgreSQL failed this with one connection per process: the other
    # request's wait held it. Its handle's pool has a connection free for this one.
    assert other == 1


@pytest.mark.remote_postgresql
def test_a_lock_timeout_names_the_key_on_every_backend_in_writes_and_compaction(store_location):
    # Found by a review: LockTimeoutError.ref was "" on PostgreSQL, and for a file compaction.
    with Store(store_location, dag="d", lock_timeout=0.2) as store:
        store.set("k", 1)
        store.set("k", 2)
        with _key_held(store_location, "k"):
            with pytest.raises(LockTimeoutError) as write:
                store.set("k", 3)
            with pytest.raises(LockTimeoutError) as compaction:
                store.compact(keep_last=1)
    assert write.value.ref == "dag/d/k"
    assert str(write.value).startswith("lock timeout: dag/d/k (")
    assert compaction.value.ref == "dag/d/k"
    assert _versions(store_location) == [2, 1]
