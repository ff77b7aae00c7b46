"""gc reads ``GRAVES`` as it is, also when it changed in place during the run.

Found by a review of this session's change that reads a namespace's ``GRAVES``
once per gc run (a graveyard that reads on only from where it stopped): a
record pair zeroed in place (the same size: bit rot) while gc ran was never
seen, so gc took a removed key's log as buried by a record the file no longer
held, removed the log (its ``C`` frame the only other record of the key's
versions), and after ``check --repair`` the key came back below a version
that had been acknowledged. gc must keep that log, as it did before.

The oracle: versions never repeat, so the key's next version is above every
version acknowledged before (5,000,001).
"""

from __future__ import annotations

import os
import pathlib

import pytest

import castore.file.backend as backend_module
import castore.file.gc as gc_module
from castore import Store
from castore.file.frames import classify
from castore.transfer import import_lines

pytestmark = pytest.mark.integration

_IMPORT = [
    b'{"format":"castore-export","version":2}',
    b'{"scope":"dag","namespace":"d","key":"z","version":5000000,"op":"set","time_ns":1,'
    b'"created_ns":1,"hash":"015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862",'
    b'"audit":{},"value":{"a":1}}',
    b'{"end":"castore-export","versions":1}',
]


def test_graves_damaged_in_place_during_gc_keeps_the_removed_keys_log(tmp_path, monkeypatch):
    root = tmp_path / "s"
    store = Store(str(root), dag="d")
    for key in ("a", "b"):  # removed first: gc reads GRAVES for their logs before z's
        store.set(key, {"k": key})
        store.delete(key)
    store.compact(keep_within_seconds=0)
    import_lines(store, lambda: _IMPORT)
    store.delete("z")  # version 5,000,001, acknowledged
    store.set("live", {"v": 1})
    assert store.compact(keep_within_seconds=0).keys_removed == 1
    graves = next(root.glob("refs/*/*/GRAVES"))
    z_records = [f for f in classify(graves.read_bytes()).frames if b'"z"' in f.payload]
    z_log = next(p for p in root.glob("refs/*/*/*.log") if b'"key":"z"' in p.read_bytes())

    real = gc_module._buried

    def rotting(backend: object, path: str, *rest: object) -> object:
        if path == str(z_log):  # just before gc decides z's log: its records zeroed
            with open(graves, "r+b") as fh:
                fh.seek(z_records[0].start)
                fh.write(bytes(z_records[-1].end - z_records[0].start))
        return real(backend, path, *rest)  # type: ignore[arg-type]

    def z_last(self: object) -> object:
        return iter(sorted(real_iter(self), key=lambda p: pathlib.Path(p) == z_log))  # type: ignore[arg-type]

    real_iter = backend_module.FileBackend.iter_logs
    monkeypatch.setattr(gc_module, "_buried", rotting)
    monkeypatch.setattr(backend_module.FileBackend, "iter_logs", z_last)
    Store(str(root), dag="d").gc(grace_seconds=0)
    monkeypatch.undo()
    assert os.path.exists(z_log), "gc removed a log only GRAVES' lost record buried"
    assert Store(str(root), dag="d").check(repair=True).ok
    assert Store(str(root), dag="d").set("z", {"again": 1}).version > 5_000_001
