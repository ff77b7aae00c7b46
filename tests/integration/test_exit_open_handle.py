"""A handle left open when the interpreter exits: its finalizers print nothing.

At exit CPython sets the globals of modules being torn down to None before the
objects they hold are freed, so a ``__del__`` that reaches a module global
(``os``, ``contextlib``, a lock) printed ``Exception ignored in ... __del__``
tracebacks on the user's stderr (seen by the Dagu review helper's script). The
kernel closes a process's descriptors at its exit: the finalizers return then.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CASTORE_PATH

pytestmark = pytest.mark.integration

# The store stays in a global until the interpreter's teardown frees it; an atexit
# hook (run before that teardown) empties the modules whose globals the finalizers use,
# as the teardown itself may have done by then.
SCRIPT = """
import atexit, sys
import castore
import castore.file.kept, castore.file.keptfile, castore.file.readers
import castore.file.statefile, castore.file.tree

store = castore.Store(sys.argv[1], dag="d")
for i in range(3):
    store.set(f"k{i}", {"n": i})
store.list()
store.get("k1", version=1)
store.history("k2")


def gone():
    for module in (castore.file.kept, castore.file.keptfile, castore.file.readers,
                   castore.file.statefile, castore.file.tree):
        for name in ("os", "contextlib", "fcntl", "threading", "_BUDGET", "forks"):
            if hasattr(module, name):
                setattr(module, name, None)


atexit.register(gone)
print("done")
"""


def test_a_store_left_open_at_exit_prints_nothing(tmp_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "s")],
        capture_output=True,
        env={"PYTHONPATH": CASTORE_PATH, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, b"done\n", b"")
