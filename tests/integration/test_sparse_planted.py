"""A planted sparse ``.vix`` or index shard costs a get or set bounded memory, same answers.

Found by a review: a 700 MB sparse ``.vix`` made ``get``, ``set`` and
``history`` of its key read all of it (689 MB of memory, 12-24 s), and a
sparse index shard did the same to every value in it, although these are
hot paths. Now a version index is read from its end down in 1 MiB chunks,
past the newest version only and up to the highest version it can record,
and an index shard in 1 MiB chunks, holes passed over. Each answer is compared with
an undamaged copy; memory is the child process's peak resident set (VmHWM; no timing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from castore import Store, codec
from tests.helpers import log_path

pytestmark = pytest.mark.integration

PLANTED = 600_000_000  # bytes of hole: no disk, only what a reader would read
BIG = {"pad": "x" * 300}  # >= 256 bytes: through the blob index
PROBE = """
import json, sys
from castore import Store
s = Store(sys.argv[1], dag="d")
out = [s.get("k").value, s.get("k", version=2).value, [e.version for e in s.history("k").entries],
       s.get("shared").value, s.set("k", {"n": 9}).version]
# VmHWM: this program's peak (ru_maxrss also counts the parent's image before the exec)
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
out.append(int(peak[0].split()[1]) // 1024)
print(json.dumps(out))
"""


def _build(root: Path) -> None:
    s = Store(root, dag="d")
    for n in range(1, 4):
        s.set("k", {"n": n})
    s.set("big", BIG)
    s.set("shared", BIG)  # its entry points at big's copy
    s.set("big", "small")
    s.compact(prefix="big", keep_last=1)  # moves it: shared's hint is stale, the index leads
    s.history("k")  # k's version index


def _probe(root: Path) -> list[object]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(root)], env=env, capture_output=True, check=True
    )
    return list(json.loads(out.stdout))


def test_planted_sparse_index_files_cost_bounded_memory(tmp_path: Path) -> None:
    twin, damaged = tmp_path / "twin", tmp_path / "damaged"
    _build(twin)
    shutil.copytree(twin, damaged)
    vix = Path(log_path(damaged, "dag", "d", "k")).with_suffix(".vix")
    with open(vix, "r+b") as fh:
        fh.truncate(PLANTED)
    shard = damaged / "index" / f"{codec.hexdigest(codec.normalize(BIG))[:2]}.idx"
    records = shard.read_bytes()
    with open(shard, "r+b") as fh:  # a hole, then the real records
        fh.truncate(0)
        fh.seek(PLANTED)
        fh.write(records)
    got, want = _probe(damaged), _probe(twin)
    assert got[:-1] == want[:-1]
    peak = got[-1]
    assert isinstance(peak, int)
    assert peak < 200, f"peak RSS {peak} MiB"  # was 689 MiB for 700 MB planted
