"""A process out of descriptors (EMFILE): caches leave room for calls; a failed one leaves nothing.

A server whose descriptors are all taken (idle keep-alive connections, a burst
of clients) fails store calls with ``OSError(EMFILE)``, answered 500
``io_error``. The oracle is the store as it was before the failed call: a
first write of a key that fails writes nothing, and leaves nothing that
``check`` reports. (A review filled a server's descriptors under
``prlimit --nofile=64:64``: a first write of a new namespace failing while
it read its log left the empty log and no ``KEYS``, which ``check`` reported
as an error it could not repair, exit 1.)

A handle's caches of open descriptors (directories, ``STATE`` files, logs kept
for reads and for writes) were sized without the process's limit: a server
under ``--nofile=256:256`` answered every request 500 ``EMFILE`` after reading
236 namespaces, for good, with no client connected. The oracle there is the
local store's answer to the same calls.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
from typing import Any

import httpx
import pytest

from castore import Store
from castore.file import fileio
from tests.helpers import tree
from tests.integration.test_server import Server, base_env

pytestmark = pytest.mark.integration


class _Emfile:
    """``os.open`` that fails with EMFILE at its ``nth`` call."""

    def __init__(self, nth: int) -> None:
        self.nth, self.calls, self.real = nth, 0, os.open

    def __call__(self, *args: Any, **kw: Any) -> int:
        self.calls += 1
        if self.calls == self.nth:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return self.real(*args, **kw)


def test_a_first_write_failing_with_emfile_leaves_nothing_check_reports(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nth = 0
    while True:
        nth += 1
        root = tmp_path / str(nth)
        with Store(str(root)) as store:
            store.set("seed", 1, scope="dag", namespace="a")
            before = [p for p in tree(root) if p.endswith(".log")]
            emfile = _Emfile(nth)
            with monkeypatch.context() as patch:
                patch.setattr(os, "open", emfile)
                try:
                    store.set("new", {"x": 1}, scope="dag", namespace="fresh")
                except OSError as exc:
                    raised = exc.errno
                else:
                    break  # made fewer than nth opens: every one has failed once
            assert raised == errno.EMFILE
            report = store.check()
            assert report.ok, (nth, report.findings)
            assert [p for p in tree(root) if p.endswith(".log")] == before, nth
            assert not store.get("new", scope="dag", namespace="fresh").found
    assert nth > 5  # the opens of a first write: the one that left an empty log among them


def test_a_server_with_few_descriptors_serves_a_store_of_many_namespaces(
    tmp_path: pathlib.Path,
) -> None:
    namespaces = [f"n{i}" for i in range(150)]
    root = tmp_path / "store"
    with Store(str(root), durable=False) as store:
        for namespace in namespaces:
            store.set("k", 1, scope="dag", namespace=namespace)
            store.list(scope="dag", namespace=namespace)  # makes STATE there
    shutil.copytree(root, tmp_path / "twin")
    # `ulimit -n 128`: the soft and the hard limit, which serve cannot raise then
    limited = ("sh", "-c", 'ulimit -n 128 && exec "$0" "$@"')
    server = Server(tmp_path / "server", str(root), env=base_env(tmp_path), prefix=limited)
    try:
        with (
            httpx.Client(base_url=server.url, timeout=60) as client,
            Store(str(tmp_path / "twin")) as twin,
        ):
            for namespace in namespaces:
                fields = {"dag": namespace, "key": "k"}
                answer = client.post("/v1/set", json={**fields, "value": 2})
                assert answer.status_code == 200, (namespace, answer.text)
                local = twin.set("k", 2, scope="dag", namespace=namespace)
                assert answer.json()["hash"] == local.hash
                assert answer.json()["version"] == local.version
                for op, body in [
                    ("get", fields),
                    ("history", fields),
                    ("list", {"dag": namespace}),
                ]:
                    answer = client.post(f"/v1/{op}", json=body)
                    assert answer.status_code == 200, (namespace, op, answer.text)
            assert client.get("/healthz").status_code == 200
    finally:
        assert server.stop() == 0


def test_reads_of_missing_namespaces_past_the_directory_cache_leak_no_descriptor(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk to a missing directory closes the one it opened on the way (not cached).

    With the directory cache at 1/16 of the soft limit (64 under 1,024), a scope's
    directory opened once the cache was full was closed by nobody when the
    namespace below it was missing: each get leaked descriptors (a server under
    the common limit: 200 gets of new namespaces in another scope, +600).
    """
    from castore.file import fileio

    monkeypatch.setattr(fileio, "descriptor_share", lambda share, most: 1)
    with Store(str(tmp_path / "store")) as store:
        store.set("k", 1, scope="dag", namespace="a")  # the cache holds refs/ (and the root)
        store.set("k", 1, scope="global", namespace="x")
        store.get("k", scope="global", namespace="missing")
        before = len(os.listdir("/proc/self/fd"))
        for i in range(50):
            assert not store.get("k", scope="global", namespace=f"missing{i}").found
            assert store.list(scope="global", namespace=f"missing{i}").entries == []
        assert len(os.listdir("/proc/self/fd")) == before


def test_the_write_logs_kept_follow_the_limit_as_it_is_now(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept write logs are 1/16 of the soft limit when they are kept, not at import.

    ``castore serve`` raises its limit after castore is imported; the budget was
    read once then (a server started under 1,024 kept 64 logs after raising it,
    and a process whose limit fell since kept more than 1/16 of it).
    """
    import importlib
    import resource

    importlib.import_module("castore.file.kept")  # imported, as by serve before it raises it
    soft = 128  # the limit now: 8 kept write logs (the process's real one is higher)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, soft))
    monkeypatch.setattr(fileio, "_LIMIT", [0, -1e9])  # read now; the real one kept for after

    def logs_open() -> int:
        names = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the listing's own, closed since
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
        mine = os.path.realpath(tmp_path) + "/"  # not other tests' handles' logs
        return sum(name.startswith(mine) and name.endswith(".log") for name in names)

    with Store(str(tmp_path / "store"), durable=False) as store:
        for i in range(40):
            store.set(f"k{i}", i, scope="dag", namespace="a")
        assert logs_open() <= soft // 16
