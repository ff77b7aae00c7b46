"""A write never stamps a time that readers refuse, whatever the clock says.

Readers take a stored time outside 1..2**63-1 for damage (``records.decode_entry``,
as a PostgreSQL row's). Found while merging that check (thirty-eighth session): a
clock at or before 1970 made a new key's first version time 0 (the writer took
``max(now, 0)``), a clock past 2262 stamped a time above 2**63-1, and the CLI's
quick ``set`` stamped the previous time + 1 even above 2**63-1: each write
acknowledged, then every read of the key "corrupt". The oracle: every version
written reads back, its time within range and never before the previous one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from castore import Store
from castore.transfer import export_lines
from tests.helpers import log_path

pytestmark = pytest.mark.integration

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_NS = (1 << 63) - 1


def _times(store: Store, key: str) -> list[int]:
    lines = [json.loads(line) for line in export_lines(store)][1:-1]
    return [rec["time_ns"] for rec in lines if rec["key"] == key]


@pytest.mark.parametrize("clock", [-5, 0, 1 << 64], ids=["before-1970", "epoch", "past-2262"])
def test_a_clock_out_of_range_never_writes_a_time_readers_refuse(
    store_location: str, monkeypatch: pytest.MonkeyPatch, clock: int
) -> None:
    with Store(store_location, dag="d") as store:
        store.set("old", {"n": 1})
        monkeypatch.setattr(time, "time_ns", lambda: clock)
        store.set("new", {"n": 1})
        store.set("old", {"n": 2})
        store.delete("old")
        store.set("new", {"n": 2})
        monkeypatch.undo()
    with Store(store_location, dag="d") as fresh:
        assert fresh.get("new").value == {"n": 2}
        assert [e.version for e in fresh.history("old").entries] == [3, 2, 1]
        for key in ("new", "old"):
            times = _times(fresh, key)
            assert all(1 <= t <= MAX_NS for t in times), (key, times)
            assert times == sorted(times), (key, times)


def test_the_quick_set_under_a_clock_past_2262_stamps_the_latest_time(
    tmp_path: os.PathLike[str],
) -> None:
    root, site = os.path.join(tmp_path, "store"), os.path.join(tmp_path, "site")
    with Store(root, dag="d") as store:
        store.set("k", {"n": 1})  # a live key: the CLI's quick set takes it
    os.mkdir(site)
    with open(os.path.join(site, "sitecustomize.py"), "w") as fh:
        fh.write("import time\ntime.time_ns = lambda: 1 << 64\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((site, CHECKOUT)))
    for value in ("2", "3"):
        proc = subprocess.run(
            [sys.executable, "-m", "castore", "--dir", root, "--dag", "d", "set", "k", value],
            env=env,
            capture_output=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    with Store(root, dag="d") as fresh:
        assert fresh.get("k").value == 3
        assert _times(fresh, "k")[1:] == [MAX_NS, MAX_NS]


@pytest.mark.parametrize("clock", [-5, 1 << 64], ids=["before-1970", "past-2262"])
def test_a_repair_under_a_clock_out_of_range_records_a_time_readers_take(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch, clock: int
) -> None:
    """Mutation testing: no test stamped a lost-versions marker (``lost_marker``) under such
    a clock; without its clamp, the repair wrote a record every later read refused."""
    root = os.path.join(tmp_path, "s")
    with Store(root, dag="d") as store:
        store.set("a", {"n": 1})
        store.set("a", {"n": 2})
        store.list()  # STATE records version 2
    path = log_path(root, "dag", "d", "a")
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])  # both versions cut off
    monkeypatch.setattr(time, "time_ns", lambda: clock)
    with Store(root, dag="d") as store:
        assert store.check(repair=True).findings
    monkeypatch.undo()
    with Store(root, dag="d") as fresh:
        assert fresh.check().ok
        assert [(e.version, e.operation) for e in fresh.history("a").entries] == [(2, "damaged")]
        assert all(1 <= t <= MAX_NS for t in _times(fresh, "a"))
