"""The machine around the benchmark: file-system probes, the scratch directory, cleanup.

Bulk data is deleted only at the end: ext4 without a journal makes file creation
slow for minutes after many deletions (see /work/shared/bench/README.md), and
deleting is slow too (about 2.5 ms per file here), so by default the scratch
directory is renamed to ``.trash-*`` and deleted by a detached low-priority process.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

__all__ = [
    "TRASH_PREFIX",
    "cleanup",
    "default_workdir_parent",
    "fs_type",
    "probe_create_us",
    "probe_fdatasync_us",
]

_pc = time.perf_counter_ns
TRASH_PREFIX = ".trash-"
PROBE_OPS = 20  # operations per probe; the median is reported
PROBE_BLOCK_BYTES = 4096  # 4 KiB appended per fdatasync probe


def fs_type(path: str) -> str:
    """File-system type and device of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1]
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) > len(best):
                    best, kind = mnt, f"{parts[2]} on {parts[0]} ({mnt})"
    except OSError:
        pass
    return kind


def probe_create_us(workdir: str, n: int = PROBE_OPS) -> float:
    """Median microseconds to create (and close) an empty file: the ext4 recently-deleted probe."""
    d = tempfile.mkdtemp(prefix="probe-", dir=workdir)
    lats = []
    for i in range(n):
        t0 = _pc()
        fd = os.open(os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        lats.append(_pc() - t0)
    shutil.rmtree(d)
    return statistics.median(lats) / 1e3


def probe_fdatasync_us(workdir: str, n: int = PROBE_OPS) -> float:
    """Median microseconds of a 4 KiB append + fdatasync."""
    path = os.path.join(workdir, "probe-sync.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = b"x" * PROBE_BLOCK_BYTES
    lats = []
    try:
        for _ in range(n):
            t0 = _pc()
            os.write(fd, block)
            os.fdatasync(fd)
            lats.append(_pc() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(lats) / 1e3


def default_workdir_parent() -> str:
    """``./bench-results`` unless that is on tmpfs; never a tmpfs /tmp."""
    here = os.path.join(os.getcwd(), "bench-results")
    if not fs_type(os.getcwd()).startswith("tmpfs"):
        return here
    return "/work" if os.path.isdir("/work") else here


def cleanup(workdir: str, how: str) -> str:
    """Delete (or keep) the scratch directory; return a line for the report.

    Args:
        workdir: The run's scratch directory.
        how: ``keep``, ``foreground`` (delete now) or ``background`` (rename to
            ``.trash-*`` and delete in a detached process at nice 19).

    Returns:
        What happened, for the report.
    """
    if how == "keep":
        return f"scratch kept in {workdir}"
    if how == "foreground":
        t0 = time.monotonic()
        shutil.rmtree(workdir, ignore_errors=True)
        return f"scratch deleted in {time.monotonic() - t0:.0f} s"
    trash = os.path.join(os.path.dirname(workdir), TRASH_PREFIX + os.path.basename(workdir))
    os.rename(workdir, trash)
    code = "import os, shutil, sys; os.nice(19); shutil.rmtree(sys.argv[1], ignore_errors=True)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, trash],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return f"scratch {trash} is being deleted in the background (pid {proc.pid})"
