"""A store on a read-only file system: reads answer as on a writable copy, writes fail cleanly.

A store baked into a read-only image, or mounted ``ro`` for inspection, is
read with every command a writable copy answers (the oracle: the same calls
on an exact copy). The read-only file system is simulated in the process: every
``open`` for writing or creating, ``mkdir``, ``rename``, ``link``, ``unlink``
and ``truncate`` fails with EROFS, as the kernel's ``ro`` mount fails them (a
review ran the same commands on a real read-only bind mount: the answers were
these). Found by that review: ``gc --dry-run`` failed with "Read-only file
system" on every log, because gc's sweep locked each log on a descriptor
opened for writing; a rewrite only reads the log it replaces, and now opens it
read-only.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
from typing import Any

import pytest

from castore import Store
from tests.helpers import Cli

pytestmark = pytest.mark.integration

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_CHANGES = ("mkdir", "rename", "replace", "link", "unlink", "rmdir", "truncate", "symlink")

# The same simulation in a CLI process: patched before castore is imported.
_RO_CLI = f"""
import errno, os, sys
def refuse(*args, **kw):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]) if args else "")
real_open = os.open
def ro_open(path, flags, *args, **kw):
    if flags & {_WRITING}:
        refuse(path)
    return real_open(path, flags, *args, **kw)
os.open = ro_open
for name in {_CHANGES!r}:
    setattr(os, name, refuse)
sys.argv[0] = "castore"
from castore.cli import run
run()
"""


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refuse(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]) if args else "")

    def ro_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & _WRITING:
            refuse(path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", ro_open)
    for name in _CHANGES:
        monkeypatch.setattr(os, name, refuse)


def _populated(root: pathlib.Path) -> None:
    with Store(str(root), dag="d") as store:
        for i in range(6):
            store.set("k", {"i": i, "big": "x" * 9000 * (i % 2)})
            store.set(f"other{i % 3}", [i])
        store.delete("other2")
        store.rollback("k", to_version=2)
        store.set("shared", {"big": "x" * 9000})  # one blob, held by another log too
        store.compact(keep_last=3)
        store.set("gone", 1)
        store.delete("gone")


def _reads(store: Store, root: pathlib.Path) -> list[Any]:
    out: list[Any] = []
    for key in ("k", "other0", "other2", "gone", "nothing"):
        got = store.get(key)
        out.append((got.found, got.version, got.value))
        out.append([(e.version, e.operation, e.hash) for e in store.history(key).entries])
        for version in (1, 4, 7):
            try:
                old = store.get(key, version=version)
                out.append((old.found, old.version, old.value))
            except Exception as exc:  # noqa: BLE001  # the oracle raises the same
                out.append((type(exc).__name__, str(exc).replace(str(root), "")))
    out.append([(e.key, e.version) for e in store.list().entries])
    check = store.check()
    out.append((check.ok, check.logs, check.entries, check.blobs, check.findings))
    gc = store.gc(grace_seconds=0, dry_run=True)
    out.append((gc.blobs_found, gc.blobs_freed, gc.bytes_freed, gc.logs_removed))
    compact = store.compact(keep_last=1, dry_run=True)
    out.append((compact.versions_dropped, compact.bytes_before, compact.bytes_after))
    out.append(store.stats())
    return out


def test_reads_of_a_read_only_store_answer_as_a_writable_copy(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, twin = tmp_path / "store", tmp_path / "twin"
    _populated(root)
    shutil.copytree(root, twin)
    with Store(str(twin), dag="d") as store:
        expected = _reads(store, twin)
    _read_only(monkeypatch)
    with Store(str(root), dag="d") as store:
        assert _reads(store, root) == expected
        with pytest.raises(OSError, match="Read-only file system") as raised:
            store.set("k", 1)
        assert raised.value.errno == errno.EROFS


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["gc", "--dry-run"], 0, ""),
        (["compact", "--keep-last", "1", "--dry-run"], 0, ""),
        (["check"], 0, ""),
        (["set", "k", "1"], 1, "castore: Read-only file system: "),
        (["--dag", "new", "set", "k", "1"], 1, "castore: Read-only file system: "),
        (["gc"], 1, "castore: Read-only file system: "),
    ],
)
def test_the_command_line_on_a_read_only_store(
    tmp_path: pathlib.Path, args: list[str], code: int, says: str
) -> None:
    root = tmp_path / "store"
    _populated(root)
    result = Cli(tmp_path, root, entry=("-c", _RO_CLI)).run(*args)
    error = result.stderr.decode()
    assert (result.returncode, error[: len(says)]) == (code, says), error
    assert error.count("\n") == (1 if says else 0)  # one line, no traceback
    if says:  # the file or directory it could not write, by its path in the store
        assert error.startswith(f"{says}{root}/"), error
