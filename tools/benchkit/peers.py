"""The stores under test, behind one set/get interface, and the values they store.

Every peer gets 100-byte JSON values (a dict whose ``json.dumps`` is 100 bytes)
and returns decoded values on get:

* ``castore``: ``castore.Store(path, dag=..., durable=...)``.
* ``sqlite3``: stdlib, WAL, one table ``kv(key TEXT PRIMARY KEY, version INTEGER,
  value TEXT)``; ``synchronous=FULL`` (durable) or ``NORMAL`` (fast); every set is
  its own ``BEGIN IMMEDIATE`` transaction that reads the version and writes
  version+1 (castore keeps versions too).
* ``naive``: one file per key; set = write temp file, fsync, rename over the key
  file, fsync the directory (durable) or the same without fsyncs (fast).

The issue-10 workloads (6, 7) use the shared harness's values (``harness_value``:
``make_value`` of ../shared/bench/harness.py, imported when present) and these peers,
which encode with msgspec as the harness does:

* ``sqlite3+history`` (``SqliteHistoryPeer``): WAL; ``current(key PRIMARY KEY,
  version, value)`` plus ``versions(key, version, value, PRIMARY KEY (key, version))``
  holding every version; a set bumps the current row and inserts the version in one
  ``BEGIN IMMEDIATE`` transaction.
* ``sqlite`` and ``sqlite+hist`` (``HarnessSqlitePeer``): the shared harness's
  ``SqlitePeer`` statement for statement (../shared/bench/peers.py): ``sqlite`` sets
  upsert ``kv(key, value)``, and its history and compare-and-swap use the
  ``hist(key, version, value)`` table; ``sqlite+hist`` sets append to ``hist``
  only (one autocommit ``INSERT ... SELECT MAX(version) + 1``, no current row).

Every sqlite peer opens its own connection, so each process or thread opens its own peer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import random
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

import castore

__all__ = [
    "HISTORY_PEERS",
    "PEER_NAMES",
    "SCRATCH_NAMES",
    "SHARED_BENCH_DIR",
    "CastorePeer",
    "HarnessSqlitePeer",
    "Json",
    "NaivePeer",
    "Peer",
    "SqliteHistoryPeer",
    "SqlitePeer",
    "Values",
    "entry_key",
    "harness_value",
    "harness_value_source",
    "local_make_value",
    "make_peer",
    "make_value",
    "sqlite_connect",
]

Json = dict[str, Any]
VALUE_BYTES = 100  # size of every value's json.dumps
FIRST_FRESH_VALUE = 1_000_000_000  # fresh values never collide with make_value(i) for data
PEER_NAMES = ("castore", "sqlite3", "naive")
SCRATCH_NAMES = {"castore": "castore", "sqlite3": "sqlite", "naive": "naive"}  # scratch dir suffix
HISTORY_PEERS = ("sqlite3+history", "sqlite+hist")  # peers of the "+ history table" rows
SQLITE_TIMEOUT_SECONDS = 120.0  # busy timeout of the issue-10 sqlite peers (the harness's)
SHARED_BENCH_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "bench")
)  # ../shared/bench next to the checkout
HARNESS_SIZES = {"100B": 100, "10KB": 10 * 1024, "1MB": 1024 * 1024}  # harness.SIZES
_WORDS = [
    "alpha", "beta", "gamma", "delta", "import", "export", "daily", "hourly",
    "retry", "sync", "cursor", "batch", "stream", "queue", "fail", "ok",
    "prod", "staging", "eu", "us",
]  # fmt: skip
_ENCODE = msgspec.json.Encoder().encode  # the harness encodes every peer's values with msgspec
_DECODE = msgspec.json.Decoder().decode


def make_value(i: int) -> Json:
    """A dict whose ``json.dumps`` is exactly 100 bytes; distinct for every ``i``."""
    value: Json = {"n": i, "cursor": "", "updated_at": "2026-01-01T00:00:00Z"}
    room = VALUE_BYTES - len(json.dumps(value))
    digest = hashlib.sha256(b"%d" % i).hexdigest() * 2
    value["cursor"] = digest[: max(0, room)]
    return value


def local_make_value(size_name: str, seed: int = 42) -> Json:
    """A copy of ``make_value`` of ../shared/bench/harness.py, used when that file is absent.

    100B: ``{"last_id": 123, "cursor": "<48 hex>", "updated_at": "..."}``; 10KB / 1MB:
    the same header plus a list of ~120-byte records (ints, floats, bools, short
    strings, random hex).
    """
    rnd = random.Random(seed)
    value: Json = {
        "last_id": 123,
        "cursor": f"{rnd.getrandbits(192):048x}",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    target = HARNESS_SIZES[size_name]
    if target <= 200:
        return value
    items: list[Json] = []
    value["items"] = items
    size = len(_ENCODE(value))
    i = 0
    while size < target:
        # add in chunks, then re-measure (avoids O(n^2) re-encoding)
        per_item = max(60, (size - 150) // max(1, len(items))) if items else 120
        chunk = max(1, (target - size) // per_item)
        for _ in range(chunk):
            items.append(
                {
                    "id": i,
                    "name": f"item-{i:06d}",
                    "kind": rnd.choice(("a", "b", "c")),
                    "tags": rnd.sample(_WORDS, rnd.randint(1, 3)),
                    "score": round(rnd.random(), 6),
                    "active": rnd.random() < 0.5,
                    "ref": f"{rnd.getrandbits(64):016x}",
                }
            )
            i += 1
        size = len(_ENCODE(value))
    return value


@functools.cache
def _harness_make_value() -> tuple[Callable[[str], Any], str]:
    """``make_value`` of ../shared/bench/harness.py when that file exists, else the local copy."""
    path = os.path.join(SHARED_BENCH_DIR, "harness.py")
    spec = importlib.util.spec_from_file_location("castore_bench_shared_harness", path)
    if not os.path.isfile(path) or spec is None or spec.loader is None:
        return local_make_value, "local copy of harness.make_value"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[[str], Any] = module.make_value
    return fn, path


@functools.cache
def _harness_value(size_name: str) -> Json:
    value: Json = _harness_make_value()[0](size_name)
    return value


def harness_value(size_name: str, last_id: int | None = None) -> Json:
    """A shallow copy of the shared harness's value of ``size_name`` (``100B``, ``10KB``).

    ``last_id`` replaces the value's ``last_id`` (the harness makes every set's value
    new that way); only the top-level dict is copied.
    """
    value = dict(_harness_value(size_name))
    if last_id is not None:
        value["last_id"] = last_id
    return value


def harness_value_source() -> str:
    """Where ``harness_value`` comes from: the harness file's path, or the local copy."""
    return _harness_make_value()[1]


