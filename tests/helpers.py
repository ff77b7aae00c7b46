from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, NamedTuple, cast

from castore.file.frames import Frame, scan_frames
from castore.file.records import KIND_BLOB, KIND_ENTRY, decode_blob, decode_entry
from castore.records import Entry

if TYPE_CHECKING:
    from castore import Store
    from castore.file.backend import FileBackend

JOIN_TIMEOUT_SECONDS = 120.0


def one_line_error(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    """Assert a CLI failure: exit ``code``, empty stdout, one ``castore: ...`` stderr line."""
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == code, (proc.args, proc.returncode, err, proc.stdout)
    assert proc.stdout == b""
    assert "Traceback" not in err
    assert err.startswith("castore: ")
    assert err.endswith("\n")
    assert err.count("\n") == 1
    return err[len("castore: ") : -1]


def file_id(name: str) -> str:
    # docs/FORMAT.md §1: file names are the hex sha256 of the name's UTF-8.
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def ns_dir(root: str | os.PathLike[str], scope: str, namespace: str) -> str:
    return os.path.join(os.fspath(root), "refs", scope, file_id(namespace))


def log_path(root: str | os.PathLike[str], scope: str, namespace: str, key: str) -> str:
    return os.path.join(ns_dir(root, scope, namespace), file_id(key) + ".log")


def file_backend(store: Store) -> FileBackend:
    """The file backend behind ``store``, for tests of the file format and its internals."""
    return cast("FileBackend", store.backend)


def ref_log_path(store: Store, key: str, scope: str = "dag", namespace: str | None = None) -> str:
    """The ref log file of ``key`` in ``store`` (a file store), resolved as ``store.ref`` does."""
    return file_backend(store).log_path(store.ref(key, scope, namespace))


def keys_path(root: str | os.PathLike[str], scope: str, namespace: str) -> str:
    return os.path.join(ns_dir(root, scope, namespace), "KEYS")


def tree(root: str | os.PathLike[str]) -> list[str]:
    out: list[str] = []
    for base, _dirs, files in os.walk(root):
        out.extend(os.path.relpath(os.path.join(base, name), root) for name in files)
    return sorted(out)


def frames_of(path: str | os.PathLike[str]) -> tuple[list[Frame], int]:
    with open(path, "rb") as fh:
        buf = fh.read()
    return list(scan_frames(buf)), len(buf)


def assert_clean_log(path: str | os.PathLike[str]) -> list[Frame]:
    """The log is a gapless chain of valid frames from byte 0 to its end."""
    frames, size = frames_of(path)
    pos = 0
    for frame in frames:
        assert frame.start == pos, f"{path}: gap or garbage at {pos}..{frame.start}"
        pos = frame.end
    assert pos == size, f"{path}: {size - pos} bytes of garbage after the last frame at {pos}"
    return frames


class Version(NamedTuple):
    entry: Entry
    value: bytes | None  # normalized JSON of a set, None for a tombstone


def read_versions(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> list[Version]:
    """Every entry of a ref log in order, with its blob read through ``Entry.blob``."""
    frames, _size = frames_of(path)
    by_start = {frame.start: frame for frame in frames}
    out = []
    for frame in frames:
        if frame.kind != KIND_ENTRY:
            continue
        entry = decode_entry(frame.payload)
        value = None
        if entry.live:
            loc = entry.blob
            assert loc is not None, f"{path}: version {entry.version} has no blob location"
            if loc.log:
                with open(os.path.join(os.fspath(root), "refs", loc.log), "rb") as fh:
                    other = {f.start: f for f in scan_frames(fh.read())}
                blob = other.get(loc.offset)
            else:
                blob = by_start.get(loc.offset)
            assert blob is not None, f"{path}: version {entry.version}: no frame at {loc}"
            assert blob.kind == KIND_BLOB
            assert blob.end - blob.start == loc.length
            value = decode_blob(blob.payload, entry.hash)
        out.append(Version(entry, value))
    return out


def corrupt(path: str | os.PathLike[str], offset: int, xor: int = 0x01) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ xor]))


@contextlib.contextmanager
def reap_processes(timeout: float = JOIN_TIMEOUT_SECONDS) -> Iterator[list[BaseProcess]]:
    """Yield a list to put started processes in; on exit join each, killing stragglers."""
    procs: list[BaseProcess] = []
    failed = True
    try:
        yield procs
        failed = False
    finally:
        for proc in procs:
            if proc.pid is None:
                continue
            proc.join(1.0 if failed else timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
