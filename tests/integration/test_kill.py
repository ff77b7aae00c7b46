"""Kill tests: children writing through castore die by SIGKILL; nothing acknowledged is lost.

Each cycle starts a child (``tests/crash_worker.py``) that writes through the
library and appends an acknowledgement line after every call returned. The
child is killed at a random moment, or dies by itself at a named failpoint
of the write protocol, compaction or gc (``CASTORE_FAILPOINTS``). Then
:func:`tests.crash_worker.verify` opens the store and checks, before any
repair: every acknowledged (key, version) reads back with its exact value
(or, if a later compaction may have dropped it, raises NotFoundError saying
"compacted"); the newest version of each key is at least the last
acknowledged one; history versions strictly increase; unacknowledged
versions hold only values that were attempted; ``get`` agrees with
``history``. Then ``check`` must be ok, or ok after one ``check(repair=True)``
that loses no acknowledged write.

At least 200 kills run here (about 130 at random moments, every fourth cycle
durable; 11 at each of the 7 named points, every third durable).
``tools/crash_torture.py`` runs thousands.
"""

from __future__ import annotations

import re
from typing import Final

import pytest

from castore import NotFoundError, Store
from tests.crash_worker import (
    DAG,
    NAMED_POINTS,
    Children,
    Lane,
    read_records,
    verify,
)

pytestmark = pytest.mark.integration

RANDOM_CYCLES: Final = 130
NAMED_CYCLES: Final = 11  # per named point
MAX_DELAY_SECONDS: Final = 0.05  # a random kill comes this long after the child is ready


@pytest.fixture
def children(tmp_path):
    with Children(str(tmp_path)) as kids:
        yield kids


def test_random_moment_kills_lose_no_acknowledged_write(tmp_path, children, record_property):
    lane = Lane(str(tmp_path), children, seed=20240611)
    for cycle in range(RANDOM_CYCLES):
        lane.random_cycle(durable=cycle % 4 == 0, max_delay=MAX_DELAY_SECONDS, allow_remove=False)
    fig = lane.figures
    for name in ("cycles", "kills", "repairs", "acked", "violations"):
        record_property(name, getattr(fig, name))
    assert fig.kills >= RANDOM_CYCLES * 0.9, fig.summary()
    assert fig.acked > RANDOM_CYCLES * 10, fig.summary()
    assert fig.violations == 0, fig.summary()


@pytest.mark.parametrize("point", NAMED_POINTS)
def test_kill_at_named_point_loses_no_acknowledged_write(
    tmp_path, children, record_property, point
):
    lane = Lane(str(tmp_path), children, seed=NAMED_POINTS.index(point))
    for cycle in range(NAMED_CYCLES):
        lane.named_cycle(point, durable=cycle % 3 == 0)
    fig = lane.figures
    for name in ("cycles", "kills", "repairs", "acked", "violations"):
        record_property(name, getattr(fig, name))
    assert fig.points[point] == NAMED_CYCLES, fig.summary()  # every child died at the point
    assert fig.missed == 0, fig.summary()
    assert fig.violations == 0, fig.summary()


def test_workload_that_is_not_killed_leaves_check_clean(tmp_path, children):
    """The control: with no kill at all, ``check`` is ok without a repair.

    Otherwise "check is clean after a kill" would tell nothing.
    """
    lane = Lane(str(tmp_path), children, seed=7)
    writer = children.spawn(
        ["write", "--root", lane.root, "--ack", lane.ack, "--seed", "7", "--ops", "60"]
    )
    assert children.wait(writer) == 0, children.error_text(writer)
    compactor = children.spawn(
        ["compact", "--root", lane.root, "--ack", lane.ack, "--keep-last", "2"]
    )
    assert children.wait(compactor) == 0, children.error_text(compactor)
    verdict = verify(lane.root, read_records(lane.ack), repair=False)
    assert verdict.violations == []
    report = Store(lane.root, dag=DAG).check()
    assert report.ok, report.findings


def test_versions_of_a_key_compaction_removed_read_as_compacted(tmp_path):
    """A removed key's old versions are compacted versions: reading one must say so."""
    store = Store(str(tmp_path / "s"), dag=DAG, durable=False)
    store.set("gone", {"n": 1})
    store.set("gone", {"n": 2})
    store.delete("gone")
    report = store.compact(keep_last=1, keep_within_seconds=0)
    assert report.keys_removed == 1
    for version in (1, 2, 3):
        with pytest.raises(NotFoundError, match=re.compile("compacted")):
            store.get("gone", version=version)