def entry_key(entry: object) -> str:
    """The key of one ``list_entries`` item: a ``(key, version)`` pair or a bare key."""
    if isinstance(entry, tuple):
        return str(entry[0])
    return str(entry)


class Values:
    """Hands out values never used before in this run (a set always writes new content)."""

    def __init__(self) -> None:
        self.next = FIRST_FRESH_VALUE

    def fresh(self, count: int) -> list[Json]:
        """``count`` values not handed out before."""
        first = self.next
        self.next += count
        return [make_value(i) for i in range(first, first + count)]


class Peer:
    """One store under test: set/get of JSON dicts by key."""

    name = "peer"

    def set(self, key: str, value: Json) -> None:
        """Write a new latest value of ``key``."""
        raise NotImplementedError

    def get(self, key: str) -> Any:
        """Read and decode the latest value of ``key``."""
        raise NotImplementedError

    def get_version(self, key: str, version: int) -> Any:
        """Read and decode version ``version`` (1-based) of ``key``."""
        raise NotImplementedError

    def read_versioned(self, key: str) -> tuple[int, Any]:
        """``(version, value)`` of the latest version; ``(0, None)`` when absent."""
        raise NotImplementedError

    def cas(self, key: str, expected: int, value: Json) -> bool:
        """Write ``value`` if the latest version is ``expected`` (0: absent); False if not."""
        raise NotImplementedError

    def list_entries(self, prefix: str) -> list[Any]:
        """Keys starting with ``prefix`` in key order, each as ``(key, version)``."""
        raise NotImplementedError

    def bulk_set(self, items: Iterable[tuple[str, Json]]) -> None:
        """Population only (untimed): set every ``(key, value)``."""
        for key, value in items:
            self.set(key, value)

    def bulk_append(self, key: str, values: Iterable[Json]) -> None:
        """Population only (untimed): add every value as the next version of ``key``."""
        for value in values:
            self.set(key, value)

    def close(self) -> None:
        """Release files and connections."""


