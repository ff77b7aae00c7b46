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
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Sequence
from typing import Any

import castore

__all__ = [
    "PEER_NAMES",
    "SCRATCH_NAMES",
    "CastorePeer",
    "Json",
    "NaivePeer",
    "Peer",
    "SqlitePeer",
    "Values",
    "make_peer",
    "make_value",
    "sqlite_connect",
]

Json = dict[str, Any]
VALUE_BYTES = 100  # size of every value's json.dumps
FIRST_FRESH_VALUE = 1_000_000_000  # fresh values never collide with make_value(i) for data
PEER_NAMES = ("castore", "sqlite3", "naive")
SCRATCH_NAMES = {"castore": "castore", "sqlite3": "sqlite", "naive": "naive"}  # scratch dir suffix


def make_value(i: int) -> Json:
    """A dict whose ``json.dumps`` is exactly 100 bytes; distinct for every ``i``."""
    value: Json = {"n": i, "cursor": "", "updated_at": "2026-01-01T00:00:00Z"}
    room = VALUE_BYTES - len(json.dumps(value))
    digest = hashlib.sha256(b"%d" % i).hexdigest() * 2
    value["cursor"] = digest[: max(0, room)]
    return value


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
    """The peer called ``name`` (one of ``PEER_NAMES``) on scratch directory ``root``.

    Args:
        name: ``castore``, ``sqlite3`` or ``naive``.
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
    raise ValueError(f"unknown peer {name!r}")
