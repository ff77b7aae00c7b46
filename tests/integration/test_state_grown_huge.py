"""A ``STATE`` grown by a hole past its recorded length is damage, never read whole.

Found by a review: ``truncate -s 600M STATE`` (its length field untouched) made
the next ``list`` read all of it, three times over while it waited for an
append in flight to complete (594 MB of memory, 3 s) before it replaced the
file; on a store it cannot write, every list did. An append in flight (or a
killed one's frames) is a few KiB past the recorded length; more is not an
append, so the file is untrusted at once. Answers are compared with an
undamaged copy; memory is the child process's peak resident set (VmHWM).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from castore import Store
from tests.helpers import ns_dir

pytestmark = pytest.mark.integration

PLANTED = 400_000_000  # bytes of hole: no disk, only what a reader would read
PROBE = """
import json, sys
from castore import Store
s = Store(sys.argv[1], dag="d")
out = [[e.key, e.version, e.hash] for e in s.list().entries]
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps([out, int(peak[0].split()[1]) // 1024]))
"""


def _probe(root: Path) -> tuple[list[object], int]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(root)], env=env, capture_output=True, check=True
    )
    entries, peak = json.loads(out.stdout)
    return entries, peak


def _store_and_twin(tmp_path: Path, *, listed: bool) -> tuple[Path, Path]:
    """A store of 20 keys (one deleted) and its copy; ``listed``: ``STATE`` records them."""
    root, twin = tmp_path / "store", tmp_path / "twin"
    store = Store(root, dag="d")
    for n in range(20):
        store.set(f"k{n}", n)
    store.delete("k3")
    if listed:
        store.list()
    store.close()
    shutil.copytree(root, twin)
    return root, twin


def test_a_state_grown_by_a_hole_is_replaced_without_being_read(tmp_path: Path) -> None:
    root, twin = _store_and_twin(tmp_path, listed=True)
    os.unlink(os.path.join(ns_dir(twin, "dag", "d"), "STATE"))
    state = os.path.join(ns_dir(root, "dag", "d"), "STATE")
    os.truncate(state, PLANTED)
    entries, peak = _probe(root)
    assert entries == _probe(twin)[0]
    assert peak < 150, f"list read the hole: {peak} MB"
    assert os.path.getsize(state) < 1 << 20  # replaced (and refilled) by that list


def test_a_keys_file_grown_by_a_hole_is_not_read_whole(tmp_path: Path) -> None:
    # Found by the same review: the tail of ``KEYS`` was read whole on every list (a
    # planted 600 MB hole: 1.7 GB and 2.5 s per list, for good). No writer lets the tail
    # grow past a bound (it re-sorts the file first): past it, the tail is damage, not
    # read, and the list answers from the logs' keys, as for any damage to ``KEYS``.
    root, twin = _store_and_twin(tmp_path, listed=False)
    os.truncate(os.path.join(ns_dir(root, "dag", "d"), "KEYS"), PLANTED)
    entries, peak = _probe(root)
    assert entries == _probe(twin)[0]
    assert peak < 150, f"list read the hole: {peak} MB"