class CastorePeer(Peer):
    """castore.Store; values go in as dicts (castore normalizes them itself)."""

    name = "castore"

    def __init__(self, root: str, durable: bool, dag: str = "bench") -> None:
        self.root = root
        self.dag = dag
        self.durable = durable
        self.store = castore.Store(root, dag=dag, durable=durable)

    def set(self, key: str, value: Json) -> None:
        """Write a new version."""
        self.store.set(key, value)

    def get(self, key: str) -> Any:
        """Latest value through this handle (its cache may serve it)."""
        return self.store.get(key).value

    def get_cold(self, key: str) -> Any:
        """Latest value through a new handle, so no in-process cache can serve it."""
        return castore.Store(self.root, dag=self.dag, durable=self.durable).get(key).value

    def list_keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` through this handle."""
        return [e.key for e in self.store.list(prefix).entries]

    def list_keys_cold(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` through a new handle (loads the key index)."""
        store = castore.Store(self.root, dag=self.dag, durable=self.durable)
        return [e.key for e in store.list(prefix).entries]

    def get_version(self, key: str, version: int) -> Any:
        """``Store.get(key, version=...)``."""
        return self.store.get(key, version=version).value

    def read_versioned(self, key: str) -> tuple[int, Any]:
        """Latest version and value; ``(0, None)`` when absent."""
        got = self.store.get(key)
        return (got.version, got.value) if got.found else (0, None)

    def cas(self, key: str, expected: int, value: Json) -> bool:
        """``set(expected_version=expected)``; False on ConflictError."""
        try:
            self.store.set(key, value, expected_version=expected)
        except castore.ConflictError:
            return False
        return True

    def list_entries(self, prefix: str) -> list[Any]:
        """``(key, version)`` of the live keys starting with ``prefix``."""
        return [(e.key, e.version) for e in self.store.list(prefix).entries]

    def close(self) -> None:
        """Drop the handle's caches."""
        self.store.close()


def sqlite_connect(path: str, durable: bool) -> sqlite3.Connection:
    """An autocommit WAL connection, ``synchronous=FULL`` when durable else ``NORMAL``."""
    db = sqlite3.connect(path, isolation_level=None, timeout=60.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
    return db


class SqlitePeer(Peer):
    """sqlite3, WAL; one BEGIN IMMEDIATE transaction per set that bumps the version."""

    name = "sqlite3"

    def __init__(self, root: str, durable: bool) -> None:
        os.makedirs(root, exist_ok=True)
        self.path = os.path.join(root, "store.sqlite")
        self.durable = durable
        self.db = sqlite_connect(self.path, durable)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS kv"
            " (key TEXT PRIMARY KEY, version INTEGER NOT NULL, value TEXT NOT NULL)"
        )

    def set(self, key: str, value: Json) -> None:
        """Read the version and write version+1 in one IMMEDIATE transaction."""
        data = json.dumps(value)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT version FROM kv WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute("INSERT INTO kv (key, version, value) VALUES (?, 1, ?)", (key, data))
            else:
                db.execute(
                    "UPDATE kv SET version = ?, value = ? WHERE key = ?", (row[0] + 1, data, key)
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def get(self, key: str) -> Any:
        """Latest value (KeyError if absent)."""
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def bulk_insert(self, items: Sequence[tuple[str, Json]]) -> None:
        """Population only: all rows (version 1) in one transaction."""
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO kv (key, version, value) VALUES (?, 1, ?)",
            ((k, json.dumps(v)) for k, v in items),
        )
        self.db.execute("COMMIT")

    def list_keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (an index range scan)."""
        return _sqlite_list(self.db, prefix)

    def list_keys_cold(self, prefix: str) -> list[str]:
        """Same through a new connection."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            return _sqlite_list(db, prefix)
        finally:
            db.close()

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def _sqlite_list(db: sqlite3.Connection, prefix: str) -> list[str]:
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    rows = db.execute(
        "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, upper)
    ).fetchall()
    return [r[0] for r in rows]


