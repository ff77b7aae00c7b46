"""What an fdatasync costs when a write grows its file, and when it does not.

Run from the checkout root::

    python3 tools/fsync_probe.py                     # 3 rounds, 1,000 writes per cell
    python3 tools/fsync_probe.py --sizes 420,10240 --rounds 5 --dir /path/on/the/store/disk

For each write size, three files take the same writes, one ``pwrite`` and one
``fdatasync`` at a time, in rounds that rotate their order:

* ``append``: the file grows with every write (what a castore ref log does);
* ``overwrite``: the file was filled with zeros and fsynced first, so each write
  lands inside it and its size never changes (what SQLite's WAL does once the
  WAL file has reached its size, and what a preallocated log would do);
* ``fallocate``: the file was sized with ``posix_fallocate`` (unwritten extents)
  and fsynced first, so its size never changes either;
* ``keep-size``: blocks were reserved past the end with ``fallocate(2)`` and
  ``FALLOC_FL_KEEP_SIZE`` (Linux), so the file still grows with every write
  (its size stays a commit record, as castore's format needs) but allocates
  nothing: whether preallocating without changing the size would help.

It prints each cell's median latency and the ratio of each mode to ``append``:
the share of a durable append's cost that is the file's new size (on ext4 the
inode is written along with the data). docs/PERFORMANCE.md, "Where the open
targets stand", uses it. This is a measurement of the machine, not a test.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

MODES = ("append", "overwrite", "fallocate", "keep-size")
_FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h


def _keep_size(fd: int, total: int) -> None:
    """Reserve ``total`` bytes of blocks without changing the file's size (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, total) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"fallocate(FALLOC_FL_KEEP_SIZE): {os.strerror(errno)}")


def _prepare(path: str, mode: str, total: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if mode == "overwrite":
        block = b"\0" * (1 << 20)
        for start in range(0, total, len(block)):
            os.pwrite(fd, block[: min(len(block), total - start)], start)
        os.fsync(fd)
    elif mode == "fallocate":
        os.posix_fallocate(fd, 0, total)
        os.fsync(fd)
    elif mode == "keep-size":
        _keep_size(fd, total)
        os.fsync(fd)
    return fd


def cell(directory: str, mode: str, size: int, count: int) -> float:
    """Median microseconds of ``count`` writes of ``size`` bytes + fdatasync in ``mode``."""
    path = os.path.join(directory, f"probe-{mode}-{size}")
    fd = _prepare(path, mode, size * count + 4096)
    data = b"x" * size
    clock: Callable[[], int] = time.perf_counter_ns
    took = []
    try:
        for index in range(count):
            start = clock()
            os.pwrite(fd, data, index * size)
            os.fdatasync(fd)
            took.append(clock() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(took) / 1000


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every (mode, size) cell in rotated rounds; print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--sizes", default="420,4000,10240", help="bytes per write (420,4000,10240)"
    )
    parser.add_argument("--count", type=int, default=1000, help="writes per cell (1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, order rotated (3)")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="fsync-probe-", dir=args.dir) as directory:
        results: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            turn = round_ % len(MODES)
            order = MODES[turn:] + MODES[:turn]
            for size in sizes:
                for mode in order:
                    results.setdefault((mode, size), []).append(
                        cell(directory, mode, size, args.count)
                    )
    print(
        f"median µs per pwrite + fdatasync ({args.rounds} rounds of {args.count}; ratio to append)"
    )
    print(f"{'bytes':>7} " + " ".join(f"{mode:>18}" for mode in MODES))
    for size in sizes:
        base = statistics.median(results[("append", size)])
        cells = []
        for mode in MODES:
            value = statistics.median(results[(mode, size)])
            cells.append(f"{value:9.0f} ({value / base:4.2f}x)")
        print(f"{size:>7} " + " ".join(f"{c:>18}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
