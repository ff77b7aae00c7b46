"""Races and limits a review of the fifth session found (docs/RELIABILITY.md, "Findings").

Each test fails on the code before its fix:

- ``list`` recorded in ``STATE`` the newest entry of a log that a rewrite had
  replaced between its ``open`` and its shared lock (the lock then excludes no
  writer), so ``list`` answered the replaced log's version;
- an import's overwrite listed its key in ``KEYS`` only after its new log was
  in place: killed in between, the key stayed live but unlisted for good;
- a long-lived handle kept one ``STATE`` descriptor per namespace, without bound;
- the kept log descriptors were a per-handle budget taken from the whole
  process's limit, so a process with many handles ran out of descriptors;
- the access log's batched writes of several processes interleaved inside
  lines on a shared pipe (a pipe write above ``PIPE_BUF`` is not atomic).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import resource
import subprocess
import sys
import time
import traceback

import pytest

from castore import Store
from castore.file import kept
from castore.file.namespaces import STATES_KEPT
from castore.file.reflog import RefLog
from castore.server.middleware import AccessLog
from castore.transfer import export_lines

pytestmark = pytest.mark.integration

DAG = "d"
_IMPORT = (
    "import sys; from castore import Store; from castore.transfer import import_lines, read_lines\n"
    "import_lines(Store(sys.argv[1], dag='d'), lambda: read_lines(open(sys.argv[2], 'rb')),"
    " on_conflict='overwrite')"
)
_COMPACT = (
    "import sys; from castore import Store\n"
    "Store(sys.argv[1], dag='d').compact(keep_last=1, keep_within_seconds=0)"
)


def export_of(tmp_path: pathlib.Path, versions: int, *, compact: int = 0) -> str:
    """An export of key ``k`` with ``versions`` versions (the oldest compacted away if asked)."""
    source = Store(tmp_path / "source", dag=DAG)
    for i in range(versions):
        source.set("k", {"source": i})
    if compact:
        source.compact(keep_last=compact)
    path = str(tmp_path / "export.jsonl")
    with open(path, "wb") as fh:
        fh.writelines(export_lines(source))
    source.close()
    return path


def child(code: str, *args: str, failpoint: str = "") -> int:
    env = dict(os.environ, CASTORE_FAILPOINTS=failpoint)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, check=False).returncode


def listed(root: pathlib.Path) -> list[tuple[str, int, str]]:
    with Store(root, dag=DAG) as fresh:
        return [(e.key, e.version, e.hash) for e in fresh.list().entries]


def test_list_never_records_a_log_replaced_after_it_was_opened(tmp_path, monkeypatch):
    exported = export_of(tmp_path, 5)
    root = tmp_path / "store"
    with Store(root, dag=DAG) as store:
        store.set("k", {"old": 1})
        store.list()  # makes STATE
        store.set("k", {"old": 2})  # k's row is pending: the next list reads its log
    opened = RefLog.open
    fired: list[int] = []

    def open_then_import(self: RefLog) -> int:
        fd = opened(self)
        if not fired and any(f.name == "remember" for f in traceback.extract_stack()):
            fired.append(child(_IMPORT, str(root), exported))  # renamed over the opened log
        return fd

    monkeypatch.setattr(RefLog, "open", open_then_import)
    Store(root, dag=DAG).list()
    monkeypatch.undo()
    assert fired == [0]
    with Store(root, dag=DAG) as fresh:
        got = fresh.get("k")
    assert listed(root) == [("k", got.version, got.hash)]


def test_an_import_overwrite_killed_after_its_rename_leaves_its_key_listed(tmp_path):
    exported = export_of(tmp_path, 5, compact=2)  # versions 4 and 5: above the target's grave
    root = tmp_path / "store"
    with Store(root, dag=DAG) as store:
        store.set("k", 1)
        store.delete("k")
    # A compaction stopped after unlisting k, before its rename (a state FORMAT.md §5 allows).
    assert child(_COMPACT, str(root), failpoint="rewrite-before-rename") != 0
    assert child(_IMPORT, str(root), exported, failpoint="rewrite-after-rename") != 0
    with Store(root, dag=DAG) as store:
        assert store.get("k").found
        store.set("k", {"later": 1})
        got = store.get("k")
    assert listed(root) == [("k", got.version, got.hash)]


def open_files(suffix: str, under: pathlib.Path) -> int:
    """How many of this process's descriptors are open on files below ``under`` named ``*suffix``.

    Only this test's files: handles of earlier tests not yet collected may
    still hold descriptors of their own (their kept logs count against the
    same budget, so they can only lower this count).
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(f"{under}/") and target.endswith(suffix)
    return count


def test_a_handle_over_many_namespaces_keeps_few_state_descriptors(tmp_path):
    with Store(tmp_path / "store", dag=DAG, durable=False) as store:
        for i in range(STATES_KEPT + 150):
            namespace = f"tenant{i}"
            store.set("k", i, namespace=namespace)
            store.list(namespace=namespace)  # makes STATE there
            store.set("k", i + 1, namespace=namespace)  # appends P: keeps STATE open
        assert open_files("/STATE", tmp_path) <= 2 * STATES_KEPT  # to append, to read


def test_the_kept_log_descriptors_are_one_budget_for_all_handles(tmp_path):
    stores = [Store(tmp_path / "store", dag=DAG, durable=False) for _ in range(6)]
    try:
        for number, store in enumerate(stores):
            for key in range(kept.kept_max() // 2 + 8):
                store.set(f"k{key}", number)
        assert open_files(".log", tmp_path) <= kept.kept_max()
    finally:
        for store in stores:
            store.close()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert max(1, min(1024, soft // 16)) == kept.kept_max()


def _write_turns(write_end: int) -> None:
    """A child: 20 turns of the event loop, 100 access-log lines answered in each (20 KB)."""
    log = AccessLog(os.fdopen(write_end, "w", encoding="utf-8"))

    async def turns() -> None:
        for turn in range(20):
            for i in range(100):
                line = {"pid": os.getpid(), "t": turn, "i": i, "p": "x" * 150}
                log.add(json.dumps(line) + "\n")
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    asyncio.run(turns())
    log.flush()


def test_access_log_lines_of_several_processes_never_interleave_on_a_pipe():
    read_end, write_end = os.pipe()
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os.close(read_end)
            _write_turns(write_end)
            os._exit(0)
        children.append(pid)
    os.close(write_end)
    parts = []
    with os.fdopen(read_end, "rb", buffering=0) as fh:
        while chunk := fh.read(1024):  # a slow reader: the pipe fills, and writers wait in it
            parts.append(chunk)
            time.sleep(0.0005)
    data = b"".join(parts)
    for pid in children:
        os.waitpid(pid, 0)
    lines = data.decode().split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == 3 * 20 * 100
    assert all(json.loads(line)["p"] for line in lines[:-1])