def _prefix_upper(prefix: str) -> str | None:
    """Smallest string greater than every string starting with ``prefix`` (None: unbounded)."""
    if not prefix:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _harness_connect(path: str, durable: bool) -> sqlite3.Connection:
    """The shared harness's connection: autocommit, WAL, FULL when durable else NORMAL."""
    db = sqlite3.connect(
        path, isolation_level=None, timeout=SQLITE_TIMEOUT_SECONDS, check_same_thread=False
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    return db


class SqliteHistoryPeer(Peer):
    """sqlite3 with a history table: the current row and every version, in one transaction.

    WAL, ``synchronous=FULL`` when durable else ``NORMAL``. ``current`` holds each
    key's latest version and value; ``versions`` holds every version, keyed by
    ``(key, version)``. A set (and a successful compare-and-swap) updates both in
    one ``BEGIN IMMEDIATE`` transaction. One connection per peer: open one peer per
    process or thread.
    """

    name = "sqlite3+history"

    def __init__(self, root: str, durable: bool) -> None:
        os.makedirs(root, exist_ok=True)
        self.path = os.path.join(root, "store.sqlite")
        self.durable = durable
        self.db = _harness_connect(self.path, durable)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS current"
            " (key TEXT PRIMARY KEY, version INTEGER NOT NULL, value BLOB NOT NULL)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS versions (key TEXT NOT NULL, version INTEGER NOT NULL,"
            " value BLOB NOT NULL, PRIMARY KEY (key, version))"
        )

    def _write(self, key: str, data: bytes) -> int:
        """Bump the current row and insert the version (inside the caller's transaction)."""
        version: int = self.db.execute(
            "INSERT INTO current (key, version, value) VALUES (?1, 1, ?2)"
            " ON CONFLICT(key) DO UPDATE SET version = version + 1, value = excluded.value"
            " RETURNING version",
            (key, data),
        ).fetchone()[0]
        self.db.execute(
            "INSERT INTO versions (key, version, value) VALUES (?, ?, ?)", (key, version, data)
        )
        return version

    def _transaction(self, body: Callable[[], bool]) -> bool:
        """Run ``body`` in BEGIN IMMEDIATE; commit when it returns True, else roll back."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            ok = body()
            db.execute("COMMIT" if ok else "ROLLBACK")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return ok

    def set(self, key: str, value: Json) -> None:
        """New version: current row and versions row in one transaction."""
        data = _ENCODE(value)

        def write() -> bool:
            self._write(key, data)
            return True

        self._transaction(write)

    def get(self, key: str) -> Any:
        """Latest value from the current row (KeyError if absent)."""
        row = self.db.execute("SELECT value FROM current WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return _DECODE(row[0])

    def get_version(self, key: str, version: int) -> Any:
        """One version: an indexed lookup in ``versions``."""
        row = self.db.execute(
            "SELECT value FROM versions WHERE key = ? AND version = ?", (key, version)
        ).fetchone()
        if row is None:
            raise KeyError((key, version))
        return _DECODE(row[0])

    def read_versioned(self, key: str) -> tuple[int, Any]:
        """The current row's version and value; ``(0, None)`` when absent."""
        row = self.db.execute("SELECT version, value FROM current WHERE key = ?", (key,)).fetchone()
        return (0, None) if row is None else (int(row[0]), _DECODE(row[1]))

    def cas(self, key: str, expected: int, value: Json) -> bool:
        """Write when the current version is ``expected`` (0: absent), in one transaction."""
        data = _ENCODE(value)

        def body() -> bool:
            row = self.db.execute("SELECT version FROM current WHERE key = ?", (key,)).fetchone()
            if (0 if row is None else row[0]) != expected:
                return False
            self._write(key, data)
            return True

        return self._transaction(body)

    def list_entries(self, prefix: str) -> list[Any]:
        """``(key, version)`` of the keys starting with ``prefix``: a range scan of ``current``."""
        upper = _prefix_upper(prefix)
        if upper is None:
            cur = self.db.execute("SELECT key, version FROM current ORDER BY key")
        else:
            cur = self.db.execute(
                "SELECT key, version FROM current WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, upper),
            )
        return cur.fetchall()

    def bulk_set(self, items: Iterable[tuple[str, Json]]) -> None:
        """Population only: every set's statements in one transaction."""

        def body() -> bool:
            for key, value in items:
                self._write(key, _ENCODE(value))
            return True

        self._transaction(body)

    def bulk_append(self, key: str, values: Iterable[Json]) -> None:
        """Population only: all versions and the final current row in one transaction."""
        db = self.db

        def body() -> bool:
            row = db.execute("SELECT version FROM current WHERE key = ?", (key,)).fetchone()
            first = 1 if row is None else row[0] + 1
            rows = [(key, first + i, _ENCODE(v)) for i, v in enumerate(values)]
            if rows:
                db.executemany("INSERT INTO versions (key, version, value) VALUES (?, ?, ?)", rows)
                db.execute(
                    "INSERT INTO current (key, version, value) VALUES (?1, ?2, ?3)"
                    " ON CONFLICT(key) DO UPDATE SET version = ?2, value = ?3",
                    rows[-1],
                )
            return True

        self._transaction(body)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


