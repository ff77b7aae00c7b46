"""``castore import`` of a file or stream that is hostile in how it is read (a review, 2026-12-06).

Found by a review of hostile input files: the command opened the path again for its
writing pass, so a file renamed over it after the validating pass was imported
unvalidated, up to its first bad line (exit 2 with keys written); a stream was copied
whole to a named temporary file before its first line was looked at (``yes | castore
import -`` never ended, and a kill left the copy behind); a ``MemoryError`` was a
traceback; a lost range imported without a reason read ``… lost: `` with nothing after.
The oracle: the store's export equals an untouched twin's.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

import castore
from castore import CorruptionError, Store
from castore.cli import main
from castore.codec import hexdigest
from castore.transfer import ImportReport

pytestmark = pytest.mark.integration

HEADER = b'{"format":"castore-export","version":2}\n'


def _line(key: str, version: int = 1, **fields: object) -> bytes:
    record: dict[str, object] = {"scope": "dag", "namespace": "d", "key": key}
    record |= {"version": version, "op": "set", "time_ns": 5, "hash": hexdigest(b"1")}
    record |= {"value": 1, **fields}
    return json.dumps({k: v for k, v in record.items() if v is not None}).encode() + b"\n"


def _export_file(keys: list[str]) -> bytes:
    end = json.dumps({"end": "castore-export", "versions": len(keys)}).encode() + b"\n"
    return HEADER + b"".join(_line(k) for k in keys) + end


def _export(root: Path) -> list[tuple[object, ...]]:
    """Each version's key, version, op, hash and value (the twins wrote at other times)."""
    lines = [json.loads(line) for line in castore.export_lines(Store(root, dag="d"))][1:-1]
    return [(x["key"], x["version"], x["op"], x.get("hash"), x.get("value")) for x in lines]


Meanwhile = Callable[[Path], None]


def _run_between_passes(
    monkeypatch: pytest.MonkeyPatch, root: Path, path: Path, meanwhile: Meanwhile
) -> int:
    """``castore import PATH`` with ``meanwhile(path)`` run after its validating pass."""
    from castore import transfer

    real = transfer._validated

    def validated(store: Store, read: Callable[[], Iterable[bytes]], mode: str) -> object:
        found = real(store, read, mode)  # type: ignore[arg-type]
        meanwhile(path)
        return found

    with monkeypatch.context() as patched:
        patched.setattr(transfer, "_validated", validated)
        return main(["--dir", str(root), "import", str(path)])


def _seeded(tmp_path: Path) -> tuple[Path, Path, Path]:
    root, twin = tmp_path / "store", tmp_path / "twin"
    for r in (root, twin):
        Store(r, dag="d").set("existing", 1)
    good = tmp_path / "dump.jsonl"
    good.write_bytes(_export_file(["a", "b"]))
    return root, twin, good


def test_a_file_renamed_over_the_path_between_the_passes_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the writing pass opened the path again and imported the new file's keys up to
    its first bad line, then exited 2 ("a bad file imports nothing")."""
    root, twin, good = _seeded(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(HEADER + _line("planted1") + _line("planted2") + b"not json\n")

    code = _run_between_passes(monkeypatch, root, good, lambda p: os.replace(bad, p))
    assert code == 0  # the file it validated is the file it imported
    castore.import_lines(
        Store(twin, dag="d"), lambda: iter(_export_file(["a", "b"]).splitlines(True))
    )
    assert _export(root) == _export(twin)


def test_a_file_written_to_between_the_passes_stops_the_import_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, twin, good = _seeded(tmp_path)

    def rewrite(path: Path) -> None:
        with open(path, "r+b") as fh:  # the same file, other bytes
            fh.write(HEADER + _line("planted") + b"not json\n")

    code = _run_between_passes(monkeypatch, root, good, rewrite)
    err = capsys.readouterr().err
    assert code == 2
    assert f"{good} changed while it was imported (line 1)" in err
    assert err.count("\n") == 1  # one line, no traceback
    assert _export(root) == _export(twin)  # nothing imported


def test_a_stream_that_is_no_export_is_refused_at_once_and_leaves_no_copy(
    tmp_path: Path,
) -> None:
    """Was: ``yes hello | castore import -`` copied the endless stream to a named
    temporary file before it looked at line 1 (it never ended; a kill left the copy)."""
    spool = tmp_path / "tmp"
    spool.mkdir()
    env = {**os.environ, "TMPDIR": str(spool)}
    args = [sys.executable, "-m", "castore", "--dir", str(tmp_path / "s"), "import", "-"]
    with subprocess.Popen(["yes", "hello"], stdout=subprocess.PIPE) as endless:
        done = subprocess.run(
            args, stdin=endless.stdout, capture_output=True, env=env, timeout=120, check=False
        )
        endless.kill()
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(b"castore: invalid value: line 1: not a castore export header")
    assert not list(spool.iterdir())


def test_a_stream_is_imported_from_its_copy(tmp_path: Path) -> None:
    root, twin, _ = _seeded(tmp_path)
    data = _export_file(["a", "b", "c"])
    args = [sys.executable, "-m", "castore", "--dir", str(root), "import", "-"]
    done = subprocess.run(args, input=data, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    castore.import_lines(Store(twin, dag="d"), lambda: iter(data.splitlines(True)))
    assert _export(root) == _export(twin)


def test_out_of_memory_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: a hostile file read whole under a memory limit ended in a ``MemoryError``
    traceback (``upgrade`` of a ``GRAVES`` holding a 1 GiB hole)."""

    def exhausted(*args: object, **kwargs: object) -> ImportReport:
        raise MemoryError

    monkeypatch.setattr("castore.cli.maintenance.import_lines", exhausted)
    path = tmp_path / "dump.jsonl"
    path.write_bytes(_export_file(["a"]))
    assert main(["--dir", str(tmp_path / "s"), "import", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("castore: out of memory")
    assert err.count("\n") == 1


def test_a_lost_range_imported_without_a_reason_says_so(tmp_path: Path) -> None:
    """Was: ``corrupt store: dag/d/k versions 1-5 lost: `` (nothing after the colon)."""
    damaged = _line("k", 5, op="damaged", damaged_from=1, hash=None, value=None)
    data = HEADER + damaged + b'{"end":"castore-export","versions":1}\n'
    store = Store(tmp_path / "s", dag="d")
    castore.import_lines(store, lambda: io.BytesIO(data).readlines())
    with pytest.raises(CorruptionError) as caught:
        store.get("k")
    assert "versions 1-5 lost: recorded as lost (no reason given); castore history" in str(
        caught.value
    )
