"""Kill a castore command at every call that changes the file system, one call per run.

Run as a child::

    python -m tests.killsweep AT HALF COUNTFILE -- castore-arguments...
    python -m tests.killsweep torn SUFFIX COUNTFILE -- castore-arguments...

The child wraps the ``os`` functions that change files (``write``, ``pwrite``,
``ftruncate``, ``replace``, ``rename``, ``unlink``, ``mkdir``, ``link``, ``fchmod``,
``chmod`` and an ``open`` that may create a file), counts their calls and kills
itself with SIGKILL just before the ``AT``-th (with ``HALF`` 1, a ``write`` or
``pwrite`` there writes the first half of its bytes first: a torn append). Writes
to descriptors 0-2 are not counted. A child that ends without a kill writes its
count of calls to ``COUNTFILE``, so the parent knows when the sweep is complete.
With ``torn``, the first ``write`` of more than one byte to a file whose name
contains ``SUFFIX`` (``.log``: a ref log or its rewrite's temporary file) writes
half of its bytes and the child kills itself: what a SIGKILL arriving during a
long ``write(2)`` leaves (Linux stops a write to a file between pages when a
fatal signal is pending, keeping what was written).
A kill before call N leaves exactly what a process crash at any moment between
calls N-1 and N leaves (reads and fsyncs change nothing a process crash could see).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["MUTATING", "install", "main"]

MUTATING = (
    "write",
    "pwrite",
    "ftruncate",
    "replace",
    "rename",
    "unlink",
    "mkdir",
    "link",
    "fchmod",
    "chmod",
    "rmdir",
)
_CREATE = os.O_CREAT | os.O_TRUNC


def _names(fd: int, suffix: str) -> bool:
    try:
        return suffix in os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False


def install(at: int, half: bool, torn: str = "") -> list[int]:
    """Wrap the calls; the returned one-item list holds the count so far."""
    count = [0]

    def fatal(name: str, args: tuple[Any, ...]) -> tuple[bool, bool]:
        """(kill before this call, write half of its bytes first)."""
        if torn:
            hit = name == "write" and len(args[1]) > 1 and _names(args[0], torn)
            return hit, hit
        return count[0] == at, half and name in ("write", "pwrite") and len(args[1]) > 1

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            if name in ("write", "pwrite") and args and args[0] <= 2:
                return real(*args, **kw)
            if name == "open" and not (len(args) > 1 and args[1] & _CREATE):
                return real(*args, **kw)
            count[0] += 1
            kill, torn_write = fatal(name, args)
            if kill:
                if torn_write:
                    data = bytes(args[1])
                    real(*args[:1], data[: len(data) // 2], *args[2:], **kw)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kw)

        return wrapper

    for name in (*MUTATING, "open"):
        setattr(os, name, counted(name, getattr(os, name)))
    return count


def main(argv: list[str]) -> int:
    """Run the castore command line with the calls wrapped."""
    countfile, rest = argv[2], argv[argv.index("--") + 1 :]
    if argv[0] == "torn":
        count = install(0, False, torn=argv[1])
    else:
        count = install(int(argv[0]), argv[1] == "1")
    from castore.cli import main as cli_main

    code = cli_main(rest)
    sys.stdout.flush()
    with open(countfile, "w", encoding="ascii") as fh:
        fh.write(str(count[0]))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