class HarnessSqlitePeer(Peer):
    """The shared harness's sqlite peer, statement for statement (../shared/bench/peers.py).

    WAL, FULL when durable else NORMAL, autocommit per statement; tables
    ``kv(key PRIMARY KEY, value)`` and ``hist(key, version, value, PRIMARY KEY (key,
    version))``. ``sqlite``: set = upsert into ``kv``; history and compare-and-swap use
    ``hist``. ``sqlite+hist`` (``hist_set``): set = one autocommit ``INSERT ... SELECT
    MAX(version) + 1`` into ``hist``, get = its newest row, list = DISTINCT keys of
    ``hist`` (bare keys, as the harness returns them). One connection per peer.
    """

    def __init__(self, root: str, durable: bool, hist_set: bool = False) -> None:
        os.makedirs(root, exist_ok=True)
        self.name = "sqlite+hist" if hist_set else "sqlite"
        self.hist_set = hist_set
        self.path = os.path.join(root, "store.sqlite")
        self.durable = durable
        self.db = _harness_connect(self.path, durable)
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS hist (key TEXT NOT NULL, version INTEGER NOT NULL,"
            " value BLOB NOT NULL, PRIMARY KEY (key, version))"
        )

    def set(self, key: str, value: Json) -> None:
        """``sqlite``: upsert into kv; ``sqlite+hist``: append a version."""
        if self.hist_set:
            self.append(key, value)
            return
        self.db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, _ENCODE(value)),
        )

    def get(self, key: str) -> Any:
        """Latest value (KeyError if absent)."""
        if self.hist_set:
            return self.read_versioned(key)[1]
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return _DECODE(row[0])

    def append(self, key: str, value: Json) -> int:
        """New version in hist: version = MAX + 1, in the same statement."""
        rows = self.db.execute(
            "INSERT INTO hist (key, version, value) SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2 "
            "FROM hist WHERE key = ?1 RETURNING version",
            (key, _ENCODE(value)),
        ).fetchall()
        return int(rows[0][0])

    def get_version(self, key: str, version: int) -> Any:
        """One version: an indexed lookup in hist."""
        row = self.db.execute(
            "SELECT value FROM hist WHERE key = ? AND version = ?", (key, version)
        ).fetchone()
        if row is None:
            raise KeyError((key, version))
        return _DECODE(row[0])

    def read_versioned(self, key: str) -> tuple[int, Any]:
        """Newest hist row (the harness's ``latest``); ``(0, None)`` when absent."""
        row = self.db.execute(
            "SELECT version, value FROM hist WHERE key = ? ORDER BY version DESC LIMIT 1", (key,)
        ).fetchone()
        return (0, None) if row is None else (int(row[0]), _DECODE(row[1]))

    def cas(self, key: str, expected: int, value: Json) -> bool:
        """BEGIN IMMEDIATE; MAX(version) of hist; insert version + 1 if it is ``expected``."""
        data = _ENCODE(value)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            current = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM hist WHERE key = ?", (key,)
            ).fetchone()[0]
            if current != expected:
                db.execute("ROLLBACK")
                return False
            db.execute(
                "INSERT INTO hist (key, version, value) VALUES (?, ?, ?)", (key, current + 1, data)
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True

    def list_entries(self, prefix: str) -> list[Any]:
        """Keys starting with ``prefix``, sorted (bare keys, as the harness's ``list``)."""
        table = "hist" if self.hist_set else "kv"
        distinct = "DISTINCT " if self.hist_set else ""
        upper = _prefix_upper(prefix)
        if upper is None:
            rows = self.db.execute(f"SELECT {distinct}key FROM {table} ORDER BY key")  # noqa: S608
        else:
            rows = self.db.execute(
                f"SELECT {distinct}key FROM {table} WHERE key >= ? AND key < ? ORDER BY key",  # noqa: S608
                (prefix, upper),
            )
        return [r[0] for r in rows]

    def bulk_set(self, items: Iterable[tuple[str, Json]]) -> None:
        """Population only: one transaction (the harness's ``bulk_set``)."""
        self.db.execute("BEGIN")
        if self.hist_set:
            self.db.executemany(
                "INSERT INTO hist (key, version, value) SELECT ?1, COALESCE(MAX(version), 0) + 1, "
                "?2 FROM hist WHERE key = ?1",
                ((k, _ENCODE(v)) for k, v in items),
            )
        else:
            self.db.executemany(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                ((k, _ENCODE(v)) for k, v in items),
            )
        self.db.execute("COMMIT")

    def bulk_append(self, key: str, values: Iterable[Json]) -> None:
        """Population only: versions MAX + 1 ... in one transaction."""
        self.db.execute("BEGIN")
        first = self.db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM hist WHERE key = ?", (key,)
        ).fetchone()[0]
        self.db.executemany(
            "INSERT INTO hist (key, version, value) VALUES (?, ?, ?)",
            ((key, first + i + 1, _ENCODE(v)) for i, v in enumerate(values)),
        )
        self.db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


class NaivePeer(Peer):
    """One JSON file per key, replaced atomically (with fsyncs when durable)."""

    name = "naive"

    def __init__(self, root: str, durable: bool) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.durable = durable
        self.dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key.replace("/", "%2F") + ".json")

    def set(self, key: str, value: Json) -> None:
        """Temp file, (fsync), rename over, (fsync dir)."""
        data = json.dumps(value).encode()
        path = self._path(key)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.durable:
            os.fsync(self.dirfd)

    def get(self, key: str) -> Any:
        """Open, read, decode."""
        with open(self._path(key), "rb") as fh:
            return json.loads(fh.read())

    def close(self) -> None:
        """Close the directory handle."""
        os.close(self.dirfd)


def make_peer(name: str, root: str, durable: bool, dag: str = "bench") -> Peer:
    """The peer called ``name`` on scratch directory ``root``.

    Args:
        name: ``castore``, ``sqlite3``, ``naive`` (``PEER_NAMES``), ``sqlite3+history``,
            or the shared harness's ``sqlite`` and ``sqlite+hist``.
        root: The peer's own scratch directory.
        durable: Durable writes (fsyncs) or fast ones.
        dag: The castore DAG name (other peers ignore it).

    Returns:
        An open peer; the caller closes it.

    Raises:
        ValueError: When ``name`` is not a peer.
    """
    if name == "castore":
        return CastorePeer(root, durable=durable, dag=dag)
    if name == "sqlite3":
        return SqlitePeer(root, durable=durable)
    if name == "naive":
        return NaivePeer(root, durable=durable)
    if name == "sqlite3+history":
        return SqliteHistoryPeer(root, durable=durable)
    if name in ("sqlite", "sqlite+hist"):
        return HarnessSqlitePeer(root, durable=durable, hist_set=name == "sqlite+hist")
    raise ValueError(f"unknown peer {name!r}")
